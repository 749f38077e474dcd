"""What every benchmark table is printed with: the machine (CPU model, cores, threads, load), the device and
the library versions. Absolute timings differ between machines of the same kind (2.4× was seen between two
2-core AMD EPYC VMs), so a table without its machine cannot be compared with anything. The CPU name and the
versions are `vitlab.provenance`'s, the same a run records in its results.json."""

from __future__ import annotations

import os

from vitlab.provenance import cpu_name, package_versions


def environment(device: str = "cpu", extra: tuple[str, ...] = ()) -> dict:
    """The facts a timing needs beside it (also stored in the benches' JSON files); `extra`: more packages whose
    versions matter (e.g. the reference implementations a bench compares against)."""
    import torch

    versions = package_versions(extra)
    env = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),  # > cores: other jobs shared the CPU while measuring
        "python": versions.pop("python"),
        "versions": versions,
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
