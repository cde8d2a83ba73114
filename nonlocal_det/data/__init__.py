"""
The datasets nonlocal_det generates (``generated.py``: the quickstart's ``nonlocal_synthetic`` and
the long-range task's ``nonlocal_longrange``, written in COCO's format by ``coco_format.py``;
generating needs only numpy and OpenCV), their
Detectron2 registration (``datasets.py``), and loading any registered dataset with checks
(``loading.py``, ``coco_checks.py``).
"""
