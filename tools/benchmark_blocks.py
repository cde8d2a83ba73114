#!/usr/bin/env python
"""
Forward+backward time and extra peak memory of the blocks (NL, CGNL, DNL, GC), side by side in one
run, against the full-matrix references (tests/reference.py) and, when installed, the peers: mmcv's
NonLocal2d and ContextBlock, mmsegmentation's DisentangledNonLocal2d (tests/peers.py).

Each implementation runs in processes of its own, in turn with the others of its row
(A B C A B C ...), so that drifts in machine load hit all alike and none inherits another's
allocations. Peak memory is what torch's allocator holds above the inputs and parameters
during one forward+backward: the profiler's memory timeline on CPU,
``torch.cuda.max_memory_allocated`` on CUDA. Implementations whose estimated need exceeds
``--memory-limit-gb`` are not run, and the table says why.

    python tools/benchmark_blocks.py                      # CPU, writes output/benchmarks.md
    python tools/benchmark_blocks.py --output docs/benchmarks.md   # the committed table
    python tools/benchmark_blocks.py --blocks DNL GC      # only some kinds of block
    python tools/benchmark_blocks.py --padding --output output/padding_blocks.md
    python tools/benchmark_blocks.py --device cuda --output docs/benchmarks_gpu.md
"""

import argparse
import datetime
import json
import os
import statistics
import sys

from nonlocal_det.errors import exit_on_user_error
from nonlocal_det.harness.cli.args import positive_float, positive_int, writable_file
from nonlocal_det.harness.utils.machine import describe_machine
from nonlocal_det.harness.utils.measure import run_child_process, time_and_peak
from nonlocal_det.harness.utils.tables import markdown_table, write_text

# The full-matrix formulas live with the tests that check the blocks against them.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

SIZES = {
    # name: (channels, height, width)
    "res4": (1024, 50, 84),  # res4 of an 800x1333 image (stride 16)
    "large": (64, 200, 200),
    "small": (64, 12, 16),  # to try the tool in seconds
}
FLOAT_BYTES = 4
BLOCK_KINDS = ("NL", "CGNL", "DNL", "GC")
NL_MODES = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
CGNL_KERNELS = ("dot", "embedded_gaussian", "gaussian_rbf")
NL_PEER, GC_PEER, DNL_PEER = "mmcv NonLocal2d", "mmcv ContextBlock", "mmseg DisentangledNonLocal2d"
# Rows of the main table: (label, block spec, peer, sizes it runs at). A spec holds the block
# kind and its settings; "peer" names the peer implementation, or None.
ROWS = [
    *[(f"NL {m}", dict(block="NL", mode=m, sub_sample=True), NL_PEER, SIZES) for m in NL_MODES],
    *[(f"CGNL {k}", dict(block="CGNL", mode=k), None, SIZES) for k in CGNL_KERNELS],
    ("DNL", dict(block="DNL", sub_sample=True), None, SIZES),
    ("DNL, no sub-sampling", dict(block="DNL", sub_sample=False), DNL_PEER, ("res4", "small")),
    *[(f"GC r16 {p} add", dict(block="GC", pooling=p), GC_PEER, SIZES) for p in ("att", "avg")],
]
# --padding: a third of the large map's columns are padding (valid 200 x 134 of 200 x 200)
PADDED_VALID_WIDTH = 134


def estimated_bytes(impl, spec, channels, h, w):
    """Rough memory the full-matrix implementations need (None: linear, always run)."""
    sub = spec.get("sub_sample", True)
    n = h * w
    m = ((h + 1) // 2) * ((w + 1) // 2) if sub else n
    inner = channels // 2
    if spec["block"] == "GC" or impl in ("ours", "ours_core"):
        return None
    if spec["block"] == "CGNL":
        elements = n * inner // 8  # N C' per group, 8 groups
        return 8 * elements * elements * FLOAT_BYTES if impl == "naive" else None
    if impl == "peer" and spec.get("mode") == "concatenation":
        return 2 * (2 * inner) * n * m * FLOAT_BYTES  # mmcv's (B, 2C', N, M) concat tensor
    return 4 * n * m * FLOAT_BYTES  # logits, weights and their gradients


# ---------------------------------------------------------------- child: one implementation


def _our_block(spec):
    from nonlocal_det import layers

    kind, channels, sub_sample = spec["block"], spec["channels"], spec.get("sub_sample")
    if kind == "CGNL":
        return layers.CGNLBlock2d(channels, kernel=spec["mode"], groups=8, norm="GN")
    if kind == "GC":
        return layers.GlobalContextBlock2d(channels, pooling=spec["pooling"], init="standard")
    if kind == "DNL":
        return layers.DisentangledNonLocal2d(channels, sub_sample=sub_sample, norm="BN")
    return layers.NonLocalBlock2d(channels, mode=spec["mode"], sub_sample=sub_sample, norm="BN")


def _masked_sdpa(block, valid_width):
    """The alternative to computing on the valid crop, for softmax modes: attention over the padded
    map with the padded keys masked (a boolean mask to torch's fused attention), then W_z and the
    norm on the whole map. Timed only, to choose between the two."""
    import torch
    import torch.nn.functional as F

    def forward(x):
        q, k, v = (t.flatten(2).transpose(1, 2) for t in block.embed(x))
        key_cols = -(-x.shape[-1] // 2) if block.sub_sample else x.shape[-1]
        valid_cols = -(-valid_width // 2) if block.sub_sample else valid_width
        mask = (torch.arange(key_cols, device=x.device) < valid_cols).repeat(k.shape[1] // key_cols)
        if q.shape[-1] != v.shape[-1]:  # gaussian mode: q, k have C channels, v inner
            v = F.pad(v, (0, q.shape[-1] - v.shape[-1]))
        q, k, v = (t[:, None].contiguous() for t in (q, k, v))
        scale = block._logit_scale()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None, None, None], scale=scale)
        y = y[:, 0, :, : block.inner_channels].transpose(1, 2)
        y = y.reshape(x.shape[0], block.inner_channels, *x.shape[-2:])
        return x + block.norm(block.out(y))

    return forward


def _attention_core(block, impl):
    """The attention core alone: leaf q/k/v maps, so the 1x1 convs are not timed."""
    import torch

    from reference import reference_aggregate

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


def _build(spec, device):
    """The callable x -> output that ``spec["impl"]`` times."""
    from reference import reference_forward

    impl = spec["impl"]
    block = _our_block(spec).to(device)
    if impl == "peer":
        import peers

        builders = {"NL": "mmcv_nonlocal", "DNL": "mmseg_dnl", "GC": "mmcv_context_block"}
        return getattr(peers, builders[spec["block"]])(block)
    if impl == "naive":
        return lambda x: reference_forward(block, x)
    if impl == "padded":  # each image computed on its valid region
        return lambda x: block(x, [(x.shape[-2], PADDED_VALID_WIDTH)] * x.shape[0])
    if impl == "crop":  # the same block on the valid crop itself
        return lambda x: block(x[..., :PADDED_VALID_WIDTH])
    if impl == "masked_sdpa":
        return _masked_sdpa(block, PADDED_VALID_WIDTH)
    if impl in ("ours_core", "naive_core"):
        return _attention_core(block, impl)
    return block


def run_child(spec):
    """Warm-up, one fwd+bwd measured for peak memory, then ``repeats`` timed ones."""
    import torch

    device = torch.device(spec["device"])
    torch.manual_seed(0)
    fn = _build(spec, device)
    shape = (1, spec["channels"], spec["height"], spec["width"])
    x = torch.randn(shape, device=device, requires_grad=True)

    def step():
        fn(x).float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    print(json.dumps(time_and_peak(step, device, spec["repeats"])))


# ---------------------------------------------------------------- parent: rows and tables


def measure_row(args, spec, impls, size):
    """{impl: {"peak_bytes", "ms"} or {"error"}}, the implementations run in turn."""
    channels, h, w = SIZES[size]
    results = {}
    for impl in impls:
        need = estimated_bytes(impl, spec, channels, h, w)
        if need is not None and need > args.memory_limit_gb * 2**30:
            results[impl] = {"error": f"not run, needs ~{need / 2**30:.0f} GiB"}
        else:
            results[impl] = {"times": []}
    base = dict(spec, channels=channels, height=h, width=w)
    base.update(device=args.device, repeats=args.repeats)
    for _ in range(args.cycles):
        for impl in [i for i in impls if "error" not in results[i]]:
            r = run_child_process(__file__, dict(base, impl=impl), args.timeout)
            if "error" in r:
                results[impl] = r
                continue
            entry = results[impl]
            entry["times"] += r["times"]
            entry["peak_bytes"] = min(r["peak_bytes"], entry.get("peak_bytes", r["peak_bytes"]))
    for r in results.values():
        if "times" in r:
            r["ms"] = 1000 * statistics.median(r.pop("times"))
    print(f"{size:6s} {spec} {results}", flush=True)
    return results


def _ms(r):
    return f"{r['ms']:.1f}" if "ms" in r else "—"


def _mib(r):
    return f"{r['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in r else "—"


def _ratio(r, ours):
    return f"{r['ms'] / ours['ms']:.2f}×" if "ms" in r and "ms" in ours else "—"


def _notes(results):
    return "; ".join(f"{name}: {r['error']}" for name, r in results.items() if "error" in r)


def _cells(ours, *others):
    """The times of ours and the others, the others' time over ours, then their extra MiB."""
    everyone = (ours, *others)
    return [*map(_ms, everyone), *(_ratio(r, ours) for r in others), *map(_mib, everyone)]


def block_rows(args, size, peers):
    for label, spec, peer, sizes in ROWS:
        if spec["block"] in args.blocks and size in sizes:
            use_peer = peer is not None and peers[peer.split()[0]]
            r = measure_row(args, spec, ["ours", "naive"] + (["peer"] if use_peer else []), size)
            peer_r = r.get("peer", {"error": f"{peer} not installed" if peer else "no peer"})
            yield [label, *_cells(r["ours"], r["naive"], peer_r), peer or "—", _notes(r)]


def core_rows(args, size):
    for label, spec, _, _ in ROWS[: len(NL_MODES)] if "NL" in args.blocks else []:
        r = measure_row(args, spec, ["ours_core", "naive_core"], size)
        yield [label, *_cells(r["ours_core"], r["naive_core"])]


def padding_rows(args):
    """Padded batch vs the valid crop alone (and masked fused attention), the large map."""
    for label, spec, _, sizes in ROWS:
        if spec["block"] in args.blocks and "large" in sizes:
            softmax = spec.get("mode") in ("gaussian", "embedded_gaussian")
            impls = ["padded", "crop"] + (["masked_sdpa"] if softmax else [])
            r = measure_row(args, spec, impls, "large")
            sdpa = r.get("masked_sdpa", {"error": "softmax NL modes only"})
            padded, crop = r["padded"], r["crop"]
            cells = [_ms(padded), _ms(crop), _ratio(padded, crop), _ms(sdpa)]
            yield [label, *cells, _mib(padded), _mib(crop), _mib(sdpa), _notes(r)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["res4", "large"])
    parser.add_argument("--blocks", nargs="+", choices=BLOCK_KINDS, default=list(BLOCK_KINDS))
    for flag, kind, default, text in [
        ("--repeats", positive_int, 3, "timed runs per process"),
        ("--cycles", positive_int, 2, "processes per implementation, in turn"),
        ("--memory-limit-gb", positive_float, 12.0, "skip implementations estimated to need more"),
        ("--timeout", positive_int, 900, "seconds per process"),
    ]:
        parser.add_argument(flag, type=kind, default=default, help=text)
    padding = "only the padded-batch table: the large map with a third of its columns padded"
    parser.add_argument("--padding", action="store_true", help=padding)
    output = os.path.join("output", "benchmarks.md")
    parser.add_argument("--output", type=writable_file, default=output)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def header(args, peers):
    which = "--padding" if args.padding else f"--sizes {' '.join(args.sizes)}"
    options = f"--device {args.device} --blocks {' '.join(args.blocks)} {which}"
    installed = ", ".join(name for name, ok in peers.items() if ok) or "none"
    return [
        f"Generated by `python tools/benchmark_blocks.py {options}` on "
        f"{datetime.date.today().isoformat()}; machine: {describe_machine(args.device)}; "
        f"peers installed: {installed}.",
        "",
        "Batch 1, forward + backward (input and parameter gradients). Each implementation runs "
        f"in its own processes, {args.cycles} per row in turn (A B C A B C), each process a "
        f"warm-up then {args.repeats} timed runs; times are medians over all timed runs. "
        '"extra MiB" is the peak memory of one forward + backward above what inputs and '
        "parameters already hold, as torch's allocator sees it. Ratios are the other "
        'implementation\'s time over ours (>1: ours is faster). "naive" is '
        "`tests/reference.py` (the full pairwise matrix; GC: its formula written out). "
        "NL: reduction 2, 2×2 max-pool sub-sampling, BN after W_z. CGNL: 8 groups, order 3, GN. "
        "DNL: reduction 2, BN, temperature 0.05 (mmsegmentation's block runs without "
        "sub-sampling only). GC: ratio 1/16, add fusion.",
        "",
    ]


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return run_child(json.loads(args.child))
    import peers

    peers = {name: peers.available(name) for name in ("mmcv", "mmseg")}
    lines = ["# Block benchmarks", "", *header(args, peers)]
    if args.padding:
        lines += markdown_table(
            ["block", "padded ms", "crop ms", "padded/crop", "masked SDPA ms"]
            + ["padded extra MiB", "crop extra MiB", "masked SDPA extra MiB", "notes"],
            padding_rows(args),
        )
        return write_text(args.output, "\n".join(lines))
    for size in args.sizes:
        channels, h, w = SIZES[size]
        lines += [f"## {size}: C={channels}, {h}×{w} (N={h * w} queries)", ""]
        lines += markdown_table(
            ["block", "ours ms", "naive ms", "peer ms", "naive/ours", "peer/ours"]
            + ["ours extra MiB", "naive extra MiB", "peer extra MiB", "peer", "notes"],
            block_rows(args, size, peers),
        )
        core = list(core_rows(args, size))
        if core:
            lines += ["", f"NL attention core only (q/k/v given, no 1×1 convs), {size}:", ""]
            lines += markdown_table(
                ["mode", "ours ms", "naive ms", "naive/ours", "ours MiB", "naive MiB"], core
            )
        lines.append("")
    write_text(args.output, "\n".join(lines))


if __name__ == "__main__":
    exit_on_user_error(main)
