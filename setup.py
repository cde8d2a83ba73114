#!/usr/bin/env python
"""nonlocal_det: non-local and CGNL blocks for Detectron2.

Detectron2 itself is not on PyPI and is not declared here: install it from its official
guide (see README.md). ``nonlocal_det.layers`` works without it.
"""

from setuptools import find_packages, setup

setup(
    name="nonlocal_det",
    version="0.1.0",
    description="Non-local and compact generalized non-local blocks for Detectron2",
    packages=find_packages(exclude=("tests", "tools", "configs", "datasets")),
    python_requires=">=3.10",
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "fvcore",
        "pycocotools",
        "opencv-python-headless",
    ],
    extras_require={
        # ruff pinned: another version may format differently and fail `ruff format --check` in CI.
        "test": ["pytest", "ruff==0.17.6"],
        # Only for tools/benchmark_blocks.py's comparison with mmcv's NonLocal2d.
        "bench": ["mmcv-lite", "mmengine"],
    },
)
