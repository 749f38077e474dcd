"""`vitlab-reproduce paper=<p> table=<t> scale=<smoke|mini|full>`: run a paper table, then aggregate it.

    vitlab-reproduce                                            # list the tables and their scales
    vitlab-reproduce paper=vix table=mini_digits scale=mini     # CPU mini-study -> outputs/tables/vix_mini_digits.*
    vitlab-reproduce paper=eit table=imagenet scale=full hydra/launcher=submitit_slurm   # any Hydra launcher
    vitlab-reproduce paper=ode table=vtab1k scale=full logger=wandb     # runs grouped as ode/vtab1k in W&B
    vitlab-reproduce paper=vix table=mini_digits scale=mini aggregate_only=true   # re-render from results.json
    vitlab-reproduce paper=vix table=mini_digits scale=mini dry_run=true          # print the commands only

Each row x data set x seed is one `vitlab-train` run under `<paths.log_dir>/reproduce/<paper>/<table>/<scale>/`;
seeds of a row run as one Hydra multirun. Runs whose `results.json` says ok are skipped, so re-running the
command resumes a broken sweep; a failed run is recorded (its directory kept as `seed<k>.failed<n>` when it
is retried) and the rest go on. The table is written to `<out_dir>/<paper>_<table>.{md,csv,tex,png}`
(`<out_dir>/smoke/` at scale=smoke); the exit code is 0 only when every cell of the table has a result.

Options: `stream=true` shows the training output instead of writing it to `<group>/launch.log`;
`parallel=N` runs N seeds side by side, each with 1/N of the cores (local launcher; `make reproduce` uses 2);
`out_dir=<dir>` (default `<paths.log_dir>/tables`); `table=<path>.yaml` runs a table definition of your own.
Every other `key=value` is a `vitlab-train` override passed to every run (e.g. `trainer.accelerator=gpu`,
`hydra/launcher=submitit_slurm`), except the keys a table owns (`RESERVED`: seeds, run directories, the sweeper).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import vitlab.cli.resolvers  # noqa: F401  (registers ${vitlab.*} resolvers before configs compose)
from vitlab.compose import compose_config, compose_error
from vitlab.configs import config_dir
from vitlab.errors import ConfigError
from vitlab.extras import check_argv
from vitlab.reproduce import collect, list_tables, load_table, resolve_table, table_dir, write_all
from vitlab.reproduce.jobs import (
    Job,
    archive,
    job_status,
    multirun_commands,
    pending_jobs,
    prepare_command,
    shell_line,
)
from vitlab.reproduce.launch import (
    Interrupted,
    Launch,
    group_jobs,
    record_failure,
    run_side_by_side,
    statuses,
)
from vitlab.reproduce.spec import TableSpec
from vitlab.reproduce.wandb_publish import group_overrides, publish_table, run_overrides, uses_wandb
from vitlab.runs.state import override_key

FLAGS = ("aggregate_only", "dry_run", "stream")
# overrides the table owns: where runs go, the seeds, and the sweep itself
RESERVED = ("hydra.sweep.dir", "hydra.sweep.subdir", "hydra.run.dir", "seed", "paths.weights_dir",
            "hparams_search", "hydra/sweeper")  # fmt: skip
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass
class Options:
    paper: str | None = None
    table: str | None = None
    scale: str = "mini"
    out_dir: str | None = None
    aggregate_only: bool = False
    dry_run: bool = False
    stream: bool = False
    parallel: int = 1  # runs side by side on this machine (each seed its own launch when > 1)
    extra: list[str] = field(default_factory=list)  # vitlab-train overrides for every run


def parse_args(argv: list[str]) -> Options:
    """`key=value` tokens: this command's own keys, and `vitlab-train` overrides passed through."""
    opts = Options()
    for token in argv:
        key, sep, value = token.partition("=")
        if not sep:
            raise ConfigError(f"{token!r} is not key=value; usage: vitlab-reproduce paper=<p> table=<t> scale=<s>.")
        if key in ("paper", "table", "scale", "out_dir"):
            setattr(opts, key, value)
        elif key == "parallel":
            opts.parallel = positive_int(key, value)
        elif key in FLAGS:
            if value.lower() not in TRUE + FALSE:
                raise ConfigError(f"{key}={value!r} is not a boolean; allowed: true, false.")
            setattr(opts, key, value.lower() in TRUE)
        elif key.lstrip("+~") in RESERVED:
            raise ConfigError(
                f"{key} cannot be overridden here: a table sets its own seeds, run directories and sweep "
                f"({', '.join(RESERVED)}); change the table definition, or choose paths.log_dir= and a launcher."
            )
        else:
            opts.extra.append(token)
    if opts.parallel > 1 and opts.stream:
        raise ConfigError(
            f"stream=true shows one run's output on the terminal, but parallel={opts.parallel} runs several at "
            "once; drop one of them (with parallel, each run's output is in its launch.seed<k>.log)."
        )
    if opts.table is None or (opts.paper is None and not is_file(opts.table)):
        raise ConfigError("paper= and table= are required; run `vitlab-reproduce` alone to list the tables.")
    return opts


def positive_int(key: str, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(
            f"{key}={value!r} must be a whole number of runs to keep going side by side, at least 1 (e.g. "
            f"{key}=2 on a 2-core machine: each run then gets one core)."
        )
    return int(value)


def is_file(table: str) -> bool:
    return table.endswith((".yaml", ".yml"))


def resolve(opts: Options) -> TableSpec:
    """The table to run: a definition under configs/paper/, or `table=<dir>/<paper>/<table>.yaml` of your own
    (the file's folder and name must match its `paper:` and `table:`)."""
    if opts.table is not None and is_file(opts.table):
        spec = load_table(opts.table)
        spec.scale(opts.scale)
        return spec
    return resolve_table(config_dir(), str(opts.paper), str(opts.table), opts.scale)


def output_stem(spec: TableSpec, opts: Options, log_dir: Path) -> tuple[Path, str]:
    out = Path(opts.out_dir) if opts.out_dir else log_dir / "tables"
    return (out / "smoke" if opts.scale == "smoke" else out), f"{spec.paper}_{spec.table}"


def run_prepare(spec: TableSpec, opts: Options, extra: list[str], td: Path) -> str | None:
    """Run the table's prepare steps (e.g. pre-training) that have not produced their file yet; the error
    of the first that fails (then no row can run), else None."""
    for job in spec.prepare_jobs(opts.scale, extra):
        if job_status(job, td) == "ok":
            print(f"prepare {job.row}: {job.produces} exists, skipped")
            continue
        launch = Launch(prepare_command(job, td), job.run_dir(td).parent / f"{job.row}.launch.log")
        if opts.dry_run:
            print(shell_line(launch.args))
            continue
        archive(job, td)
        print(f"prepare {job.row} ...", end=" ", flush=True)
        _, seconds = launch.run(opts.stream)
        if job_status(job, td) != "ok":
            print(f"failed after {seconds:.0f} s (log: {launch.log}); the rows need it, so none is launched.")
            return f"prepare step {job.row} failed to produce {job.produces} (log: {launch.log})"
        print(f"done in {seconds:.0f} s")
    return None


def run_rows(spec: TableSpec, opts: Options, extra: list[str], td: Path, wandb: bool) -> None:
    """Launch every unfinished seed group as one multirun, checking first that its overrides compose; with
    `parallel=N`, every seed as its own launch, N side by side (so the workers stay busy to the end)."""
    jobs = spec.jobs(opts.scale, extra)
    todo, done = pending_jobs(jobs, td)
    counts = statuses(jobs, td)
    notes = "".join(
        f", {counts[k]} {label}"
        for k, label in (("unfinished", "continue in place"), ("stale", "stale"), ("running", "running elsewhere"))
        if counts[k]
    )
    side = f", {opts.parallel} side by side" if opts.parallel > 1 else ""
    print(f"{spec.key} at scale={opts.scale}: {len(jobs)} runs, {len(done)} already finished (skipped), "
          f"{len(todo)} to run{notes}{side} in {td}")  # fmt: skip
    threads = threads_per_launch(opts)
    units: list[tuple[str, list[Job], Launch]] = []
    for group, members in group_jobs(todo).items():
        wandb_args = group_overrides(members[0].row, group) if wandb else []
        for job in [] if opts.dry_run else members:  # a dry run moves nothing
            moved = archive(job, td)
            if moved is not None and moved.name.split(".")[-1].startswith("stale"):
                print(f"{job.id}: made with other overrides than the table's row; kept as {moved.name}, re-run")
        error = None if opts.dry_run else compose_error("train", [*members[0].overrides, *wandb_args])
        if error is not None:
            for job in members:
                record_failure(job, td, error)
            print(f"{group}: failed: {error}")
            continue
        parts = [[job] for job in members] if opts.parallel > 1 else [members]
        for part in parts:
            (command,) = multirun_commands(part, td)  # a group differs only in its seed: one multirun
            log = "launch.log" if opts.parallel == 1 else f"launch.seed{part[0].seed}.log"
            runs = tuple(job.run_dir(td) for job in part)  # a job killed mid-attempt is retried (docs/runs.md#retries)
            units.append((group, part, Launch(command + wandb_args, td / group / log, threads, runs)))
    if opts.dry_run:
        for *_, launch in units:
            print(shell_line(launch.args))
        return

    def started(index: int) -> None:
        group, members, _ = units[index]
        seeds = ",".join(str(j.seed) for j in members)
        print(f"[{index + 1}/{len(units)}] {group}  seed{'s' * (len(members) > 1)} {seeds} started", flush=True)

    def finished(index: int, code: int, seconds: float) -> None:
        group, members, launch = units[index]
        counts = statuses(members, td)
        missing = len(members) - counts["ok"]
        failed = f", {missing} not finished (log: {launch.log})" if missing else ""
        seeds = ",".join(str(j.seed) for j in members)
        print(f"[{index + 1}/{len(units)}] {group}  seed{'s' * (len(members) > 1)} {seeds}: ok {counts['ok']}/"
              f"{len(members)}{failed} · {seconds:.0f} s", flush=True)  # fmt: skip

    run_side_by_side([launch for *_, launch in units], opts.parallel, opts.stream, started, finished)


def threads_per_launch(opts: Options) -> int | None:
    """With `parallel=N` on the local launcher, each run gets an equal share of this machine's cores (unless
    OMP_NUM_THREADS is set already): N processes of 1 thread beat 1 process of N threads on small models."""
    if opts.parallel == 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    if any(override_key(o) == "hydra/launcher" for o in opts.extra):
        return None  # the launcher places the runs (a cluster): this machine's cores say nothing
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)  # macOS
    return max(1, cores // opts.parallel)


def fail_rows(spec: TableSpec, opts: Options, extra: list[str], td: Path, error: str) -> None:
    """Rows cannot run without their prepare step: record that as their failure (retried next time)."""
    todo, _ = pending_jobs(spec.jobs(opts.scale, extra), td)
    for job in todo:
        archive(job, td)
        record_failure(job, td, error)


def base_config(spec: TableSpec, opts: Options) -> DictConfig:
    """The config of the table's first run that composes (so `data.root=...` meets the table's data config, not
    the default digits), with the command line's overrides: where the runs go and whether they log to W&B come
    from it. A row that does not compose becomes a failed cell later, not the table's end; only when no run
    composes is the command line itself checked against the default config."""
    jobs = [*spec.prepare_jobs(opts.scale, opts.extra), *spec.jobs(opts.scale, opts.extra)]
    for job in jobs:
        with contextlib.suppress(Exception):  # this row's own error is reported in its cell
            return compose_config("train", list(job.overrides))
    try:
        return compose_config("train", opts.extra)
    except Exception as exc:
        raise ConfigError(f"the overrides {' '.join(opts.extra)!r} do not compose with the train config: "
                          f"{' '.join(str(exc).split())}") from exc  # fmt: skip


def reproduce(opts: Options) -> int:
    spec = resolve(opts)
    base = base_config(spec, opts)
    log_dir = Path(str(OmegaConf.select(base, "paths.log_dir")))  # whatever set it: CLI, local/, root_dir
    td = table_dir(log_dir, spec, opts.scale)
    wandb = uses_wandb(base)
    extra = [*opts.extra, *(run_overrides(spec, opts.scale, opts.extra) if wandb else [])]
    start = time.time()
    if not opts.aggregate_only:
        error = run_prepare(spec, opts, extra, td)
        if error is None:
            run_rows(spec, opts, extra, td, wandb)
        elif not opts.dry_run:
            fail_rows(spec, opts, extra, td, error)
    if opts.dry_run:
        return 0
    results = collect(spec, opts.scale, td)
    out_dir, stem = output_stem(spec, opts, log_dir)
    files = write_all(results, spec, out_dir, stem)
    print("\n" + files["md"].read_text())
    print(f"wrote {out_dir / stem}.{{md,csv,tex,png}} ({time.time() - start:.0f} s)")
    if wandb:
        try:
            run_dir = publish_table(spec, opts.scale, files, base.logger.wandb, td / "_aggregate")
            print(f"W&B: table logged in group {spec.key} ({run_dir})")
        except Exception as exc:  # the table is written; W&B trouble must not turn that into a crash
            print(f"W&B: the table could not be logged ({type(exc).__name__}: {exc}); files are in {out_dir}")
    # summary columns (e.g. VTAB group means) are partial by design at smoke: judge the data set cells
    complete = all(
        c.status == "ok" for r in results if not r.row.needs for c in r.cells.values() if c.kind == "dataset"
    )
    return 0 if complete else 1


def print_tables() -> None:
    print(__doc__)
    print("Tables (configs/paper/<paper>/<table>.yaml):")
    for paper, tables in list_tables(config_dir()).items():
        for table in tables:
            scales = ", ".join(load_table(Path(config_dir()) / "paper" / paper / f"{table}.yaml").scales)
            print(f"  paper={paper} table={table}   scales: {scales}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if not argv or argv[0] in ("-h", "--help", "help", "list"):
            print_tables()
            return
        check_argv(argv)  # hydra/launcher=submitit_slurm without the [slurm] extra
        code = reproduce(parse_args(argv))
    except ConfigError as exc:
        print(f"\nvitlab-reproduce: error: {exc}\n", file=sys.stderr)
        raise SystemExit(2) from None
    except Interrupted as exc:
        print(f"\nvitlab-reproduce: {exc}; run the same command again to continue.\n", file=sys.stderr)
        raise SystemExit(128 + exc.signum) from None
    raise SystemExit(code)


if __name__ == "__main__":
    main()
