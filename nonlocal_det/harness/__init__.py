"""
The training harness on top of the library: train_net.py's engine, configs, the generated datasets
and the data rules, checkpoints, the checks before a run, measurements and what the tools share.
Importing it registers the generated datasets with Detectron2.
"""

from nonlocal_det.errors import detectron2_available

if detectron2_available():
    from .data.generated import register_generated_datasets

    register_generated_datasets()
