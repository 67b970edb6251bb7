"""Measuring on a device for `flexeval speed`: timing, the dtype's matmul ceiling, copy bandwidth,
out-of-memory handling and profiler tables."""

from __future__ import annotations

import statistics
import time

import torch


def mark(device: torch.device):
    """A point on the device's timeline: a recorded CUDA event, or perf_counter on the CPU."""
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def elapsed_between(marks: list) -> list[float]:
    """Seconds between consecutive marks."""
    if marks and isinstance(marks[0], torch.cuda.Event):
        marks[-1].synchronize()
        return [a.elapsed_time(b) / 1000 for a, b in zip(marks, marks[1:])]
    return [b - a for a, b in zip(marks, marks[1:])]


class Timer:
    def __init__(self, device: torch.device, repeat: int, warmup: int = 1):
        self.device, self.repeat, self.warmup = device, repeat, warmup

    def __call__(self, fn, repeat: int | None = None, warmup: int | None = None) -> float:
        """Median seconds of fn() after warm-up."""
        for _ in range(self.warmup if warmup is None else warmup):
            fn()
        times = []
        for _ in range(repeat or self.repeat):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize(self.device)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        return statistics.median(times)


def device_ceilings(device: torch.device, dtype: torch.dtype, timer: Timer) -> dict:
    """Measured dense matmul throughput in `dtype` and device-memory copy bandwidth (read + write)."""
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    matmul_s = timer(lambda: a @ b, repeat=10)
    nbytes = (2 << 30) if device.type == "cuda" else (32 << 20)
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    copy_s = timer(lambda: dst.copy_(src), repeat=10)
    return {"matmul_n": n, "matmul_tflops": 2 * n ** 3 / matmul_s / 1e12, "copy_bytes": nbytes,
            "copy_gb_per_s": 2 * nbytes / copy_s / 1e9}


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def profile_table(fn, device: torch.device, rows: int = 30) -> str:
    """torch.profiler's table of the top operators/kernels of one fn() call, by device time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
    averages = prof.key_averages()
    for key in (("self_device_time_total", "self_cuda_time_total") if device.type == "cuda" else ()) + (
            "self_cpu_time_total",):
        try:
            return averages.table(sort_by=key, row_limit=rows)
        except (KeyError, AttributeError, ValueError):  # the key's name changed across torch versions
            continue
    return averages.table(row_limit=rows)
