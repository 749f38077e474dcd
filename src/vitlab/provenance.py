"""What produced a result: library versions, the device, and the exact code (git SHA, dirty tree, diff hash).

Recorded in every `results.json` and in the config sent to the loggers, so two results that differ can be
told apart by more than their overrides.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

UNTRACKED_HASH_LIMIT = 16 * 2**20
PACKAGES = ("torch", "torchvision", "timm", "pytorch-lightning", "hydra-core", "vitlab")


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """{"python": "3.11.7", "torch": "2.14.1", ...} for `PACKAGES` and `extra` (e.g. a bench's reference
    packages); a package that is not installed reads "not installed"."""
    versions = {"python": platform.python_version()}
    for name in (*PACKAGES, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU model: `lscpu`'s model name (a VM may say only "AMD EPYC"), else /proc/cpuinfo's, else the
    platform's processor name. One answer for results.json and every bench table, so both name a machine alike."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env={"LC_ALL": "C"}).stdout
        found = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
        if found:
            return found.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if found:
            return found.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: Any = None) -> str:
    """ "NVIDIA H100 80GB HBM3" on a CUDA device; "cpu: <model> (<n> threads)" otherwise."""
    import torch

    if device is not None and getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_name()} ({torch.get_num_threads()} threads)"


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode(errors="replace")


@lru_cache(maxsize=8)
def git_state(cwd: str | None = None) -> dict[str, Any]:
    """{git_sha, git_dirty, git_diff_sha256} of the repository around `cwd` (default: the working directory).

    The diff hash covers `git diff HEAD` (staged and unstaged changes to tracked files) and the names and
    contents of untracked, not ignored files, so two dirty trees with different edits hash differently.
    Outside a repository: {"git_sha": "none", "git_dirty": False, "git_diff_sha256": "none"}.
    """
    root = Path(cwd or os.getcwd())
    sha = _git("rev-parse", "HEAD", cwd=root)
    if not sha:
        return {"git_sha": "none", "git_dirty": False, "git_diff_sha256": "none"}
    digest = hashlib.sha256()
    digest.update((_git("diff", "HEAD", "--binary", cwd=root) or "").encode())
    untracked = (_git("ls-files", "--others", "--exclude-standard", "-z", cwd=root) or "").split("\0")
    for name in sorted(n for n in untracked if n):  # paths relative to `root`
        digest.update(name.encode())
        try:
            path = root / name
            size = path.stat().st_size
            # a large stray file (a data set not yet ignored) counts by its size, not its bytes
            digest.update(path.read_bytes() if size <= UNTRACKED_HASH_LIMIT else str(size).encode())
        except OSError:
            continue
    status = _git("status", "--porcelain", "--untracked-files=normal", cwd=root) or ""
    dirty = bool(status.strip())
    return {"git_sha": sha.strip(), "git_dirty": dirty, "git_diff_sha256": digest.hexdigest() if dirty else "clean"}


def provenance(device: Any = None) -> dict[str, Any]:
    """Everything above in one flat dict (keys `versions`, `device`, `git_*`)."""
    return {"versions": package_versions(), "device": device_name(device), **git_state()}
