"""
The datasets nonlocal_det generates itself, in one list used by their Detectron2 registration
(``datasets.py``) and by ``python -m nonlocal_det.data``; needs only numpy and OpenCV.

- ``nonlocal_synthetic`` (``synthetic.py``): shapes and persons with keypoints, for the quickstart;
- ``nonlocal_longrange`` (``long_range.py``): shapes whose category is decided by a lamp at the
  far end of the image, for the non-local ablation;
- ``nonlocal_pairs`` (``pairs.py``): shapes whose category is decided by their own partner lamp,
  one of four at the far end, for the ablation of query-specific attention.
"""

import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Dict

from . import long_range, pairs, synthetic

__all__ = ["GeneratedDataset", "SYNTHETIC", "LONG_RANGE", "PAIRS", "GENERATED_DATASETS"]


@dataclass(frozen=True)
class GeneratedDataset:
    """
    A dataset family written by ``generator.generate(out_dir)`` (with ``VERSION``, ``CATEGORIES``).
    """

    directory: str
    generator: ModuleType
    metadata: Dict = field(default_factory=dict)

    def names(self) -> Dict[str, str]:
        """{registered name: split}."""
        return {f"{self.directory}_{split}": split for split in self.generator.DEFAULT_SIZES}

    def root(self) -> str:
        """``$DETECTRON2_DATASETS/<directory>`` (Detectron2's default: ./datasets)."""
        return os.path.join(
            os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets")), self.directory
        )


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
SYNTHETIC = GeneratedDataset("nonlocal_synthetic", synthetic, _KEYPOINT_METADATA)
LONG_RANGE = GeneratedDataset("nonlocal_longrange", long_range)
PAIRS = GeneratedDataset("nonlocal_pairs", pairs)
GENERATED_DATASETS = {d.directory: d for d in (SYNTHETIC, LONG_RANGE, PAIRS)}
