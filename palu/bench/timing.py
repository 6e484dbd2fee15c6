"""CUDA-event timing: warm-up, then the median of many repeats."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def time_fn(fn: Callable[[], object], warmup: int = 5, reps: int = 50, device: str = "cuda") -> dict[str, float]:
    """Median / min / max milliseconds of ``fn()``; CUDA events on GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "reps": reps}


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
