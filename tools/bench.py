"""Benchmark helpers shared by every method's `make bench-*`: time a training step, report
each variant as a ratio to a reference run in the same process (never as absolute timings in
tests), peak memory. Methods put their variants in `tools/<method>/bench.py`."""

import json
import resource
import time
from collections.abc import Callable

import torch


def median_step_seconds(step: Callable[[], None], device: torch.device, steps: int, warmup: int) -> float:
    """Median wall time of `step()` (one optimizer step) after `warmup` untimed calls."""
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"


def save_json(path: str | None, obj) -> None:
    """Write a benchmark's rows as indented JSON (nothing when path is None)."""
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(
    timers: list[tuple[str, dict, Callable[[], float]]],
    batch: int,
    device: torch.device,
    ratio_key: str,
    json_path: str | None,
    ratio: str = "speedup",
    unit: str = "img",
) -> list[dict]:
    """Run each (name, extra row fields, seconds-per-step callable; the fields are read after it runs, so it may
    fill them), print and return rows with
    items/s (`unit`: images, tokens) and the ratio to the first row (the reference): `speedup` = ref / sec (higher is
    faster) or `cost` = sec / ref (how many reference steps one step costs). Optionally write JSON."""
    rows, ref = [], None
    for name, extra, seconds in timers:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sec = seconds()
        ref = ref or sec
        value = ref / sec if ratio == "speedup" else sec / ref
        row = {
            "variant": name,
            **extra,
            "sec_per_step": sec,
            "images_per_sec": batch / sec,
            ratio_key: value,
            "peak_memory_mb": peak_memory_mb(device),
        }
        rows.append(row)
        print(
            f"  {name:<34} {row['images_per_sec']:9.1f} {unit}/s   {value:5.2f}x   peak {row['peak_memory_mb']:.0f} MB",
            flush=True,
        )
    save_json(json_path, rows)
    return rows
