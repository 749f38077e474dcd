"""A measurement in a fresh process: the benches start `python -m vitlab.bench.<worker>`, whose last line of
stdout is one JSON object. A process that fails or runs out of time becomes `{"error": ...}` (its last stderr
line), so one bad cell is reported in the table instead of stopping the bench."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from typing import Any


def run_json_process(cmd: list[str], timeout: int, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run `cmd` and parse its last stdout line as JSON; `{"error": reason}` on a timeout or a non-zero exit."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"error": last[:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])
