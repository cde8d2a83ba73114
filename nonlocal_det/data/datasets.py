"""Detectron2 registration of the generated dataset (see ``synthetic.py``)."""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from . import synthetic

SYNTHETIC_DATASETS = {"nonlocal_synthetic_train": "train", "nonlocal_synthetic_val": "val"}


def synthetic_root() -> str:
    """``$DETECTRON2_DATASETS/nonlocal_synthetic`` (Detectron2's default: ./datasets)."""
    return os.path.join(os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets")), "nonlocal_synthetic")


def _paths(split: str, root: str):
    return os.path.join(root, "annotations", f"{split}.json"), os.path.join(root, split)


def _load(name: str, split: str, root: str):
    json_file, image_root = _paths(split, root)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"Dataset {name!r}: {json_file} does not exist. Generate it with "
            f"`python -m nonlocal_det.data --out {root}` (train_net.py does this "
            "by itself), or point DETECTRON2_DATASETS at the directory holding nonlocal_synthetic/."
        )
    return load_coco_json(json_file, image_root, name)


def register_synthetic_datasets(root: str = None) -> None:
    """Register the train/val splits under ``SYNTHETIC_DATASETS`` names (idempotent)."""
    root = root or synthetic_root()
    for name, split in SYNTHETIC_DATASETS.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        DatasetCatalog.register(name, lambda name=name, split=split: _load(name, split, root))
        json_file, image_root = _paths(split, root)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        meta = MetadataCatalog.get(name)
        meta.set(
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
            thing_classes=list(synthetic.CATEGORIES),
            keypoint_names=synthetic.KEYPOINT_NAMES,
            keypoint_flip_map=tuple(
                (n, n.replace("left_", "right_")) for n in synthetic.KEYPOINT_NAMES if n.startswith("left_")
            ),
            keypoint_connection_rules=[
                (synthetic.KEYPOINT_NAMES[a - 1], synthetic.KEYPOINT_NAMES[b - 1], (102, 204, 255))
                for a, b in synthetic.SKELETON
            ],
        )


def ensure_synthetic_dataset(root: str = None) -> bool:
    """Generate the dataset under ``root`` if any split is missing; True if it generated."""
    root = root or synthetic_root()
    if all(os.path.isfile(_paths(split, root)[0]) for split in SYNTHETIC_DATASETS.values()):
        return False
    synthetic.generate(root)
    return True
