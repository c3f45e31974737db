"""Timers shared by the benchmark scripts (imported as `timing` from benchmarks/)."""

from __future__ import annotations

import statistics
import time

import torch


def cpu_timer(fn, setup=None, repeats: int = 7) -> float:
    """Median seconds of fn() over repeats, setup() untimed before each, after one warm-up."""
    return _median_of(fn, setup, repeats, _wall_seconds)


def cuda_timer(fn, setup=None, repeats: int = 7) -> float:
    """Median seconds of fn() over repeats by CUDA events on the current stream, setup() untimed
    before each, after one warm-up."""
    return _median_of(fn, setup, repeats, _event_seconds)


def _median_of(fn, setup, repeats: int, seconds) -> float:
    setup = setup or (lambda: None)
    setup()
    fn()
    times = []
    for _ in range(repeats):
        setup()
        times.append(seconds(fn))
    return statistics.median(times)


def _wall_seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _event_seconds(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3
