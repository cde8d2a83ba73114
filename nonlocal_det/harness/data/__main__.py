"""
Generate a dataset of nonlocal_det's: ``python -m nonlocal_det.harness.data
[--dataset synthetic|long_range|pairs] [--out DIR] [--train N] [--val N] [--seed S]``.
train_net.py does this by itself when a config names a generated dataset that is missing.
"""

import argparse

from .generated import GENERATED_DATASETS

# --dataset names: the generator modules' ("synthetic", "long_range")
BY_GENERATOR = {d.generator.__name__.rsplit(".", 1)[-1]: d for d in GENERATED_DATASETS.values()}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(BY_GENERATOR), default="synthetic")
    parser.add_argument(
        "--out", help="output directory (default: $DETECTRON2_DATASETS/<dataset directory>)"
    )
    for split, role in (("train", "training"), ("val", "validation")):
        text = f"number of {role} images (default: the generator's)"
        parser.add_argument(f"--{split}", type=int, help=text)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dataset = BY_GENERATOR[args.dataset]
    generator = dataset.generator
    out = args.out or dataset.root()
    sizes = dict(generator.DEFAULT_SIZES)
    sizes.update({s: getattr(args, s) for s in ("train", "val") if getattr(args, s) is not None})
    for split, path in generator.generate(out, sizes, seed=args.seed).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
