"""
Timing and peak memory of one step, each implementation in a process of its own: the parent runs
``python <tool> --child '<json spec>'`` and reads the child's last JSON line.
"""

import json
import os
import subprocess
import sys
import time


def cpu_peak_bytes(step) -> int:
    """Peak bytes torch's CPU allocator holds during step() above what it held before."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        step()
    current = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            current += size
        elif action == Action.DESTROY:
            current -= size
        peak = max(peak, current)
    return peak


def time_and_peak(step, device, repeats: int, *, with_memory: bool = True) -> dict:
    """Warm-up (thread pools, kernel selection, caches), then one step measured for the allocator's
    extra peak bytes (None without ``with_memory``), then ``repeats`` timed steps. ``step`` must
    synchronise CUDA itself. Returns {"peak_bytes", "times"}."""
    import torch

    step()
    peak = None
    if with_memory and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - base
    elif with_memory:
        peak = cpu_peak_bytes(step)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"peak_bytes": peak, "times": times}


def run_child_process(script: str, spec: dict, timeout: float) -> dict:
    """``python script --child '<spec>'``: the dict its last JSON line prints, or {"error": why}
    (timed out, failed: the last line of its stderr)."""
    cmd = [sys.executable, os.path.abspath(script), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"failed: {tail[:160]}"}
    return json.loads(lines[-1])
