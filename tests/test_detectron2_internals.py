"""
The two places where nonlocal_det relies on Detectron2's internals, because DefaultTrainer offers
no public route (nonlocal_det/engine/defaults.py lists them and says why none exists), and the
public attribute that makes its checkpoints atomic. Each test fails if Detectron2 changes
under them, rather than letting the workaround silently stop working.
"""

import pytest
import torch

from helpers import CONFIG_DIR, TINY, synthetic_registered_under

pytestmark = pytest.mark.detectron2


def test_default_trainer_builds_ddp_through_the_module_level_create_ddp_model():
    """
    (1) cpu_ddp_support replaces detectron2.engine.defaults.create_ddp_model while the trainer is
    built.
    """
    import detectron2.engine.defaults as d2_defaults
    from detectron2.engine import DefaultTrainer

    from nonlocal_det.harness import distributed

    # DefaultTrainer.__init__ looks the function up as a global of its module ...
    assert "create_ddp_model" in DefaultTrainer.__init__.__code__.co_names
    assert DefaultTrainer.__init__.__globals__ is vars(d2_defaults)
    # ... which is the function nonlocal_det wraps, replaced only inside the context.
    original = d2_defaults.create_ddp_model
    with distributed.cpu_ddp_support():
        assert d2_defaults.create_ddp_model is distributed.create_ddp_model
    assert d2_defaults.create_ddp_model is original


@pytest.fixture
def synthetic_in(tmp_path):
    with synthetic_registered_under(tmp_path, train=2, val=1):
        yield tmp_path


def test_trainer_sets_amp_precision_and_checkpoints_atomically(synthetic_in):
    """(2) the AMPTrainer DefaultTrainer keeps as _trainer gets SOLVER.AMP.PRECISION; the
    checkpointer its PeriodicCheckpointer hook writes with writes atomically, through the
    path_manager fvcore's save and tag_last_checkpoint open their files with."""
    import os

    from detectron2.engine import AMPTrainer, hooks
    from fvcore.common.checkpoint import Checkpointer

    from nonlocal_det.harness.config import get_nonlocal_cfg
    from nonlocal_det.harness.engine import NonLocalDefaultTrainer

    opts = [
        *TINY,
        "MODEL.DEVICE",
        "cpu",
        "SOLVER.AMP.ENABLED",
        "True",
        "SOLVER.AMP.PRECISION",
        "bfloat16",
        "OUTPUT_DIR",
        str(synthetic_in / "out"),
    ]
    cfg = get_nonlocal_cfg(os.path.join(CONFIG_DIR, "mask_rcnn_R50_NL.yaml"), opts)
    with pytest.warns(
        UserWarning, match="CUDA is not available"
    ):  # AMPTrainer's GradScaler on a CPU
        trainer = NonLocalDefaultTrainer(cfg)
    assert isinstance(trainer._trainer, AMPTrainer) and trainer._trainer.precision is torch.bfloat16
    periodic = [h for h in trainer._hooks if isinstance(h, hooks.PeriodicCheckpointer)]
    assert len(periodic) == 1 and periodic[0].checkpointer is trainer.checkpointer
    assert type(trainer.checkpointer.path_manager).__name__ == "_AtomicWrites"
    for method in (Checkpointer.save, Checkpointer.tag_last_checkpoint):
        assert "path_manager" in method.__code__.co_names
    assert (
        trainer.checkpointer.checkpointables["trainer"] is not None
    )  # still saves the trainer's state
