"""End-to-end `vitlab-reproduce` at scale=smoke: a small table of our own (one row that trains, one whose
overrides do not compose, one that fails at run time) runs, renders all four files with the paper column,
skips finished runs when re-run, retries failed ones, and groups its runs in W&B (offline)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import TINY, run_cli

pytestmark = pytest.mark.slow  # starts vitlab processes or trains end to end: not in make test-fast

LIMITS = ["++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1"]
SMOKE = [*(o for o in TINY if "enable_progress_bar" not in o), "data.batch_size=32", "data.num_workers=0", *LIMITS]


def write_table(root: Path, rows: list[dict]) -> Path:
    path = root / "demo" / "tiny.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = {
        "paper": "demo",
        "table": "tiny",
        "title": "A two-second table",
        "source": "made up for the test",
        "metric": "test/acc",
        "datasets": [{"name": "digits", "label": "digits (test)", "overrides": []}],
        "scales": {"smoke": {"seeds": [0], "overrides": SMOKE}},
        "rows": rows,
    }
    path.write_text(yaml.safe_dump(table, sort_keys=False))
    return path


ROWS = [
    {"name": "vit", "label": "ViT", "overrides": [], "paper": 90.0},
    {"name": "broken", "label": "Unknown mixer", "overrides": ["model/mixer=no_such_mixer"], "paper": 80.0},
    {"name": "crash", "label": "Unknown optimiser", "overrides": ["optim.opt=no_such_optimizer"]},  # fails in the run
]


@pytest.mark.parametrize("path", ["/tmp/a b/c", "/tmp/it's", "/tmp/é~#x", "/tmp/plain-dir_1.2", "/tmp/x,y=z"])
def test_run_directories_survive_hydra_override_parsing(path: str) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vitlab.reproduce.jobs import Job

    job = Job("row/data/seed0", "row", "data", 0, ("seed=0",))
    parser = OverridesParser.create()
    run_dir = parser.parse_override(job.launch_overrides(path)[1])
    assert run_dir.key_or_group == "hydra.run.dir" and run_dir.value() == f"{path}/row/data/seed0"


def reproduce(table: Path, log_dir: Path, *extra: str, env: dict[str, str] | None = None):
    return run_cli("reproduce", [f"table={table}", "scale=smoke", *extra], log_dir, env=env)


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    table = write_table(root / "tables", ROWS)
    run = reproduce(table, root / "logs")
    return table, root / "logs", run


def cell_rows(log_dir: Path) -> dict[str, dict[str, str]]:
    with open(log_dir / "tables" / "smoke" / "demo_tiny.csv", newline="") as fh:
        return {r["row"]: r for r in csv.DictReader(fh)}


def test_table_runs_end_to_end_and_renders_four_files_with_the_paper_column(first) -> None:
    _, log_dir, run = first
    assert run.returncode == 1, run.stderr[-3000:]  # two rows failed: the table is incomplete, and says so
    files = {ext: log_dir / "tables" / "smoke" / f"demo_tiny.{ext}" for ext in ("md", "csv", "tex", "png")}
    assert all(p.is_file() and p.stat().st_size > 0 for p in files.values()), run.stdout
    md = files["md"].read_text()
    assert "| Method | digits (test) | paper | Δ | Trainable (no head) | Params | MACs/img |" in md, md
    rows = cell_rows(log_dir)
    ok = rows["vit"]
    assert ok["status"] == "ok" and ok["paper_value"] == "90.0"
    result = json.loads(next((log_dir / "reproduce/demo/tiny/smoke/vit").rglob("results.json")).read_text())
    assert float(ok["mean"]) == pytest.approx(100 * result["test/acc"])
    assert float(ok["diff"]) == pytest.approx(100 * result["test/acc"] - 90.0)
    assert float(ok["params/total"]) == result["params/total"]
    assert "\\begin{tabular}" in files["tex"].read_text()
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failing_rows_are_recorded_and_the_table_still_renders(first) -> None:
    _, log_dir, run = first
    rows = cell_rows(log_dir)
    assert rows["broken"]["status"] == "failed" and "no_such_mixer" in rows["broken"]["error"]
    assert rows["crash"]["status"] == "failed" and "no_such_optimizer" in rows["crash"]["error"]
    assert rows["broken"]["paper_value"] == "80.0" and rows["broken"]["mean"] == ""  # never filled in
    md = (log_dir / "tables" / "smoke" / "demo_tiny.md").read_text()
    assert "## Failures" in md and "no_such_mixer" in md
    assert "[1/2] vit/digits  seed 0: ok 1/1" in run.stdout and "broken/digits: failed" in run.stdout


def test_second_run_skips_finished_rows_and_retries_failed_ones(first) -> None:
    table, log_dir, _ = first
    td = log_dir / "reproduce" / "demo" / "tiny" / "smoke"
    finished = td / "vit" / "digits" / "seed0" / "results.json"
    before = finished.stat().st_mtime_ns
    run = reproduce(table, log_dir)
    assert "3 runs, 1 already finished (skipped), 2 to run" in run.stdout, run.stdout
    assert finished.stat().st_mtime_ns == before  # not re-trained
    assert len(list(td.rglob("checkpoints"))) == 1
    assert (td / "crash" / "digits" / "seed0.failed1" / "results.json").is_file()  # the first attempt, kept
    assert json.loads((td / "crash" / "digits" / "seed0" / "results.json").read_text())["status"] == "failed"


def test_aggregate_only_and_dry_run_launch_nothing(first, tmp_path) -> None:
    table, log_dir, _ = first
    run = reproduce(table, log_dir, "aggregate_only=true", "out_dir=" + str(tmp_path))
    assert (tmp_path / "smoke" / "demo_tiny.md").is_file() and "already finished" not in run.stdout
    run = reproduce(table, tmp_path / "fresh", "dry_run=true")
    assert run.returncode == 0 and run.stdout.count("vitlab-train -m ") == 3
    assert "hydra.sweep.dir=" in run.stdout and not (tmp_path / "fresh").exists()
    td = log_dir / "reproduce" / "demo" / "tiny" / "smoke"
    archived = sorted(td.rglob("*.failed*"))
    run = reproduce(table, log_dir, "dry_run=true")  # failed runs exist: a dry run must not move them
    assert run.returncode == 0 and sorted(td.rglob("*.failed*")) == archived


def test_parallel_runs_each_seed_beside_another_with_one_core_each(tmp_path) -> None:
    table = write_table(tmp_path / "tables", ROWS[:1])
    spec = yaml.safe_load(table.read_text())
    spec["scales"]["smoke"]["seeds"] = [0, 1]
    table.write_text(yaml.safe_dump(spec, sort_keys=False))
    run = reproduce(table, tmp_path / "logs", "parallel=2")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 to run, 2 side by side" in run.stdout and run.stdout.count(": ok 1/1") == 2
    td = tmp_path / "logs" / "reproduce" / "demo" / "tiny" / "smoke" / "vit" / "digits"
    for seed in (0, 1):
        assert (td / f"launch.seed{seed}.log").is_file()
        result = json.loads((td / f"seed{seed}" / "results.json").read_text())
        threads = os.environ.get("OMP_NUM_THREADS") or max(1, len(os.sched_getaffinity(0)) // 2)  # make test: 1
        assert result["status"] == "ok" and result["device"].endswith(f"({threads} threads)"), result["device"]


def test_wandb_offline_groups_the_runs_and_logs_the_table(tmp_path) -> None:
    table = write_table(tmp_path / "tables", ROWS[:1])
    run = reproduce(table, tmp_path / "logs", "logger=wandb", env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    td = tmp_path / "logs" / "reproduce" / "demo" / "tiny" / "smoke"
    config = yaml.safe_load((td / "vit" / "digits" / "seed0" / "config_resolved.yaml").read_text())
    assert config["logger"]["wandb"]["group"] == "demo/tiny"
    assert config["logger"]["wandb"]["job_type"] == "vit"
    assert config["logger"]["wandb"]["name"] == "vit/digits/seed0"
    assert config["tags"] == ["reproduce", "demo", "tiny", "smoke"]
    assert list((td / "vit" / "digits" / "seed0" / "wandb").glob("offline-run-*")), "the run was not logged"
    (aggregate,) = (td / "_aggregate" / "wandb").glob("offline-run-*")
    assert list(aggregate.rglob("*.table.json")), "the wandb.Table was not logged"
    assert "W&B: table logged in group demo/tiny" in run.stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["paper=nope", "table=x"], ["paper='nope'", "allowed:", "vix"]),
        (["paper=vix", "table=nope"], ["table='nope'", "mini_digits"]),
        (["paper=vix", "table=mini_digits", "scale=huge"], ["scale='huge'", "smoke, mini, full"]),
        (["paper=vix", "table=mini_digits", "dry_run=maybe"], ["dry_run='maybe'", "true, false"]),
        (["paper=vix", "table=mini_digits", "scale=smoke", "no_such_key=1"], ["no_such_key", "do not compose"]),
        (["paper=vix", "table=mini_digits", "seed=3"], ["seed cannot be overridden", "hydra.sweep.dir"]),
    ],
)
def test_bad_arguments_are_one_paragraph_errors(args, fragments, tmp_path) -> None:
    run = run_cli("reproduce", args, tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    for fragment in fragments:
        assert fragment in run.stderr, run.stderr
    assert not (tmp_path / "reproduce").exists()
