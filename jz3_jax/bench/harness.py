"""Timing and reporting shared by every benchmark kind.

Compile and warm-up runs are excluded; the figure is the median of several timed repeats. The
last line a benchmark prints is one JSON object (kind, device, unit, ours, and where a reference
ran in the same process, reference and ratio = ours / reference, higher is better).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from typing import Any, Callable

import jax


def time_call(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `fn` (which must block until its work is done) for each timed repeat."""
    for _ in range(max(warmup, 1)):
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def device_description() -> str:
    """E.g. "cpu x1" or "NVIDIA H100 80GB HBM3 x1"."""
    devices = jax.devices()
    return f"{devices[0].device_kind} x{len(devices)}"


def peak_memory_bytes() -> int | None:
    """Peak accelerator memory of device 0 where the backend reports it, else this process's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def report(kind: str, unit: str, ours: float, reference: float | None = None, **extra: Any) -> dict:
    """Print the closing JSON line of a benchmark and return it."""
    result = {"kind": kind, "device": device_description(), "unit": unit, "ours": round(ours, 3)}
    if reference is not None:
        result["reference"] = round(reference, 3)
        result["ratio"] = round(ours / reference, 3)
    result["peak_memory_bytes"] = peak_memory_bytes()
    result.update(extra)
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
    return result
