"""Weights & Biases for a table: one `group` per table, tags and job types, and the aggregated table.

Every run of a table is launched with `logger.wandb.group=<paper>/<table>`, `job_type=<row>`, the name
`<row>/<dataset>/seed<k>` and the tags `reproduce, <paper>, <table>, <scale>`, so the W&B UI groups a
table's runs and a report can filter them; their summaries hold the `results.json` fields
(`update_wandb_summary`). After aggregation one more run (`job_type=aggregate`) logs the table as a
`wandb.Table` and its plot. Without an API key or with `WANDB_MODE=offline` everything is written offline
under the table directory; `wandb sync <dir>` uploads it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vitlab.reproduce.spec import TableSpec


def uses_wandb(cfg: DictConfig) -> bool:
    """Whether the composed train config logs to W&B (`logger=wandb` or `logger=many`)."""
    loggers = cfg.get("logger") or {}
    return "wandb" in loggers


def run_overrides(spec: TableSpec, scale: str, extra: Sequence[str]) -> list[str]:
    """Group, job type, name and tags for every run of the table (the user's own `tags=` wins)."""
    overrides = [f"logger.wandb.group={spec.paper}/{spec.table}"]
    if not any(o.split("=", 1)[0].lstrip("+~") == "tags" for o in extra):
        overrides.append(f"tags=[reproduce,{spec.paper},{spec.table},{scale}]")
    return overrides


def group_overrides(row: str, group: str) -> list[str]:
    """Per seed group: the row as `job_type`, `<row>/<dataset>/seed<k>` as the run name."""
    return [f"logger.wandb.job_type={row}", f"logger.wandb.name={group}/seed${{seed}}"]


def publish_table(
    spec: TableSpec, scale: str, files: Mapping[str, Path], wandb_cfg: Mapping[str, Any], save_dir: Path
) -> str:
    """Log the aggregated table (`wandb.Table` from the CSV) and its plot in a `job_type=aggregate` run of
    the table's group; returns the run's local directory."""
    import wandb

    from vitlab.runs.wandb_login import should_force_offline

    if should_force_offline():
        os.environ["WANDB_MODE"] = "offline"  # as vitlab-train does: never block on a login prompt
    with open(files["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = list(rows[0]) if rows else ["row"]
    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=wandb_cfg.get("project") or "vitlab",
        entity=wandb_cfg.get("entity"),
        group=f"{spec.paper}/{spec.table}",
        job_type="aggregate",
        name=f"{spec.paper}_{spec.table}_{scale}",
        tags=["reproduce", spec.paper, spec.table, scale],
        dir=str(save_dir),
        config={"paper": spec.paper, "table": spec.table, "scale": scale, "source": spec.source},
        reinit="finish_previous",
    )
    table = wandb.Table(columns=columns, data=[[r.get(c, "") for c in columns] for r in rows])
    run.log({"table": table, "plot": wandb.Image(str(files["png"])), "table_md": wandb.Html(_md_as_html(files))})
    directory = run.dir
    run.finish()
    return str(directory)


def _md_as_html(files: Mapping[str, Path]) -> str:
    return "<pre>" + Path(files["md"]).read_text().replace("&", "&amp;").replace("<", "&lt;") + "</pre>"
