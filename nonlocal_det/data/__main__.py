"""
Generate a dataset of nonlocal_det's: ``python -m nonlocal_det.data [--dataset synthetic|long_range]
[--out DIR] [--train N] [--val N] [--seed S]``. train_net.py does this by itself when a config
names a generated dataset that is missing.
"""

import argparse
import os

from . import long_range, synthetic

GENERATORS = {
    "synthetic": ("nonlocal_synthetic", synthetic),
    "long_range": ("nonlocal_longrange", long_range),
}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(GENERATORS), default="synthetic")
    parser.add_argument(
        "--out", help="output directory (default: $DETECTRON2_DATASETS/<dataset directory>)"
    )
    parser.add_argument(
        "--train", type=int, help="number of training images (default: the generator's)"
    )
    parser.add_argument(
        "--val", type=int, help="number of validation images (default: the generator's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    directory, generator = GENERATORS[args.dataset]
    out = args.out or os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), directory)
    sizes = dict(generator.DEFAULT_SIZES)
    sizes.update(
        {split: n for split, n in (("train", args.train), ("val", args.val)) if n is not None}
    )
    for split, path in generator.generate(out, sizes, seed=args.seed).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
