#!/usr/bin/env python
"""
Forward+backward time and extra peak memory of the non-local and CGNL blocks, side by side
in one run, against the full-matrix reference (nonlocal_det.layers.reference) and, when
mmcv is installed, mmcv's NonLocal2d.

Each implementation runs in processes of its own, in turn with the others of its row
(A B C A B C ...), so that drifts in machine load hit all alike and none inherits another's
allocations. Peak memory is what torch's allocator holds above the inputs and parameters
during one forward+backward: the profiler's memory timeline on CPU,
``torch.cuda.max_memory_allocated`` on CUDA. Implementations whose estimated need exceeds
``--memory-limit-gb`` are not run, and the table says why.

    python tools/benchmark_blocks.py                      # CPU, writes output/benchmarks.md
    python tools/benchmark_blocks.py --output docs/benchmarks.md   # the committed table
    python tools/benchmark_blocks.py --padding --output output/padding_blocks.md
    python tools/benchmark_blocks.py --device cuda --output docs/benchmarks_gpu.md
"""

import argparse
import datetime
import json
import os
import statistics

from nonlocal_det.utils.machine import describe_machine
from nonlocal_det.utils.measure import run_child_process, time_and_peak
from nonlocal_det.utils.tables import write_text

SIZES = {
    # name: (channels, height, width)
    "res4": (1024, 50, 84),  # res4 of an 800x1333 image (stride 16)
    "large": (64, 200, 200),
}
NL_MODES = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
CGNL_KERNELS = ("dot", "embedded_gaussian", "gaussian_rbf")
FLOAT_BYTES = 4


def _key_count(h, w):
    return ((h + 1) // 2) * ((w + 1) // 2)


def estimated_bytes(impl, mode, channels, h, w):
    """Rough memory the full-matrix implementations need (None: linear, always run)."""
    n, m, inner = h * w, _key_count(h, w), channels // 2
    if impl in ("naive", "naive_core"):
        return 4 * n * m * FLOAT_BYTES  # logits, weights, and their gradients
    if impl == "mmcv":
        if mode == "concatenation":
            # its (B, 2C', N, M) concat tensor plus the two repeated (B, C', N, M) halves
            return 2 * (2 * inner) * n * m * FLOAT_BYTES
        return 4 * n * m * FLOAT_BYTES
    if impl == "cgnl_naive":
        elements = n * inner // 8  # N C' per group, 8 groups
        return 8 * elements * elements * FLOAT_BYTES
    return None


# ---------------------------------------------------------------- child: one implementation


# --padding: a third of the large map's columns are padding (valid 200 x 134 of 200 x 200)
PADDED_VALID_WIDTH = 134


def _masked_sdpa(block, valid_width):
    """
    The alternative to computing on the valid crop, for softmax modes: attention over the
    padded map with the padded keys masked (a boolean mask to torch's fused attention), then
    W_z and the norm on the whole map. Timed only, to choose between the two.
    """
    import torch
    import torch.nn.functional as F

    def forward(x):
        q, k, v = (t.flatten(2).transpose(1, 2) for t in block.embed(x))
        key_cols = -(-x.shape[-1] // 2) if block.sub_sample else x.shape[-1]
        valid_cols = -(-valid_width // 2) if block.sub_sample else valid_width
        mask = (torch.arange(key_cols, device=x.device) < valid_cols).repeat(k.shape[1] // key_cols)
        if q.shape[-1] != v.shape[-1]:  # gaussian mode: q, k have C channels, v inner
            v = F.pad(v, (0, q.shape[-1] - v.shape[-1]))
        y = F.scaled_dot_product_attention(
            q[:, None].contiguous(),
            k[:, None].contiguous(),
            v[:, None].contiguous(),
            attn_mask=mask[None, None, None],
            scale=block._logit_scale(),
        )[:, 0, :, : block.inner_channels]
        y = y.transpose(1, 2).reshape(x.shape[0], block.inner_channels, *x.shape[-2:])
        return x + block.norm(block.out(y))

    return forward


def _build(impl, mode, channels, device, width=None):
    import torch

    from nonlocal_det.layers import CGNLBlock2d, NonLocalBlock2d
    from nonlocal_det.layers.reference import reference_aggregate, reference_forward

    if impl.startswith("cgnl"):
        block = CGNLBlock2d(channels, kernel=mode, groups=8, norm="GN").to(device)
        if impl == "cgnl_padded":
            return lambda x: block(x, [(x.shape[-2], PADDED_VALID_WIDTH)] * x.shape[0])
        if impl == "cgnl_crop":
            return lambda x: block(x[..., :PADDED_VALID_WIDTH])
        return (lambda x: reference_forward(block, x)) if impl == "cgnl_naive" else block
    if impl == "mmcv":
        from mmcv.cnn import NonLocal2d

        return NonLocal2d(
            channels, mode=mode, sub_sample=True, use_scale=True, norm_cfg=dict(type="BN")
        ).to(device)
    block = NonLocalBlock2d(channels, mode=mode, norm="BN").to(device)
    if impl == "ours":
        return block
    if impl == "ours_padded":  # each image computed on its valid region
        return lambda x: block(x, [(x.shape[-2], PADDED_VALID_WIDTH)] * x.shape[0])
    if impl == "ours_crop":  # the same block on the valid crop itself
        return lambda x: block(x[..., :PADDED_VALID_WIDTH])
    if impl == "masked_sdpa":
        return _masked_sdpa(block, PADDED_VALID_WIDTH)
    if impl == "naive":
        return lambda x: reference_forward(block, x)

    # The attention core alone: leaf q/k/v maps, so the 1x1 convs are not timed.
    cache = {}

    def core(x):
        if not cache:
            with torch.no_grad():
                cache["qkv"] = [t.detach().requires_grad_() for t in block.embed(x)]
        q, k, v = cache["qkv"]
        if impl == "ours_core":
            return block.aggregate(q, k, v)
        return reference_aggregate(block, q.flatten(2), k.flatten(2), v.flatten(2))

    return core


def run_child(spec):
    """Warm-up, one fwd+bwd measured for peak memory, then ``repeats`` timed ones."""
    import torch

    device = torch.device(spec["device"])
    torch.manual_seed(0)
    fn = _build(spec["impl"], spec["mode"], spec["channels"], device)
    x = torch.randn(
        1, spec["channels"], spec["height"], spec["width"], device=device, requires_grad=True
    )

    def step():
        fn(x).float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    print(json.dumps(time_and_peak(step, device, spec["repeats"])))


def _fmt_ms(r):
    return f"{r['ms']:.1f}" if "ms" in r else "—"


def _fmt_mb(r):
    return f"{r['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in r else "—"


def _ratio(r, ours):
    if "ms" not in r or "ms" not in ours:
        return "—"
    return f"{r['ms'] / ours['ms']:.2f}×"


def _notes(results):
    return "; ".join(f"{name}: {r['error']}" for name, r in results.items() if "error" in r)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--sizes", default="res4,large", help=f"comma-separated, from {list(SIZES)}"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed fwd+bwd runs per process")
    parser.add_argument(
        "--cycles", type=int, default=2, help="processes per implementation, run in turn"
    )
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        default=12.0,
        help="skip implementations estimated to need more",
    )
    parser.add_argument("--timeout", type=int, default=900, help="seconds per process")
    parser.add_argument(
        "--padding",
        action="store_true",
        help="only the padded-batch table: the large map with a third of its columns padded",
    )
    parser.add_argument("--output", default=os.path.join("output", "benchmarks.md"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        run_child(json.loads(args.child))
        return

    try:
        import mmcv.cnn  # noqa: F401

        have_mmcv = True
    except ImportError:
        have_mmcv = False
    limit = args.memory_limit_gb * 2**30

    def run(impls, mode, size):
        """{impl: {"ms", "peak_bytes"} or {"error"}}, the implementations run in turn."""
        channels, h, w = SIZES[size]
        results, times = {}, {}
        for impl in impls:
            need = estimated_bytes(impl, mode, channels, h, w)
            if need is not None and need > limit:
                results[impl] = {"error": f"not run, needs ~{need / 2**30:.0f} GiB"}
            else:
                results[impl], times[impl] = {}, []
        spec = dict(
            mode=mode,
            channels=channels,
            height=h,
            width=w,
            device=args.device,
            repeats=args.repeats,
        )
        for _ in range(args.cycles):
            for impl in times:
                if "error" in results[impl]:
                    continue
                r = run_child_process(__file__, dict(spec, impl=impl), args.timeout)
                if "error" in r:
                    results[impl] = r
                    continue
                times[impl] += r["times"]
                results[impl]["peak_bytes"] = min(
                    r["peak_bytes"], results[impl].get("peak_bytes", r["peak_bytes"])
                )
        for impl, t in times.items():
            if t and "error" not in results[impl]:
                results[impl]["ms"] = 1000 * statistics.median(t)
        print(f"{size:6s} {mode:18s} {results}", flush=True)
        return results

    if args.padding:
        write_text(args.output, "\n".join(padding_table(run, args)))
        return
    lines = [
        "# Block benchmarks",
        "",
        f"Generated by `python tools/benchmark_blocks.py --device {args.device}` on "
        f"{datetime.date.today().isoformat()}.",
        "",
        f"Machine: {describe_machine(args.device)}.",
        "",
        "Batch 1, forward + backward (input and parameter gradients). Each implementation runs "
        f"in its own processes, {args.cycles} per row in turn (A B C A B C), each process a "
        f"warm-up then {args.repeats} timed runs; times are medians over all timed runs. "
        '"extra MiB" is the peak memory of one forward + backward above what inputs and '
        "parameters already hold, as torch's allocator sees it (CPU: the profiler's memory "
        "timeline; CUDA: `max_memory_allocated`). Ratios are the other implementation's time "
        'over ours (>1: ours is faster). "naive" is `nonlocal_det.layers.reference`, which '
        "builds the full pairwise matrix. Non-local blocks: reduction 2, 2×2 max-pool "
        "sub-sampling, BN after W_z; mmcv's `NonLocal2d` with the same settings"
        + ("" if have_mmcv else " (mmcv not installed: not measured)")
        + ". CGNL: 8 groups, order 3, GN. Memory estimates for runs skipped: "
        "4 N×M float32 matrices for naive and mmcv; mmcv's concatenation builds a (B, 2C', N, M) "
        "tensor from two repeated (B, C', N, M) halves; CGNL naive: (N C')² per group.",
        "",
    ]
    for size in args.sizes.split(","):
        channels, h, w = SIZES[size]
        lines += [
            f"## {size}: C={channels}, {h}×{w} (N={h * w} queries, M={_key_count(h, w)} keys)",
            "",
            "| block | ours ms | naive ms | mmcv ms | naive/ours | mmcv/ours | ours extra MiB | "
            "naive extra MiB | mmcv extra MiB | notes |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for mode in NL_MODES:
            r = run(["ours", "naive"] + (["mmcv"] if have_mmcv else []), mode, size)
            ours, naive = r["ours"], r["naive"]
            mmcv = r.setdefault("mmcv", {"error": "not installed"})
            lines.append(
                f"| NL {mode} | {_fmt_ms(ours)} | {_fmt_ms(naive)} | {_fmt_ms(mmcv)} | "
                f"{_ratio(naive, ours)} | "
                f"{_ratio(mmcv, ours)} | {_fmt_mb(ours)} | {_fmt_mb(naive)} | {_fmt_mb(mmcv)} | "
                f"{_notes(r)} |"
            )
        for kernel in CGNL_KERNELS:
            r = run(["cgnl", "cgnl_naive"], kernel, size)
            ours, naive = r["cgnl"], r["cgnl_naive"]
            lines.append(
                f"| CGNL {kernel} | {_fmt_ms(ours)} | {_fmt_ms(naive)} | — | {_ratio(naive, ours)} "
                "| — | "
                f"{_fmt_mb(ours)} | {_fmt_mb(naive)} | — | {_notes({'naive': naive})} |"
            )
        lines += [
            "",
            f"Attention core only (q/k/v given, no 1×1 convs), {size}:",
            "",
            "| mode | ours ms | naive ms | naive/ours | ours extra MiB | naive extra MiB | notes |",
            "|---|---|---|---|---|---|---|",
        ]
        for mode in NL_MODES:
            r = run(["ours_core", "naive_core"], mode, size)
            ours, naive = r["ours_core"], r["naive_core"]
            lines.append(
                f"| {mode} | {_fmt_ms(ours)} | {_fmt_ms(naive)} | {_ratio(naive, ours)} | "
                f"{_fmt_mb(ours)} | {_fmt_mb(naive)} | {_notes(r)} |"
            )
        lines.append("")
    write_text(args.output, "\n".join(lines))


def padding_table(run, args):
    """Padded batch vs the valid crop alone (and masked fused attention), the large map."""
    channels, h, w = SIZES["large"]
    lines = [
        f"Generated by `python tools/benchmark_blocks.py --padding --device {args.device}` on "
        f"{datetime.date.today().isoformat()}; machine: {describe_machine(args.device)}.",
        "",
        f"C={channels}, a {h}×{w} map whose last {w - PADDED_VALID_WIDTH} columns are padding "
        f"(valid {h}×{PADDED_VALID_WIDTH}, a third of the keys padded), batch 1, forward + "
        "backward. *padded*: the block given the valid size (MODEL.NONLOCAL.VALID_REGION); "
        "*crop*: the same block on the valid crop alone (no padding: the cost to match); "
        "*masked SDPA*: the alternative for softmax modes, attention over the whole padded map "
        "with the padded keys masked in torch's fused attention. Medians as in benchmarks.md.",
        "",
        "| block | padded ms | crop ms | padded/crop | masked SDPA ms | padded extra MiB | crop "
        "extra MiB | masked SDPA extra MiB | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in NL_MODES:
        softmax = mode in ("gaussian", "embedded_gaussian")
        r = run(["ours_padded", "ours_crop"] + (["masked_sdpa"] if softmax else []), mode, "large")
        padded, crop = r["ours_padded"], r["ours_crop"]
        sdpa = r.get("masked_sdpa", {"error": "softmax modes only"})
        lines.append(
            f"| NL {mode} | {_fmt_ms(padded)} | {_fmt_ms(crop)} | {_ratio(padded, crop)} | "
            f"{_fmt_ms(sdpa)} | {_fmt_mb(padded)} | {_fmt_mb(crop)} | {_fmt_mb(sdpa)} | "
            f"{_notes(r)} |"
        )
    for kernel in CGNL_KERNELS:
        r = run(["cgnl_padded", "cgnl_crop"], kernel, "large")
        padded, crop = r["cgnl_padded"], r["cgnl_crop"]
        lines.append(
            f"| CGNL {kernel} | {_fmt_ms(padded)} | {_fmt_ms(crop)} | {_ratio(padded, crop)} | — | "
            f"{_fmt_mb(padded)} | {_fmt_mb(crop)} | — | {_notes(r)} |"
        )
    return lines


if __name__ == "__main__":
    main()
