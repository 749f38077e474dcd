"""One `vitlab-train` run in this process (the console script's own `train` inside `run_task`, in a fresh
attempt of `run_dir`): seconds instead of a subprocess's ~6 s start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import open_dict


def train_in_process(run_dir: Path, args: list[str]) -> dict[str, Any]:
    """Train with `args` (train.yaml overrides) into `run_dir`; its results.json, as read back from the file."""
    from vitlab.cli import train as train_cli
    from vitlab.cli.in_place import apply_attempt, open_attempt
    from vitlab.cli.runner import run_task
    from vitlab.compose import compose_config

    cfg = compose_config("train", args)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    attempt = open_attempt(run_dir, [])
    apply_attempt(cfg, attempt)
    run_task(cfg, lambda c, r: train_cli.train(c, r, attempt=attempt), attempt)
    return json.loads((run_dir / "results.json").read_text())
