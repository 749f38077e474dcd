"""Paper tables, one command each: definitions, job expansion, aggregation and rendering.

A table definition (`configs/paper/<paper>/<table>.yaml`) names the rows of a paper table (each a set of
`vitlab-train` overrides), the data sets, the seeds and budget of each scale (smoke, mini, full) and the
paper's reported numbers with their source. This package turns it into jobs with deterministic run
directories (`<table dir>/<row>/<dataset>/seed<k>/results.json`), so a broken sweep resumes where it
stopped, and turns the finished `results.json` files back into a table (Markdown, CSV, LaTeX, PNG) that
shows failed and missing cells as such and never fills them in.

`vitlab-reproduce` (vitlab.cli.reproduce) calls `resolve_table` -> `TableSpec.prepare_jobs` /
`TableSpec.jobs` -> `pending_jobs` -> launch (`launch`: one `vitlab-train -m` subprocess per seed group) ->
`collect` -> `write_all` -> W&B (`wandb_publish`).
"""

from __future__ import annotations

from vitlab.reproduce.aggregate import Cell, RowResult, collect
from vitlab.reproduce.jobs import Job, archive, job_status, multirun_commands, pending_jobs
from vitlab.reproduce.render import render_csv, render_latex, render_markdown, render_plot, write_all
from vitlab.reproduce.table import (
    SCALES,
    DatasetSpec,
    RowSpec,
    ScaleSpec,
    TableSpec,
    find_table,
    list_tables,
    load_table,
    resolve_table,
    table_dir,
)
from vitlab.runs.files import read_results

__all__ = [
    "SCALES",
    "Cell",
    "DatasetSpec",
    "Job",
    "RowResult",
    "RowSpec",
    "ScaleSpec",
    "TableSpec",
    "archive",
    "collect",
    "find_table",
    "job_status",
    "list_tables",
    "load_table",
    "multirun_commands",
    "pending_jobs",
    "read_results",
    "render_csv",
    "render_latex",
    "render_markdown",
    "render_plot",
    "resolve_table",
    "table_dir",
    "write_all",
]
