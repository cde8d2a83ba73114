#!/usr/bin/env python
"""
Forward+backward time and extra peak memory of the non-local and CGNL blocks, side by side
in one run, against the full-matrix reference (nonlocal_det.layers.reference) and, when
mmcv is installed, mmcv's NonLocal2d.

Every measurement runs in its own child process, so one implementation's allocations or
caches cannot flatter the next one's. Peak memory is the extra high-water mark over what
the inputs and parameters already hold: resident set size (VmHWM, reset through
/proc/self/clear_refs) on CPU, ``torch.cuda.max_memory_allocated`` on CUDA.
Implementations whose estimated need exceeds ``--memory-limit-gb`` are not run, and the
table says why.

    python tools/benchmark_blocks.py                      # CPU, writes docs/benchmarks.md
    python tools/benchmark_blocks.py --device cuda --output docs/benchmarks_gpu.md
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

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
            return 2 * (2 * inner) * n * m * FLOAT_BYTES  # its (B, 2C', N, M) concat tensor, twice
        return 4 * n * m * FLOAT_BYTES
    if impl == "cgnl_naive":
        elements = n * inner // 8
        return 8 * elements * elements * FLOAT_BYTES
    return None


# ---------------------------------------------------------------- child: one measurement


def _rss_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _build(impl, mode, channels, device):
    import torch

    from nonlocal_det.layers import CGNLBlock2d, NonLocalBlock2d
    from nonlocal_det.layers.reference import reference_aggregate, reference_forward

    if impl.startswith("cgnl"):
        block = CGNLBlock2d(channels, kernel=mode, groups=8, norm="GN").to(device)
        return (lambda x: reference_forward(block, x)) if impl == "cgnl_naive" else block
    if impl == "mmcv":
        from mmcv.cnn import NonLocal2d

        return NonLocal2d(channels, mode=mode, sub_sample=True, use_scale=True, norm_cfg=dict(type="BN")).to(device)
    block = NonLocalBlock2d(channels, mode=mode, norm="BN").to(device)
    if impl == "ours":
        return block
    if impl == "naive":
        return lambda x: reference_forward(block, x)

    # The attention core alone: leaf q/k/v maps, so the 1x1 convs are not timed.
    def core(x, _cache={}):
        if "qkv" not in _cache:
            with torch.no_grad():
                _cache["qkv"] = [t.detach().requires_grad_() for t in block.embed(x)]
        q, k, v = _cache["qkv"]
        if impl == "ours_core":
            return block.aggregate(q, k, v)
        return reference_aggregate(block, q.flatten(2), k.flatten(2), v.flatten(2))

    return core


def run_child(spec):
    """
    ``spec["measure"] == "memory"``: the extra peak memory of one fwd+bwd of the single
    implementation in ``spec["impls"]``. ``"time"``: the times of all of them, measured
    round-robin (one run of each per round) so that drifts in machine load hit all alike.
    """
    import torch

    device = torch.device(spec["device"])
    torch.manual_seed(0)
    channels, h, w = spec["channels"], spec["height"], spec["width"]
    fns = {impl: _build(impl, spec["mode"], channels, device) for impl in spec["impls"]}
    x = torch.randn(1, channels, h, w, device=device, requires_grad=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(fn):
        fn(x).float().square().mean().backward()
        sync()

    for fn in fns.values():
        step(fn)  # warm-up: thread pools, kernel selection, the core's cached q/k/v
    if spec["measure"] == "memory":
        (fn,) = fns.values()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step(fn)
            peak = torch.cuda.max_memory_allocated() - base
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            base = _rss_bytes("VmRSS")
            step(fn)
            peak = _rss_bytes("VmHWM") - base
        print(json.dumps({"peak_bytes": max(peak, 0)}))
        return
    times = {impl: [] for impl in fns}
    for _ in range(spec["repeats"]):
        for impl, fn in fns.items():
            start = time.perf_counter()
            step(fn)
            times[impl].append(time.perf_counter() - start)
    print(json.dumps({impl: 1000 * statistics.median(t) for impl, t in times.items()}))


# ---------------------------------------------------------------- parent: the table


def measure(spec, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"failed: {tail[:160]}"}
    return json.loads(lines[-1])


def _fmt_ms(r):
    return f"{r['ms']:.1f}" if "ms" in r else "—"


def _fmt_mb(r):
    return f"{r['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in r else "—"


def _ratio(r, ours):
    if "ms" not in r or "ms" not in ours:
        return "—"
    return f"{r['ms'] / ours['ms']:.2f}×"


def machine_description(device):
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    desc = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if device == "cuda":
        desc += f", GPU {torch.cuda.get_device_name()}"
    return desc


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", default="res4,large", help=f"comma-separated, from {list(SIZES)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed fwd+bwd rounds per case (median)")
    parser.add_argument("--memory-limit-gb", type=float, default=12.0, help="skip implementations estimated to need more")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "docs", "benchmarks.md"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
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
        """{impl: {"ms": .., "peak_bytes": ..} or {"error": ..}} for impls measured together."""
        channels, h, w = SIZES[size]
        results, runnable = {}, []
        for impl in impls:
            need = estimated_bytes(impl, mode, channels, h, w)
            if need is not None and need > limit:
                results[impl] = {"error": f"not run: needs ~{need / 2**30:.0f} GiB"}
            else:
                runnable.append(impl)
        spec = dict(mode=mode, channels=channels, height=h, width=w, device=args.device, repeats=args.repeats)
        for impl in runnable:
            results[impl] = measure(dict(spec, impls=[impl], measure="memory"), args.timeout)
        times = {}
        if runnable:
            times = measure(dict(spec, impls=runnable, measure="time"), args.timeout * len(runnable))
        for impl in runnable:
            if "error" in times:
                results[impl] = times
            elif "error" not in results[impl]:
                results[impl]["ms"] = times[impl]
        print(f"{size:6s} {mode:18s} {results}", flush=True)
        return results

    lines = [
        "# Block benchmarks",
        "",
        f"Generated by `python tools/benchmark_blocks.py --device {args.device}` on "
        f"{datetime.date.today().isoformat()}.",
        "",
        f"Machine: {machine_description(args.device)}.",
        "",
        "Batch 1, forward + backward (input and parameter gradients), median of "
        f"{args.repeats} rounds after a warm-up; the implementations compared in a row are "
        "timed in one process, one run of each per round. \"extra MiB\" is the peak memory "
        "of one forward + backward above what inputs and parameters already hold, each "
        "implementation in its own process (CPU: resident set high-water mark, which has a "
        "few tens of MiB of allocator noise; CUDA: allocator peak). Ratios are the other "
        "implementation's time over ours (>1: ours is faster). Non-local blocks: reduction 2, "
        "2×2 max-pool sub-sampling, BN after W_z; mmcv's `NonLocal2d` with the same settings"
        + ("" if have_mmcv else " (mmcv not installed: not measured)")
        + ". CGNL: 8 groups, order 3, GN.",
        "",
    ]
    for size in args.sizes.split(","):
        channels, h, w = SIZES[size]
        lines += [
            f"## {size}: C={channels}, {h}×{w} (N={h * w} queries, M={_key_count(h, w)} keys)",
            "",
            "| block | ours ms | naive ms | mmcv ms | naive/ours | mmcv/ours | ours extra MiB | naive extra MiB | mmcv extra MiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for mode in NL_MODES:
            impls = ["ours", "naive"] + (["mmcv"] if have_mmcv else [])
            r = run(impls, mode, size)
            ours, naive = r["ours"], r["naive"]
            mmcv = r.get("mmcv", {"error": "mmcv not installed"})
            notes = "; ".join(f"{n}: {r['error']}" for n, r in (("ours", ours), ("naive", naive), ("mmcv", mmcv)) if "error" in r)
            lines.append(
                f"| NL {mode} | {_fmt_ms(ours)} | {_fmt_ms(naive)} | {_fmt_ms(mmcv)} | {_ratio(naive, ours)} | "
                f"{_ratio(mmcv, ours)} | {_fmt_mb(ours)} | {_fmt_mb(naive)} | {_fmt_mb(mmcv)} |"
                + (f" {notes}" if notes else "")
            )
        for kernel in CGNL_KERNELS:
            r = run(["cgnl", "cgnl_naive"], kernel, size)
            ours, naive = r["cgnl"], r["cgnl_naive"]
            note = f" naive: {naive['error']}" if "error" in naive else ""
            lines.append(
                f"| CGNL {kernel} | {_fmt_ms(ours)} | {_fmt_ms(naive)} | — | {_ratio(naive, ours)} | — | "
                f"{_fmt_mb(ours)} | {_fmt_mb(naive)} | — |{note}"
            )
        lines += [
            "",
            f"Attention core only (q/k/v given, no 1×1 convs), {size}:",
            "",
            "| mode | ours ms | naive ms | naive/ours | ours extra MiB | naive extra MiB |",
            "|---|---|---|---|---|---|",
        ]
        for mode in NL_MODES:
            r = run(["ours_core", "naive_core"], mode, size)
            ours, naive = r["ours_core"], r["naive_core"]
            lines.append(
                f"| {mode} | {_fmt_ms(ours)} | {_fmt_ms(naive)} | {_ratio(naive, ours)} | {_fmt_mb(ours)} | {_fmt_mb(naive)} |"
                + (f" naive: {naive['error']}" if "error" in naive else "")
            )
        lines.append("")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.output}")


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    main()
