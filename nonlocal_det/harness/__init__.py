"""
The training harness on top of the library (``nonlocal_det.layers``, ``.modeling``, ``.config``):
train_net.py's engine (``engine``), loading configs (``config``), the generated datasets and the
rules every dataset a run reads must meet (``data``), checkpoints, the checks before a run
(``preflight``), the advice on configs (``advice``), measurements (``analysis``) and what the tools
share (``cli``). Importing it registers the generated datasets with Detectron2.
"""

from nonlocal_det.errors import detectron2_available

if detectron2_available():
    from .data.generated import register_generated_datasets

    register_generated_datasets()
