"""What every benchmark table is printed with: the machine (CPU model, cores, threads, load), the device and
the library versions. Absolute timings differ between machines of the same kind (2.4× was seen between two
2-core AMD EPYC VMs), so a table without its machine cannot be compared with anything."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from functools import lru_cache
from importlib import metadata

PACKAGES = ("torch", "timm", "pytorch_lightning", "vitlab")


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """`lscpu`'s model name (a VM may say only "AMD EPYC"), else /proc/cpuinfo's, else the platform's."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env={"LC_ALL": "C"}).stdout
        found = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
        if found:
            return found.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        if found:
            return found.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions of the libraries a timing depends on (`extra`: e.g. the reference packages)."""
    found = {}
    for name in (*PACKAGES, *extra):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def environment(device: str = "cpu", extra: tuple[str, ...] = ()) -> dict:
    """The facts a timing needs beside it (also stored in the benches' JSON files)."""
    import torch

    env = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),  # > cores: other jobs shared the CPU while measuring
        "python": platform.python_version(),
        "versions": versions(extra),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env


def header(env: dict) -> str:
    """One Markdown paragraph naming the machine, for the top of every table."""
    libs = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    gpu = f"; GPU {env['gpu']} (CUDA {env['cuda']})" if "gpu" in env else ""
    return (
        f"Machine: {env['cpu']}, {env['cores']} cores, {env['torch_threads']} torch threads, load average "
        f"{env['load_avg_1min']} at the start{gpu}; device `{env['device']}`; Python {env['python']}, {libs}."
    )
