"""The device's peak FLOP/s, the denominator of MFU (model FLOPs utilisation = achieved FLOP/s / peak).

CPU: cores × clock × FLOPs per cycle per core, read from `lscpu` (`CPU max MHz`, else the `cpu MHz` of
/proc/cpuinfo; the flags give the fp32 vector width: avx512f -> 16 lanes, avx2 + fma -> 8, else 4). A fused
multiply-add counts as 2 FLOPs, and the number of FMA units per core is an *assumption* (not in `lscpu`),
stated in every table that uses it. CUDA: NVIDIA's datasheet peaks (dense, no sparsity) by device name and
dtype; an unknown device has no peak ("n/a"). See docs/performance.md (training memory and MFU).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

# NVIDIA datasheet, dense (no structured sparsity), TFLOP/s. Keys are matched as substrings of the device name
# in this order (the H100 and H200 SXM parts share their figures).
CUDA_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


@dataclass(frozen=True)
class Peak:
    """A peak FLOP/s (None: unknown) and how it was derived, for the table's note."""

    flops: float | None
    basis: str


def cpu_peak(lscpu_text: str, cpuinfo_text: str = "", fma_units: int = 2, cores: int | None = None) -> Peak:
    """fp32 peak of the CPU described by `lscpu`'s output (`cpuinfo_text`: /proc/cpuinfo, for the clock when
    lscpu has no `CPU max MHz`, as in many virtual machines). `cores`: the cores the process may use (default:
    lscpu's `CPU(s)`)."""
    fields = {}
    for line in lscpu_text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    mhz, source = _number(fields.get("CPU max MHz")), "lscpu CPU max MHz"
    if mhz is None:
        found = re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo_text, re.MULTILINE)
        mhz, source = (float(found.group(1)), "/proc/cpuinfo cpu MHz") if found else (None, "")
    if cores is None:
        cores = int(_number(fields.get("CPU(s)")) or 0)
    flags = set(fields.get("Flags", "").split())
    if "avx512f" in flags:
        lanes, isa = 16, "avx512f"
    elif {"avx2", "fma"} <= flags:
        lanes, isa = 8, "avx2+fma"
    else:
        lanes, isa = 4, "no avx2/fma flag: 4 lanes"
    if mhz is None or cores <= 0:
        return Peak(None, "clock or core count not found in lscpu or /proc/cpuinfo")
    per_cycle = lanes * 2 * fma_units  # an FMA is 2 FLOPs
    basis = (
        f"{cores} core{'s' if cores != 1 else ''} × {mhz / 1e3:.3f} GHz ({source}) × {per_cycle} fp32 "
        f"FLOPs/cycle ({isa}: {lanes} lanes × "
        f"2 per FMA × {fma_units} FMA units per core, assumed)"
    )
    return Peak(cores * mhz * 1e6 * per_cycle, basis)


def cuda_peak(device_name: str, dtype: str) -> Peak:
    """The datasheet peak of an NVIDIA device for `dtype` (bf16, fp16, tf32, fp32); unknown: Peak(None, ...)."""
    for key, table in CUDA_PEAK_TFLOPS.items():
        if key in device_name and dtype in table:
            return Peak(
                table[dtype] * 1e12, f"{device_name}: {table[dtype]:g} TFLOP/s {dtype} dense (NVIDIA datasheet)"
            )
    return Peak(None, f"no datasheet peak for {device_name!r} in {dtype}")


def device_peak(device: str, dtype: str, fma_units: int = 2, threads: int | None = None) -> Peak:
    """The peak of the device measured on (`device`: cpu or cuda[:i]). On the CPU, the cores the measurement
    could use: this process's CPU affinity, capped by `threads` (the torch threads of the measuring process)."""
    if device.startswith("cuda"):
        import torch

        return cuda_peak(torch.cuda.get_device_name(torch.device(device)), dtype)
    import os

    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    cpuinfo = Path("/proc/cpuinfo")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads:
        cores = min(cores, threads)
    return cpu_peak(text, cpuinfo.read_text() if cpuinfo.exists() else "", fma_units, cores)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
