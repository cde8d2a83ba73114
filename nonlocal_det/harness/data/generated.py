"""
The datasets nonlocal_det generates itself (``synthetic``, ``long_range``, ``pairs``), registered
with Detectron2 and generated on first use under ``$DETECTRON2_DATASETS/<directory>``. A split is
generated when its file is missing or carries an intact marker of another version; a file without
an intact marker is never overwritten (datasets/README.md).
"""

import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Dict, Iterable, List

from nonlocal_det.errors import BadDataError

from . import long_range, pairs, synthetic
from .coco_format import marker_of


@dataclass(frozen=True)
class GeneratedDataset:
    """A dataset family written by ``generator.generate(out_dir)`` (``VERSION``, ``CATEGORIES``)."""

    generator: ModuleType
    metadata: Dict = field(default_factory=dict)

    @property
    def directory(self) -> str:
        return self.generator.DIRECTORY

    def names(self) -> Dict[str, str]:
        """{registered name: split}."""
        return {f"{self.directory}_{split}": split for split in self.generator.DEFAULT_SIZES}

    def root(self) -> str:
        """``$DETECTRON2_DATASETS/<directory>`` (Detectron2's default: ./datasets)."""
        return os.path.join(
            os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets")), self.directory
        )

    def register(self, root: str = None) -> None:
        """Register the splits read from ``root`` (default ``root()``); again if registered."""
        from detectron2.data import DatasetCatalog, MetadataCatalog
        from detectron2.data.datasets import register_coco_instances

        root = root or self.root()
        for name, split in self.names().items():
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            metadata = {"thing_classes": list(self.generator.CATEGORIES), **self.metadata}
            json_file = os.path.join(root, "annotations", f"{split}.json")
            register_coco_instances(name, metadata, json_file, os.path.join(root, split))

    def ensure(self, root: str = None) -> bool:
        """Generate the splits under ``root`` if one is missing or of another generator version
        (True if it did); BadDataError naming a file without an intact marker it would overwrite."""
        root = root or self.root()
        files = [os.path.join(root, "annotations", f"{s}.json") for s in self.names().values()]
        markers = {f: marker_of(f) for f in files if os.path.exists(f)}
        expected = (self.directory, self.generator.VERSION)
        if len(markers) == len(files) and all(m in (expected, None) for m in markers.values()):
            return False
        for path, marker in markers.items():
            if marker is None:
                raise BadDataError(
                    f"{path} exists but is not a file {self.directory}'s generator wrote intact "
                    "(no marker, or edited since): it is not overwritten. Move it away to "
                    "generate the dataset, or set DETECTRON2_DATASETS to another folder."
                )
        self.generator.generate(root)
        return True


_KEYPOINT_METADATA = dict(
    keypoint_names=synthetic.KEYPOINT_NAMES,
    keypoint_flip_map=tuple(
        (n, n.replace("left_", "right_")) for n in synthetic.KEYPOINT_NAMES if n.startswith("left_")
    ),
    keypoint_connection_rules=[
        (synthetic.KEYPOINT_NAMES[a - 1], synthetic.KEYPOINT_NAMES[b - 1], (102, 204, 255))
        for a, b in synthetic.SKELETON
    ],
)
SYNTHETIC = GeneratedDataset(synthetic, _KEYPOINT_METADATA)
LONG_RANGE = GeneratedDataset(long_range)
PAIRS = GeneratedDataset(pairs)
GENERATED_DATASETS = {d.directory: d for d in (SYNTHETIC, LONG_RANGE, PAIRS)}


def register_generated_datasets(root: str = None) -> None:
    """Register every generated dataset (``root``: a folder holding their directories)."""
    for dataset in GENERATED_DATASETS.values():
        dataset.register(os.path.join(root, dataset.directory) if root else None)


def ensure_generated_datasets(names: Iterable[str]) -> List[str]:
    """Generate every generated dataset among ``names`` that is missing or stale (``ensure``);
    return the directories generated."""
    return [
        d.root() for d in GENERATED_DATASETS.values() if set(names) & set(d.names()) and d.ensure()
    ]
