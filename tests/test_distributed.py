"""Several processes on a CPU (gloo) through Detectron2's launch: synchronised norms in the blocks,
and train_net.py trained on 2 processes against 1 process with the same seed and global batch."""

import json
import os

import pytest
import torch

from helpers import CONFIG_DIR, REPO_ROOT, TINY, import_train_net, load_cfg, run_train_net

pytestmark = [pytest.mark.detectron2, pytest.mark.slow]

CHANNELS = 16
# Images (or RoIs) per process: equal, unequal (RoI heads), and none on one process.
SPLITS = {"equal": [2, 2], "unequal": [1, 4], "empty_on_one": [0, 3]}


def _block(norm):
    from nonlocal_det.layers import NonLocalBlock2d

    torch.manual_seed(0)
    block = NonLocalBlock2d(CHANNELS, mode="embedded_gaussian", norm=norm)
    with torch.no_grad():  # away from the identity start, so the norm shapes the output
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.uniform_(-0.5, 0.5)
    return block


def _inputs(total):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(total, CHANNELS, 6, 5, generator=gen), torch.randn(
        total, CHANNELS, 6, 5, generator=gen
    )


def _sync_bn_worker(out_dir, split_name, norm_name):
    """One process: forward/backward of its share of the batch; gradients summed over processes."""
    import detectron2.utils.comm as comm
    import torch.distributed as dist
    from detectron2.layers import get_norm

    sizes = SPLITS[split_name]
    rank = comm.get_rank()
    block = _block(lambda c: get_norm(norm_name, c)).train()
    x, weight = _inputs(sum(sizes))
    begin, end = sum(sizes[:rank]), sum(sizes[: rank + 1])
    y = block(x[begin:end])
    (y * weight[begin:end]).sum().backward()
    grads = {n: p.grad.clone() for n, p in block.named_parameters()}
    for g in grads.values():
        dist.all_reduce(g)
    torch.save(
        {
            "y": y.detach(),
            "grads": grads,
            "running_mean": block.norm.running_mean,
            "running_var": block.norm.running_var,
        },
        os.path.join(out_dir, f"rank{rank}.pth"),
    )


@pytest.mark.parametrize("split_name", sorted(SPLITS))
def test_naive_sync_bn_n_in_a_block_equals_bn_on_the_whole_batch(tmp_path, split_name):
    """naiveSyncBN_N (Detectron2's all-reduce SyncBN, weighted by batch size) over 2 gloo processes
    gives the outputs, gradients and running mean of one BatchNorm over the concatenated batch."""
    from detectron2.engine import launch

    launch(_sync_bn_worker, 2, dist_url="auto", args=(str(tmp_path), split_name, "naiveSyncBN_N"))
    ranks = [torch.load(tmp_path / f"rank{r}.pth", weights_only=True) for r in range(2)]

    block = _block("BN").train()
    x, weight = _inputs(sum(SPLITS[split_name]))
    y = block(x)
    (y * weight).sum().backward()
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), rtol=1e-4, atol=1e-5)
    for name, param in block.named_parameters():
        torch.testing.assert_close(
            ranks[0]["grads"][name], param.grad, rtol=1e-4, atol=1e-4, msg=name
        )
    torch.testing.assert_close(
        ranks[0]["running_mean"], block.norm.running_mean, rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(
        ranks[1]["running_mean"], block.norm.running_mean, rtol=1e-4, atol=1e-6
    )


def _sync_bn_check_worker(out_dir):
    import detectron2.utils.comm as comm

    from nonlocal_det.harness.distributed import check_sync_bn_device
    from nonlocal_det.harness.preflight import UnsupportedSetupError

    cfg = load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.NONLOCAL.NORM", "SyncBN")
    try:
        check_sync_bn_device(cfg, _block("SyncBN"))
        message = ""
    except UnsupportedSetupError as e:
        message = str(e)
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.txt"), "w") as f:
        f.write(message)


def test_torch_sync_bn_on_a_cpu_run_is_refused_with_the_fix(tmp_path):
    from detectron2.engine import launch

    launch(_sync_bn_check_worker, 2, dist_url="auto", args=(str(tmp_path),))
    message = (tmp_path / "rank0.txt").read_text()
    assert "MODEL.NONLOCAL.NORM='SyncBN'" in message and "CUDA only" in message
    assert "MODEL.NONLOCAL.NORM naiveSyncBN_N" in message


CONFIG = os.path.join(CONFIG_DIR, "mask_rcnn_R50_NL.yaml")


def test_train_net_two_processes_with_torch_sync_bn_on_cpu_says_what_to_do(dataset_root):
    rc, log = run_train_net(
        dataset_root,
        "--num-gpus",
        "2",
        "--dist-url",
        "auto",
        *TINY,
        "MODEL.NONLOCAL.NORM",
        "SyncBN",
        "SOLVER.MAX_ITER",
        "1",
        "OUTPUT_DIR",
        str(dataset_root / "syncbn"),
    )
    from nonlocal_det.errors import USER_ERROR_EXIT_CODE

    assert rc == USER_ERROR_EXIT_CODE  # the worker's own exit, passed on by the launching process
    assert "error: MODEL.NONLOCAL.NORM='SyncBN': torch's SyncBatchNorm runs on CUDA only" in log
    assert "Traceback" not in log


# Same images in every global batch whatever the process count: no flips, every anchor and every
# proposal sampled (so the samplers' random choices make no difference), one image size.
DETERMINISTIC = [
    "INPUT.RANDOM_FLIP",
    "none",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
    "1000000",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "1000000",
    "MODEL.NONLOCAL.NORM",
    "naiveSyncBN_N",
    "SOLVER.IMS_PER_BATCH",
    "4",
    "SEED",
    "7",
    "SOLVER.CHECKPOINT_PERIOD",
    "1000",
]
ITERATIONS = 20
LOSS_KEYS = (
    "total_loss",
    "loss_rpn_cls",
    "loss_rpn_loc",
    "loss_cls",
    "loss_box_reg",
    "loss_mask",
    "loss_keypoint",
)


def _train_worker(dataset_root, output_dir, opts):
    """train_net.py's setup and Trainer in this process; rank 0 saves every iteration's losses
    (metrics.json only holds medians over 20 iterations)."""
    import detectron2.utils.comm as comm

    from nonlocal_det.harness.data.generated import SYNTHETIC

    SYNTHETIC.register(dataset_root)
    train_net = import_train_net()
    cfg = train_net.setup(
        train_net.parse_args(["--config-file", CONFIG, *opts, "OUTPUT_DIR", output_dir])
    )
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    if comm.is_main_process():
        losses = {k: [v for v, _ in trainer.storage.history(k).values()] for k in LOSS_KEYS}
        with open(os.path.join(output_dir, "losses.json"), "w") as f:
            json.dump(losses, f)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    from nonlocal_det.harness.data import synthetic

    root = tmp_path_factory.mktemp("dist")
    synthetic.generate(str(root / "datasets" / "nonlocal_synthetic"), {"train": 16, "val": 4})
    yield root
    from nonlocal_det.harness.data.generated import SYNTHETIC

    SYNTHETIC.register()


def test_two_process_cpu_run_trains_and_evaluates(dataset_root):
    """`train_net.py --num-gpus 2` on a CPU machine: 2 gloo processes, synchronised NL norms."""
    out = dataset_root / "p2"
    rc, log = run_train_net(
        dataset_root,
        "--num-gpus",
        "2",
        "--dist-url",
        "auto",
        *TINY,
        *DETERMINISTIC,
        "SOLVER.MAX_ITER",
        "2",
        "OUTPUT_DIR",
        str(out),
    )
    assert rc == 0, log[-3000:]
    assert "Starting training from iteration 0" in log
    with open(out / "final_metrics.json") as f:
        metrics = json.load(f)["nonlocal_synthetic_val"]
    assert set(metrics) == {"bbox", "segm", "keypoints"}
    assert (out / "model_final.pth").exists()


def test_two_processes_match_one_process_with_the_same_global_batch(dataset_root):
    """
    Same seed, same 4 images in every iteration, 1 process vs 2 gloo processes (2 images each).

    At the first iteration (same weights) every loss but the keypoint loss agrees to 1e-3; the
    RPN losses (averaged per image) stay within 1e-2 for 20 iterations. The keypoint loss is
    either the same or exactly half: Detectron2 divides it by the visible keypoints of each
    process and averages over processes, so when only one process has visible keypoints the loss
    (and the keypoint head's gradient) is halved. That also moves the other losses apart slowly.
    """
    from detectron2.engine import launch

    opts = [*TINY, *DETERMINISTIC, "SOLVER.MAX_ITER", str(ITERATIONS), "DATASETS.TEST", "()"]
    losses = {}
    for processes in (1, 2):
        out = dataset_root / f"compare{processes}"
        root = str(dataset_root / "datasets" / "nonlocal_synthetic")
        launch(_train_worker, processes, dist_url="auto", args=(root, str(out), opts))
        with open(out / "losses.json") as f:
            losses[processes] = json.load(f)
    one, two = losses[1], losses[2]
    assert len(one["total_loss"]) == len(two["total_loss"]) == ITERATIONS
    relative = {
        k: [abs(b - a) / max(abs(a), 1e-12) for a, b in zip(one[k], two[k])] for k in LOSS_KEYS
    }
    with open(dataset_root / "loss_comparison.json", "w") as f:
        json.dump(
            {"one_process": one, "two_processes": two, "relative_difference": relative}, f, indent=1
        )

    for key in ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"):
        assert relative[key][0] < 1e-3, (key, relative[key])
    for key in ("loss_rpn_cls", "loss_rpn_loc"):
        assert max(relative[key]) < 1e-2, (key, relative[key])
    ratios = [b / a for a, b in zip(one["loss_keypoint"], two["loss_keypoint"]) if a > 0]
    assert ratios and all(
        r == pytest.approx(1, abs=0.05) or r == pytest.approx(0.5, abs=0.05) for r in ratios
    ), ratios
    first = two["loss_keypoint"][0] / one["loss_keypoint"][0] if one["loss_keypoint"][0] else 1.0
    assert first == pytest.approx(1, abs=1e-3) or first == pytest.approx(0.5, abs=1e-3)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_through_the_launcher_train_and_evaluate(dataset_root):
    """
    The multi-machine command as users run it, two "machines" on this host: `train_net.py
    --num-machines 2 --machine-rank 0|1 --dist-url tcp://127.0.0.1:PORT`, one gloo process each.
    Both must exit cleanly; rank 0 writes the checkpoint and the evaluation of both ranks' shares.
    """
    import subprocess
    import sys

    out = dataset_root / "machines"
    url = f"tcp://127.0.0.1:{_free_port()}"
    env = dict(os.environ, DETECTRON2_DATASETS=str(dataset_root / "datasets"))
    train_net = os.path.join(REPO_ROOT, "train_net.py")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                train_net,
                "--config-file",
                CONFIG,
                "--num-gpus",
                "1",
                "--num-machines",
                "2",
                "--machine-rank",
                str(rank),
                "--dist-url",
                url,
                *TINY,
                "MODEL.NONLOCAL.NORM",
                "naiveSyncBN_N",
                "SOLVER.MAX_ITER",
                "3",
                "OUTPUT_DIR",
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=dataset_root,
        )
        for rank in (0, 1)
    ]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"machine {rank}:\n{log[-3000:]}"
    assert "Starting training from iteration 0" in logs[0]
    assert "Rank of current process: 0. World size: 2" in logs[0]
    assert (
        "Rank of current process: 1. World size: 2" in (out / "log.txt.rank1").read_text()
    )  # non-main ranks log to files
    with open(out / "final_metrics.json") as f:
        metrics = json.load(f)["nonlocal_synthetic_val"]
    assert set(metrics) == {"bbox", "segm", "keypoints"}
    assert (out / "model_final.pth").exists()
