"""Generate the synthetic dataset: ``python -m nonlocal_det.data [--out DIR] [--train N] [--val N] [--seed S]``."""
import argparse
import os

from .synthetic import DEFAULT_SIZES, generate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "nonlocal_synthetic"))
    parser.add_argument("--train", type=int, default=DEFAULT_SIZES["train"], help="number of training images")
    parser.add_argument("--val", type=int, default=DEFAULT_SIZES["val"], help="number of validation images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = generate(args.out, {"train": args.train, "val": args.val}, seed=args.seed)
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
