#!/usr/bin/env python
"""
Baseline vs non-local model, side by side in one run: training-iteration time and peak
memory, and inference time per image, on the CPU (and on CUDA with --device cuda).

Each (config, measurement) runs in its own process, the configs in turn (A B A B ...), with random
weights on a fixed random image with two ground-truth instances (boxes, masks, and keypoints for
keypoint models). As in harness.analysis.model_costs the RPN/box-predictor output layers are
zeroed and RPN NMS is off, so every model does the same RoI work; SGD (momentum 0.9) steps with lr
0, because a randomly initialised ResNet with FrozenBN diverges after one real step. Peak memory is
torch's allocator peak over one training iteration (CPU: profiler memory timeline; CUDA:
max_memory_allocated).

    python tools/benchmark_model.py --pairs mask_rcnn_R50_baseline.yaml:mask_rcnn_R50_NL.yaml \
        --size 800 1333 --output output/model_benchmarks.md
"""

import argparse
import datetime
import json
import os
import statistics

from nonlocal_det.errors import exit_on_user_error
from nonlocal_det.harness.cli.args import config_pair, image_side, positive_int, writable_file
from nonlocal_det.harness.utils.machine import describe_machine
from nonlocal_det.harness.utils.measure import run_child_process, time_and_peak
from nonlocal_det.harness.utils.tables import write_text

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_PAIRS = [
    "mask_rcnn_R50_baseline.yaml:mask_rcnn_R50_NL.yaml",
    "keypoint_rcnn_R101_baseline.yaml:keypoint_rcnn_R101_NL_head_backbone.yaml",
]


def _inputs(cfg, height, width, device):
    import torch
    from detectron2.structures import Boxes, Instances, Keypoints, PolygonMasks

    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), generator=gen).float()
    scale = torch.tensor([width, height, width, height])
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.7], [0.4, 0.2, 0.9, 0.8]]) * scale
    inst = Instances((height, width))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.zeros(2, dtype=torch.long)
    inst.gt_masks = PolygonMasks([[b[[0, 1, 2, 1, 2, 3, 0, 3]].tolist()] for b in boxes])
    if cfg.MODEL.KEYPOINT_ON:
        kps = torch.zeros(2, 17, 3)
        for i, b in enumerate(boxes):
            kps[i, :, 0] = torch.linspace(float(b[0]), float(b[2]), 17)
            kps[i, :, 1] = torch.linspace(float(b[1]), float(b[3]), 17)
            kps[i, :, 2] = 2
        inst.gt_keypoints = Keypoints(kps)
    return {"image": image, "instances": inst.to(device), "height": height, "width": width}


def run_child(spec):
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from nonlocal_det.harness.analysis.model_costs import analysis_cfg, fix_roi_workload

    config = os.path.join(REPO_ROOT, "configs", spec["config"])
    cfg = analysis_cfg(config, ["MODEL.DEVICE", spec["device"]])
    torch.manual_seed(0)
    model = build_model(cfg)
    fix_roi_workload(model)
    data = _inputs(cfg, spec["height"], spec["width"], spec["device"])
    device = torch.device(spec["device"])
    train = spec["measure"] == "train"
    model.train(train)
    if train:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9)

    def step():
        if train:
            with EventStorage():
                loss = sum(model([data]).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad():
                model([{key: data[key] for key in ("image", "height", "width")}])
        if device.type == "cuda":
            torch.cuda.synchronize()

    print(json.dumps(time_and_peak(step, device, spec["repeats"], with_memory=train)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    pairs = [config_pair(p) for p in DEFAULT_PAIRS]
    pairs_help = "baseline.yaml:nonlocal.yaml from configs/"
    parser.add_argument("--pairs", nargs="+", type=config_pair, default=pairs, help=pairs_help)
    parser.add_argument("--size", nargs=2, type=image_side, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=positive_int, default=2, help="timed runs per process")
    cycles_help = "processes per config and measurement, in turn"
    parser.add_argument("--cycles", type=positive_int, default=2, help=cycles_help)
    parser.add_argument("--output", type=writable_file, help="write the markdown table here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure_pair(args, base: str, nl: str) -> str:
    """The table row of one (baseline, non-local) pair: both configs' processes in turn."""
    height, width = args.size
    spec = dict(height=height, width=width, device=args.device, repeats=args.repeats)
    results = {name: {"train": [], "infer": [], "peak": None, "error": None} for name in (base, nl)}
    for measurement in ("train", "infer"):
        for _ in range(args.cycles):
            for name in (base, nl):
                r = run_child_process(__file__, dict(spec, config=name, measure=measurement), 1800)
                print(f"{name} {measurement}: {r}", flush=True)
                if "error" in r:
                    results[name]["error"] = r["error"]
                    continue
                results[name][measurement] += r["times"]
                if r["peak_bytes"] is not None:
                    results[name]["peak"] = r["peak_bytes"]
    b, n = results[base], results[nl]
    if b["error"] or n["error"]:
        return f"| `{nl}` vs `{base}` | failed: {b['error'] or n['error']} |||||||"
    bt, nt = statistics.median(b["train"]), statistics.median(n["train"])
    bi, ni = statistics.median(b["infer"]), statistics.median(n["infer"])
    return (
        f"| `{nl}` vs `{base}` | {bt:.2f} | {nt:.2f} | {100 * (nt / bt - 1):+.1f}% | "
        f"{b['peak'] / 2**30:.2f} | {n['peak'] / 2**30:.2f} | {bi:.2f} | {ni:.2f} | "
        f"{100 * (ni / bi - 1):+.1f}% |"
    )


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return run_child(json.loads(args.child))
    height, width = args.size
    rows = [measure_pair(args, base, nl) for base, nl in args.pairs]
    text = "\n".join(
        [
            "# Model benchmark: baseline vs non-local",
            "",
            f"Generated by `python tools/benchmark_model.py --device {args.device} --size {height} "
            f"{width}` on {datetime.date.today().isoformat()}; {describe_machine(args.device)}. "
            "One image per iteration, random weights, two ground-truth instances; each config and "
            f"measurement in its own processes, {args.cycles} per config in turn, "
            f"{args.repeats} timed runs each after a warm-up; medians. Peak memory: torch "
            "allocator peak over one training iteration above the model and inputs.",
            "",
            "| model vs baseline | baseline train s/iter | NL train s/iter | train overhead | "
            "baseline train peak GiB | NL train peak GiB | baseline infer s/img | NL infer s/img | "
            "infer overhead |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    print(text)
    if args.output:
        write_text(args.output, text)


if __name__ == "__main__":
    exit_on_user_error(main)
