"""
The datasets nonlocal_det generates (``generated.py``: the quickstart's ``nonlocal_synthetic`` and
the long-range task's ``nonlocal_longrange``; generating needs only numpy and OpenCV), their
Detectron2 registration (``datasets.py``), and loading any registered dataset with checks
(``loading.py``, ``coco_checks.py``).
"""
