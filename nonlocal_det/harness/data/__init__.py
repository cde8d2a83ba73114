"""
The datasets nonlocal_det generates (``generated.py``; drawn by ``synthetic.py``, ``long_range.py``,
``pairs.py``, written in COCO's format by ``coco_format.py``), and loading any registered dataset
with the data rules (``loading.py``, ``coco_checks.py``).
"""
