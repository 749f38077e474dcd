"""`vitlab-sweep`: where every job of a sweep stands, and the command line of its best one.

docs/runs.md#watching-a-sweep says what each column and state means.

    vitlab-sweep status outputs/multiruns/2026-12-04/18-30-00          # one table, then a summary line
    vitlab-sweep status outputs/reproduce/vix/mini_digits/mini --watch 30   # refresh until nothing runs or waits
    vitlab-sweep best outputs/multiruns/2026-12-04/18-30-00 --metric val/acc --mode max

A 200-job sweep is otherwise read directory by directory. The reading is `vitlab.runs.sweep_status` (no
terminal code there); this module only parses the command line, finds a table's cells so the ones not started
show as `pending`, and draws the table with rich. Bad input exits 2 with one paragraph.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from vitlab.errors import ConfigError
from vitlab.runs.sweep_status import STALE_AFTER_S, SweepStatus, best_command, read_sweep

STYLE = {"done": "green", "running": "cyan", "failed": "red", "interrupted": "yellow", "pruned": "magenta",
         "stale": "bold red", "pending": "dim"}  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are a `ConfigError` (one paragraph, exit 2) like every vitlab command's."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message}.\n{self.format_usage().strip()}")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="vitlab-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="{status,best}")
    for name, what in (("status", "one row per job, then a summary line"), ("best", "the best job's command line")):
        sub = commands.add_parser(name, help=what)
        sub.add_argument("dir", type=Path, help="a sweep folder (vitlab-train -m), an Optuna search's or a table's")
        sub.add_argument("--metric", default="val/acc", help="a results.json key to rank by (default val/acc)")
        sub.add_argument("--mode", default="max", help="max or min (default max)")
        if name == "status":
            sub.add_argument("--watch", nargs="?", const=10.0, type=float, metavar="SECONDS",
                             help="refresh every SECONDS (default 10) until nothing is running or pending")  # fmt: skip
            sub.add_argument("--stale-after", type=float, default=STALE_AFTER_S / 60, metavar="MINUTES",
                             help="a job elsewhere whose files are older than this is stale (default 60)")  # fmt: skip
    return top


def table_cells(folder: Path) -> list[str]:
    """The job folders of a `vitlab-reproduce` table, when `folder` is one (`<log dir>/reproduce/<paper>/
    <table>/<scale>`, docs/reproduce.md) and its definition is found; [] otherwise (pending is then unknown)."""
    from vitlab.configs import config_dir
    from vitlab.reproduce import SCALES, resolve_table

    parts = folder.resolve().parts
    if len(parts) < 4 or parts[-4] != "reproduce" or parts[-1] not in SCALES:
        return []
    paper, table, scale = parts[-3:]
    try:
        spec = resolve_table(config_dir(), paper, table, scale)
    except ConfigError:  # a definition of one's own (table=<file>) or one since removed
        return []
    if spec.table != table:  # scale=mini of a paper table runs its mini study, in that study's folder
        return []
    return [job.id for job in (*spec.prepare_jobs(scale), *spec.jobs(scale))]


def read(args: argparse.Namespace) -> SweepStatus:
    stale_after = getattr(args, "stale_after", STALE_AFTER_S / 60)
    if stale_after <= 0:
        raise ConfigError(f"--stale-after {stale_after:g} is not a number of minutes; allowed: a number above 0.")
    cells = table_cells(args.dir) if args.dir.is_dir() else []
    return read_sweep(args.dir, args.metric, args.mode, cells, stale_after=stale_after * 60)


def render(status: SweepStatus) -> Any:
    """The table and the summary line as one rich renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("job", "state", "epoch", f"best {status.metric}", "wall", "retries", "slurm", "overrides"):
        table.add_column(column, justify="right" if column in ("epoch", "retries") else "left", no_wrap=True)
    differing = status.differing()
    for job in status.jobs:
        epoch = "" if job.epoch is None and job.max_epochs is None else f"{job.epoch or 0}/{job.max_epochs or '?'}"
        table.add_row(
            job.name,
            Text(job.state, style=STYLE.get(job.state, "")),
            epoch,
            "" if job.best is None else f"{job.best:.4f}",
            duration(job.wall_s),
            str(job.retries) if job.retries else "",
            job.slurm_id or "",
            differing.get(job.name, ""),
        )
    return Group(table, Text(status.summary()))


def duration(seconds: float | None) -> str:
    """`42s`, `3m05s`, `2h07m`."""
    if seconds is None:
        return ""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def watch(
    read_status: Callable[[], SweepStatus],
    show: Callable[[SweepStatus], None],
    interval: float,
    sleep: Callable[[float], None] = time.sleep,
) -> SweepStatus:
    """Read and show the sweep every `interval` seconds until nothing is running or pending; the last status."""
    while True:
        status = read_status()
        show(status)
        if status.finished():
            return status
        sleep(interval)


def console() -> Any:
    """A rich console; a pipe or a file gets a wide one, so the rows are not wrapped at 80 columns."""
    from rich.console import Console

    probe = Console()
    return probe if probe.is_terminal else Console(width=max(probe.width, 200))


def run(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    if args.command == "best":
        status = read(args)
        print(" ".join(shlex.quote(a) for a in best_command(status)))
        return 0
    if args.watch is not None and args.watch <= 0:
        raise ConfigError(f"--watch {args.watch:g} is not an interval; allowed: a number of seconds above 0.")
    out = console()
    if args.watch is None:
        out.print(render(read(args)))
        return 0
    from rich.live import Live

    with Live(console=out, auto_refresh=False) as live:
        watch(lambda: read(args), lambda status: live.update(render(status), refresh=True), args.watch)
    if not out.is_terminal:  # a pipe gets the last table only, which Live leaves without its line end
        out.line()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = run(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"\nvitlab-sweep: error: {exc}\n", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # --watch is stopped with Ctrl+C
        raise SystemExit(130) from None
    raise SystemExit(code)


if __name__ == "__main__":
    main()
