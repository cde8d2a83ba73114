"""Checkpoints: atomic writes, weights_only loading, resume after SIGKILL with the optimizer and
scheduler state of the last checkpoint."""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import REPO_ROOT, TINY, import_train_net, synthetic_registered_under, training_records

pytestmark = pytest.mark.detectron2


def _checkpointer(tmp_path):
    from nonlocal_det.harness.checkpoint import CheckedCheckpointer

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(1, 3, 8, 8)).square().sum().backward()
    optimizer.step()
    return CheckedCheckpointer(model, str(tmp_path), optimizer=optimizer), model, optimizer


def test_saved_checkpoint_loads_with_weights_only(tmp_path):
    checkpointer, model, optimizer = _checkpointer(tmp_path)
    checkpointer.save("model_0000009", iteration=9)
    data = torch.load(tmp_path / "model_0000009.pth", weights_only=True)
    assert data["iteration"] == 9
    torch.testing.assert_close(data["model"]["0.weight"], model[0].weight)
    momentum = data["optimizer"]["state"][0]["momentum_buffer"]
    torch.testing.assert_close(momentum, optimizer.state[model[0].weight]["momentum_buffer"])
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert glob.glob(str(tmp_path / "*.tmp-*")) == []


def test_a_save_that_dies_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    """A crash in the middle of torch.save: no partial model file, last_checkpoint unchanged."""
    checkpointer, _, _ = _checkpointer(tmp_path)
    checkpointer.save("model_0000001", iteration=1)

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip archive")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000003", iteration=3)
    assert not (tmp_path / "model_0000003.pth").exists()
    assert glob.glob(str(tmp_path / "*.tmp-*")) == []
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    monkeypatch.undo()
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 1


@pytest.fixture
def synthetic_in(tmp_path):
    """Register the synthetic dataset names on a small copy under tmp_path (restored afterwards)."""
    with synthetic_registered_under(tmp_path, train=6, val=2):
        yield tmp_path


@pytest.mark.slow
def test_resume_restores_optimizer_scheduler_and_iteration(synthetic_in):
    from nonlocal_det.harness.config import get_nonlocal_cfg

    train_net = import_train_net()
    opts = [
        *TINY,
        "DATASETS.TEST",
        "()",
        "SOLVER.MAX_ITER",
        "4",
        "SOLVER.STEPS",
        "(2,)",
        "SOLVER.WARMUP_ITERS",
        "3",
        "OUTPUT_DIR",
        str(synthetic_in / "out"),
        "MODEL.DEVICE",
        "cpu",
    ]
    cfg = get_nonlocal_cfg(os.path.join(REPO_ROOT, "configs", "mask_rcnn_R50_NL.yaml"), opts)
    first = train_net.Trainer(cfg)
    assert type(first.checkpointer.path_manager).__name__ == "_AtomicWrites"
    first.train()
    assert (synthetic_in / "out" / "last_checkpoint").read_text() == "model_final.pth"

    # Resuming needs iterations left to train: the schedule's steps stay as they were.
    longer = cfg.clone()
    longer.defrost()
    longer.SOLVER.MAX_ITER = 6
    second = train_net.Trainer(longer)
    second.resume_or_load(resume=True)
    assert second.start_iter == 4
    saved, resumed = first.optimizer.state_dict(), second.optimizer.state_dict()
    assert len(resumed["state"]) == len(saved["state"]) > 0
    for key, state in saved["state"].items():
        torch.testing.assert_close(
            resumed["state"][key]["momentum_buffer"], state["momentum_buffer"], rtol=0, atol=0
        )
    assert [g["lr"] for g in resumed["param_groups"]] == [g["lr"] for g in saved["param_groups"]]
    assert second.scheduler.state_dict() == first.scheduler.state_dict()
    assert second.scheduler.last_epoch == 4
    for name, value in first.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[name], value, rtol=0, atol=0, msg=name)


def _expected_lr(cfg, iteration):
    """The learning rate Detectron2's schedule gives ``iteration``, computed from scratch."""
    from detectron2.solver import build_lr_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    for _ in range(iteration):
        optimizer.step()
        scheduler.step()
    return optimizer.param_groups[0]["lr"]


@pytest.mark.slow
def test_sigkill_then_resume_continues_from_the_last_checkpoint(tmp_path):
    from nonlocal_det.harness.config import get_nonlocal_cfg
    from nonlocal_det.harness.data import synthetic

    synthetic.generate(str(tmp_path / "datasets" / "nonlocal_synthetic"), {"train": 6, "val": 2})
    out = tmp_path / "out"
    schedule = [
        "SOLVER.STEPS",
        "(6,)",
        "SOLVER.WARMUP_ITERS",
        "20",
        "DATASETS.TEST",
        "()",
        "OUTPUT_DIR",
        str(out),
    ]
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    cmd = [
        sys.executable,
        os.path.join(REPO_ROOT, "train_net.py"),
        "--config-file",
        os.path.join(REPO_ROOT, "configs", "mask_rcnn_R50_NL.yaml"),
    ]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [*cmd, *TINY, *schedule, "SOLVER.MAX_ITER", "500"],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # Kill once a few checkpoints exist, preferably while the next one is being written.
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            last = out / "last_checkpoint"
            if (
                last.exists()
                and last.read_text() >= "model_0000005.pth"
                and glob.glob(str(out / "*.tmp-*"))
            ):
                break
            time.sleep(0.005)
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    checkpoints = sorted(glob.glob(str(out / "model_*.pth")))
    assert len(checkpoints) >= 3
    for path in checkpoints:  # none truncated; all load with torch's safe loader
        assert "iteration" in torch.load(path, weights_only=True), path
    last_name = (out / "last_checkpoint").read_text()
    last_iter = torch.load(out / last_name, weights_only=True)["iteration"]
    assert last_name == f"model_{last_iter:07d}.pth"

    max_iter = last_iter + 3
    proc = subprocess.run(
        [*cmd, "--resume", *TINY, *schedule, "SOLVER.MAX_ITER", str(max_iter)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert f"Starting training from iteration {last_iter + 1}" in log
    record = training_records(out)[-1]
    assert record["iteration"] == max_iter - 1
    cfg = get_nonlocal_cfg(
        os.path.join(REPO_ROOT, "configs", "mask_rcnn_R50_NL.yaml"),
        [*TINY, *schedule, "SOLVER.MAX_ITER", str(max_iter)],
    )
    # Detectron2 rebuilds the schedule's shape from the config (here the new MAX_ITER); the
    # checkpoint supplies where on it training is.
    assert record["lr"] == pytest.approx(_expected_lr(cfg, max_iter - 1), rel=1e-9)
    assert record["lr"] != pytest.approx(
        _expected_lr(cfg, 2), rel=1e-3
    )  # the schedule did not restart
