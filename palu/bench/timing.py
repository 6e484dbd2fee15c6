"""CUDA-event timing: warm-up, then the median of many repeats."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def time_fn(fn: Callable[[], object], warmup: int = 5, reps: int = 50, device: str = "cuda") -> dict[str, float]:
    """Milliseconds of ``fn()`` over ``reps`` calls after ``warmup``: median, min, max, 10th / 90th percentile; CUDA
    events on GPU, perf_counter on CPU.

    ``host_median_ms`` is the median time the host spent inside ``fn()`` (enqueueing its work). Each repeat waits for
    the device before the next, so the host never runs ahead: a step whose host time is close to its event time
    leaves the GPU waiting on Python and launch overhead (host-bound) or waits for the device inside ``fn`` (a
    synchronizing call); one with a small host time is bound by the GPU.
    """
    for _ in range(warmup):
        fn()
    times, host = [], []
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            t0 = time.perf_counter()
            fn()
            host.append((time.perf_counter() - t0) * 1e3)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        host = times
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "p10_ms": _percentile(times, 10), "p90_ms": _percentile(times, 90),
            "host_median_ms": statistics.median(host), "reps": reps}


def _percentile(values: list[float], pct: float) -> float:
    """Linear-interpolated percentile of a non-empty list (numpy's default method)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * pct / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def peak_memory_reset(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_bytes(device: str) -> int:
    """Peak allocated bytes since the last reset (CUDA), or the process's peak RSS (CPU)."""
    if str(device).startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
