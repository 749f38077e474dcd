"""Paper tables (vitlab.reproduce): every definition loads and its jobs compose; job expansion, resuming,
aggregation (mean ± std, paper differences, VTAB-1k means against docs/papers/ode.md), rendering, and errors.

Nothing here trains. Composition is Hydra's real `compose` of the train config; smoke-scale jobs are also
instantiated (data module constructor, model + one forward pass), since `scale=smoke` must actually run.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from conftest import CONFIGS
from vitlab.data.vtab_tasks import REFERENCE_ROWS, TASKS, vtab_means
from vitlab.errors import ConfigError
from vitlab.reproduce import (
    Job,
    archive,
    collect,
    find_table,
    list_tables,
    load_table,
    multirun_commands,
    pending_jobs,
    render_csv,
    render_latex,
    render_markdown,
    resolve_table,
    write_all,
)

TABLES = [f"{paper}/{table}" for paper, tables in list_tables(CONFIGS).items() for table in tables]
EXPECTED = {"vix/cifar10", "vix/mini_digits", "eit/small_data", "eit/imagenet", "eit/mini_digits", "ode/vtab1k",
            "ode/mini_digits_transfer"}  # fmt: skip


def spec_of(key: str):
    return load_table(find_table(CONFIGS, *key.split("/")))


def compose_many(overrides: list[list[str]]) -> list:
    """Compose several override lists in one Hydra context (initialising it is the slow part)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return [compose("train", overrides=o, return_hydra_config=True) for o in overrides]


def _is_group(override: str) -> bool:
    """`experiment=x`, `model/peft=lora`: a config group selection (not a value, not a deletion)."""
    return not override.startswith(("~", "+")) and "." not in override.split("=")[0]


def representative(spec, scale: str) -> list[Job]:
    """The jobs whose composition can fail differently (first seed and grid point of each).

    smoke: every row and data set (they are also built). full: the first row with every data set chosen by
    a config group (`data.task=<t>` only changes a value), every row-at-data-set pair, and every row with a
    value override or a deletion; a row of group selections only (`experiment=...`, `model=eit_tiny`) is
    already composed at smoke, and the first row proves the full scale's own overrides. Other scales (mini:
    the full rows plus a budget): the first job. Prepare steps at every scale.
    """
    jobs = [j for j in spec.jobs(scale) if j.seed == spec.scales[scale].seeds[0]]
    jobs = [j for j in jobs if not j.grid or j.grid == next(x.grid for x in jobs if x.row == j.row)]
    rows = {r.name: r for r in spec.rows}
    if scale == "smoke":
        keep = jobs
    elif scale == "full":
        first_row, first_ds = jobs[0].row, jobs[0].dataset
        grouped = {d.name for d in spec.datasets if any(_is_group(o) for o in d.overrides)}
        keep = [
            j
            for j in jobs
            if (j.row == first_row and (j.dataset == first_ds or j.dataset in grouped))
            or j.dataset in rows[j.row].at_dataset
            or (j.dataset == first_ds and not all(_is_group(o) for o in rows[j.row].overrides))
        ]
    else:
        keep = jobs[:1]
    return keep + spec.prepare_jobs(scale)


def test_the_issue_tables_exist() -> None:
    assert set(TABLES) == EXPECTED


@pytest.mark.parametrize("key", TABLES)
def test_table_loads_and_expands(key: str) -> None:
    spec = spec_of(key)
    assert (spec.paper, spec.table) == tuple(key.split("/")) and spec.source and spec.rows
    for scale in ("smoke", "mini", "full"):
        run = resolve_table(CONFIGS, spec.paper, spec.table, scale)  # paper tables run their digits table at mini
        assert scale in run.scales and run.table in (spec.table, spec.mini_table) and run.paper == spec.paper
    for scale, sc in spec.scales.items():
        jobs = spec.jobs(scale)
        points = {r.name: math.prod(len(v) for _, v in r.grid) if sc.grid else 1 for r in spec.rows}
        expected = sum(points[r.name] for r in spec.rows if not r.needs) * len(spec.datasets_at(scale)) * len(sc.seeds)
        assert len(jobs) == expected and len({j.id for j in jobs}) == len(jobs)
        assert not {j.row for j in jobs} & {r.name for r in spec.rows if r.needs}
        assert all(f"seed={j.seed}" in j.overrides and j.id.endswith(f"/seed{j.seed}") for j in jobs)
        assert [j.id for j in spec_of(key).jobs(scale)] == [j.id for j in jobs]  # stable across loads


def test_job_counts_of_the_large_tables() -> None:
    assert len(spec_of("ode/vtab1k").jobs("full")) == 11 * 19 * 3
    transfer = spec_of("ode/mini_digits_transfer")
    assert len(transfer.jobs("full")) == 9 * 3 * 3 and len(transfer.jobs("mini")) == 9 * 3  # lr grid at full only
    assert len(spec_of("eit/small_data").jobs("full")) == 2 * 4 * 3  # the ResNet row needs a capability
    job = next(j for j in transfer.jobs("full") if j.row == "full_ft")
    assert job.id == "full_ft/digits59/optim.lr_0.0001/seed0" and job.overrides[-2:] == ("optim.lr=0.0001", "seed=0")


@pytest.fixture
def one_thread():
    """Tiny forward passes on a busy 2-core machine: intra-op threads only add contention (0.3 s -> 5 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("key", TABLES)
def test_jobs_compose_and_smoke_jobs_build(key: str, one_thread) -> None:
    spec = spec_of(key)
    for scale in spec.scales:
        jobs = representative(spec, scale)
        for job, cfg in zip(jobs, compose_many([list(j.overrides) for j in jobs]), strict=True):
            assert cfg.seed == job.seed, job.id
            if scale != "smoke" or job.produces:
                continue
            # tiny=smoke: 16 px and a 2-batch budget whatever the row (a row's own width/depth overrides stay)
            budget = (cfg.trainer.max_epochs, cfg.trainer.limit_train_batches, cfg.trainer.limit_test_batches)
            assert cfg.data.img_size == 16 and budget == (1, 2, 1), f"{job.id}: smoke must stay small"
            assert cfg.model.backbone.embed_dim <= 128 and cfg.model.backbone.depth <= 6, job.id
            instantiate(cfg.data)  # the constructor rejects keys the data module does not take
            model_cfg = cfg.model
            if str(model_cfg.backbone.weights).startswith("file:"):  # the prepare step's weights: not built here
                model_cfg.backbone.weights = "none"
            model = instantiate(model_cfg, num_classes=3)
            with torch.no_grad():
                assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3), job.id


def test_launch_overrides_and_multirun_commands(tmp_path: Path) -> None:
    spec = spec_of("ode/mini_digits_transfer")
    (prepare,) = spec.prepare_jobs("smoke")
    job = spec.jobs("smoke")[0]
    cfg_job, cfg_prepare = compose_many([job.launch_overrides(tmp_path), prepare.launch_overrides(tmp_path)])
    assert cfg_job.hydra.run.dir == str(tmp_path / job.id)
    assert cfg_job.model.backbone.weights == f"file:{tmp_path / prepare.produces}"  # rows load what prepare writes
    assert cfg_prepare.export_weights == str(tmp_path / prepare.produces)
    commands = multirun_commands(spec.jobs("mini"), tmp_path)
    assert len(commands) == 9 and all("seed=0,1,2" in c and "hydra.sweep.subdir=seed${seed}" in c for c in commands)
    assert f"hydra.sweep.dir={tmp_path / 'linear_probe/digits59'}" in commands[0]


def write_result(path: Path, status: str = "ok", **values: float | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"status": status, "error": None, "params/total": 1000, "params/trainable": 100,
              "params/trainable_no_head": 90, "cost/macs_per_image": 2e6, "cost/macs_no_attn_per_image": 1e6,
              "cost/peak_mem_mb": 300.0, "cost/train_img_per_s": 50.0, **values}  # fmt: skip
    path.write_text(json.dumps(record))


def test_pending_jobs_skip_ok_and_rerun_failed_and_missing(tmp_path: Path) -> None:
    spec = spec_of("vix/mini_digits")
    jobs = spec.jobs("mini")
    write_result(jobs[0].results_path(tmp_path), **{"test/acc": 0.9})
    write_result(jobs[1].results_path(tmp_path), "failed", error="boom")
    jobs[2].results_path(tmp_path).parent.mkdir(parents=True)
    jobs[2].results_path(tmp_path).write_text("{not json")  # a half-written file counts as failed
    todo, done = pending_jobs(jobs, tmp_path)
    assert done == [jobs[0]] and todo == jobs[1:]
    moved = archive(jobs[1], tmp_path)
    assert moved == jobs[1].run_dir(tmp_path).with_name("seed1.failed1") and (moved / "results.json").exists()
    assert archive(jobs[0], tmp_path) is None and archive(jobs[5], tmp_path) is None
    (prepare,) = spec_of("ode/mini_digits_transfer").prepare_jobs("mini")
    assert pending_jobs([prepare], tmp_path)[0] == [prepare]
    (tmp_path / prepare.produces).parent.mkdir(parents=True)
    (tmp_path / prepare.produces).write_bytes(b"weights")
    assert pending_jobs([prepare], tmp_path) == ([], [prepare])


DEMO = """
paper: demo
table: t1
title: "Demo: 100% of the_rows"
source: "§9.9 of a made-up paper (made up for the test)"
summary: mean
datasets:
  - {name: a, label: Set A, overrides: [data=digits]}
  - {name: b, label: Set B, overrides: [data=fake]}
scales:
  mini: {seeds: [0, 1, 2]}
rows:
  - {name: good, label: Good_one, overrides: [], paper: {a: 80.0, b: 60.0}, params_paper: 95}
  - {name: flaky, label: Flaky, overrides: [optim.lr=0.1]}
  - name: tuned
    overrides: []
    grid: {optim.lr: [0.1, 0.2]}
  - {name: absent, label: Absent, needs: "a ResNet baseline"}
plot: {x: params/trainable_no_head}
"""


@pytest.fixture
def demo(tmp_path: Path):
    path = tmp_path / "configs/paper/demo/t1.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(DEMO)
    spec, runs = load_table(path), tmp_path / "runs"
    for job in spec.jobs("mini"):
        res = job.results_path(runs)
        if job.row == "good":
            write_result(res, **{"test/acc": (0.80, 0.82, 0.84)[job.seed] - (0.2 if job.dataset == "b" else 0)})
        elif job.row == "flaky" and job.dataset == "a" and job.seed < 2:
            write_result(res, "ok" if job.seed == 0 else "failed", **{"test/acc": 0.5, "error": "CUDA OOM"})
        elif job.row == "flaky" and job.dataset == "b":
            write_result(res, "failed", error="Traceback: boom | pipe")
        elif job.row == "tuned" and job.dataset == "a":  # nothing ran on b
            lr = dict(job.grid)["optim.lr"]
            write_result(res, **{"val/acc": 0.5 if lr == "0.1" else 0.6, "test/acc": 0.9 if lr == "0.1" else 0.7})
    return spec, collect(spec, "mini", runs)


def test_collect_means_paper_differences_and_cell_states(demo) -> None:
    spec, results = demo
    good, flaky, tuned, absent = results
    a = good.cells["a"]
    assert (a.status, a.n_ok, a.paper) == ("ok", 3, 80.0)
    assert a.mean == pytest.approx(82.0) and a.std == pytest.approx(2.0) and a.diff == pytest.approx(2.0)
    assert good.cells["b"].diff == pytest.approx(2.0) and good.cells["mean"].mean == pytest.approx(72.0)
    assert good.cells["mean"].std == pytest.approx(2.0)  # per-seed means 70, 72, 74
    assert good.cost["params/trainable_no_head"] == 90 and good.cost["cost/peak_mem_mb"] == 300.0
    fa, fb = flaky.cells["a"], flaky.cells["b"]
    assert (fa.status, fa.mean, fa.std, fa.n_ok, fa.n_failed, fa.error) == ("partial", 50.0, None, 1, 1, "CUDA OOM")
    assert (fb.status, fb.mean, fb.n_failed) == ("failed", None, 3) and "boom" in fb.error
    assert flaky.cells["mean"].status == "partial" and flaky.cells["mean"].mean == pytest.approx(50.0)
    t = tuned.cells["a"]  # lr 0.2 wins on val/acc (0.6 > 0.5), so its test/acc is reported, not the better 0.9
    assert t.selected == "optim.lr=0.2" and t.mean == pytest.approx(70.0) and t.n_expected == 3
    assert {c.status for c in absent.cells.values()} == {"not_implemented"} and absent.cost["params/total"] is None
    empty = collect(spec, "mini", Path(spec.path).parent / "nothing")
    assert {c.status for r in empty[:3] for c in r.cells.values()} == {"missing"}
    assert empty[0].cells["a"].paper == 80.0 and empty[0].cells["a"].diff is None  # paper shown, nothing faked


def test_a_table_reports_a_probe_metric_chosen_on_the_validation_probe(tmp_path: Path) -> None:
    """`metric:` and `select_metric:` may name any number of results.json, e.g. the feature probes of
    `callbacks=probe` (docs/probes.md): the grid point is chosen on the validation probe, its test probe shown."""
    path = tmp_path / "configs/paper/demo/t1.yaml"
    path.parent.mkdir(parents=True)
    text = DEMO.replace("summary: mean", "summary: mean\nmetric: test/probe_knn_acc\nselect_metric: probe/knn_acc")
    path.write_text(text)
    spec, runs = load_table(path), tmp_path / "runs"
    for job in spec.jobs("mini"):
        if job.row == "tuned":
            better = dict(job.grid)["optim.lr"] == "0.2"
            values = {"probe/knn_acc": 0.6 if better else 0.5, "test/probe_knn_acc": 0.7 if better else 0.9}
            write_result(job.results_path(runs), **values, **{"test/acc": 0.1, "val/acc": 0.9 - 0.5 * better})
    tuned = next(r for r in collect(spec, "mini", runs) if r.name == "tuned")
    cell = tuned.cells["a"]
    assert (cell.selected, cell.mean, cell.n_ok) == ("optim.lr=0.2", pytest.approx(70.0), 3)


def test_renderers_show_paper_failed_missing_and_not_implemented(demo, tmp_path: Path) -> None:
    spec, results = demo
    md = render_markdown(results, spec)
    assert "| paper | Δ |" in md and "82.00 ± 2.00" in md and "+2.00" in md and "50.00 (1/3, 1 failed)" in md
    assert "| failed |" in md and "not implemented: a ResNet baseline" in md and "optim.lr=0.2" in md
    tuned_line = next(line for line in md.splitlines() if line.startswith("| tuned |"))
    assert tuned_line.split(" | ")[4] == "–"  # Method | Set A | paper | Δ | Set B: nothing ran
    assert "## Failures" in md and "- Flaky / b: 3 failed: Traceback: boom | pipe" in md
    rows = list(csv.DictReader(io.StringIO(render_csv(results, spec))))
    assert len(rows) == 4 * 3 and {r["status"] for r in rows} == {"ok", "partial", "failed", "missing",
                                                                   "not_implemented"}  # fmt: skip
    good_a = next(r for r in rows if r["row"] == "good" and r["column"] == "a")
    assert float(good_a["mean"]) == pytest.approx(82.0) and float(good_a["paper_value"]) == 80.0
    tex = render_latex(results, spec)
    for needle in ("\\toprule", "\\midrule", "\\bottomrule", "100\\% of the\\_rows", "Good\\_one", "$\\pm$", "\\S{}"):
        assert needle in tex, needle
    assert "Good_one" not in tex and "100%" not in tex
    paths = write_all(results, spec, tmp_path / "tables")
    assert {p.name for p in paths.values()} == {f"demo_t1.{e}" for e in ("md", "csv", "tex", "png")}
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_vtab_means_match_the_reference_numbers(tmp_path: Path) -> None:
    spec = spec_of("ode/vtab1k")
    rows = {r.name: r for r in collect(spec, "full", tmp_path)}
    ssf = rows["ssf"].cells  # docs/papers/ode.md: SSF 75.69 group mean, 73.10 flat mean, 0.21M parameters
    assert ssf["group_mean"].paper == pytest.approx(75.69, abs=0.005)
    assert ssf["flat_mean"].paper == pytest.approx(73.10, abs=0.005)
    assert ssf["natural"].paper == pytest.approx(81.57, abs=0.005) and rows["ssf"].row.params_paper == pytest.approx(
        0.21e6
    )
    assert rows["full_ft"].cells["group_mean"].paper == pytest.approx(68.97, abs=0.005)
    assert rows["bitfit"].cells["group_mean"].paper == 65.22 and rows["bitfit"].cells["cifar"].paper is None
    assert rows["ode_step_scalar"].cells["group_mean"].paper is None
    # our runs at exactly the reference numbers reproduce the reference means, with a zero difference
    ref = REFERENCE_ROWS["ssf"].by_task()
    for job in spec.jobs("full"):
        if job.row == "ssf":
            write_result(job.results_path(tmp_path), **{"test/acc": ref[job.dataset] / 100 + (job.seed - 43) * 1e-3})
        elif job.row == "lora" and job.dataset in ("cifar", "eurosat") and job.seed == 42:
            write_result(job.results_path(tmp_path), **{"test/acc": 0.5})
    rows = {r.name: r for r in collect(spec, "full", tmp_path)}
    group = rows["ssf"].cells["group_mean"]
    assert group.status == "ok" and group.mean == pytest.approx(75.69, abs=0.005) and abs(group.diff) < 0.005
    assert group.std == pytest.approx(0.1) and rows["ssf"].cells["flat_mean"].mean == pytest.approx(73.10, abs=0.005)
    lora = rows["lora"].cells  # 2 of 19 tasks: the reference is averaged over the same two tasks
    expected = vtab_means({t: REFERENCE_ROWS["lora"].by_task()[t] for t in ("cifar", "eurosat")}, partial=True)
    assert lora["flat_mean"].status == "partial" and lora["flat_mean"].paper_subset
    assert lora["flat_mean"].paper == pytest.approx(expected["flat_mean"]) and lora["flat_mean"].mean == 50.0
    assert lora["structured"].mean is None and lora["group_mean"].mean is None
    md = render_markdown(list(rows.values()), spec)
    assert "## Per task" in md and "| reference | Δ |" in md and "SSF (reference)" in md and len(TASKS) == 19


def test_unknown_paper_table_and_scale_name_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"paper='nope'.*allowed: eit, ode, vix"):
        find_table(CONFIGS, "nope", "cifar10")
    with pytest.raises(ConfigError, match=r"table='imagenet' .* paper=vix; allowed: cifar10, mini_digits"):
        find_table(CONFIGS, "vix", "imagenet")
    with pytest.raises(ConfigError, match=r"scale='huge'.*allowed: smoke, mini, full"):
        resolve_table(CONFIGS, "vix", "cifar10", "huge")
    with pytest.raises(ConfigError, match=r"scale=mini: .*vix/cifar10.*table=mini_digits"):
        spec_of("vix/cifar10").jobs("mini")
    with pytest.raises(ConfigError, match=r"scale=mini: .*ode/vtab1k.*table=mini_digits_transfer"):
        spec_of("ode/vtab1k").scale("mini")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace("overrides: [optim.lr=0.1]", "overides: [optim.lr=0.1]"),
         r"rows\[1\]\.overides is not a known key; allowed here: name, label, overrides"),
        (lambda s: s + "units: permille\n", r"units must be one of percent, fraction; got 'permille'"),
        (lambda s: s.replace("paper: {a: 80.0", "paper: {c: 80.0"), r"rows\[0\]\.paper\.c .* allowed here: a, b, mean"),
        (lambda s: s.replace("paper: {a: 80.0", "paper: {a: high"), r"rows\[0\]\.paper\.a must be a number"),
        (lambda s: s.replace("seeds: [0, 1, 2]", "seeds: 3"), r"scales\.mini\.seeds must be a non-empty list"),
        (lambda s: s.replace("mini: {", "medium: {"), r"scales\.medium is not a known key; allowed here: smoke"),
        (lambda s: s + "metric: val/acc\n", r"select_metric must differ from metric"),
        (lambda s: s.replace("x: params/trainable_no_head", "x: accuracy"), r"plot\.x must be one of params/"),
        (lambda s: s.replace("table: t1", "table: t2"), r"the file says demo/t1"),
        (lambda s: s.replace("name: flaky", "name: Flaky Row"), r"rows\[1\]\.name must be a lower-case name"),
        (lambda s: s.replace("summary: mean", "summary: median"), r"summary must be one of none, mean, vtab"),
        (lambda s: s.replace("rows:", "rows: [\n"), r"cannot read the table definition"),
    ],
)  # fmt: skip
def test_malformed_tables_name_the_key(tmp_path: Path, edit, message: str) -> None:
    path = tmp_path / "demo/t1.yaml"
    path.parent.mkdir()
    path.write_text(edit(DEMO))
    with pytest.raises(ConfigError, match=message):
        load_table(path)


def test_a_finished_row_is_not_stale_after_hydra_rewrote_its_overrides() -> None:
    """Hydra's sweeper records `optim.lr=1.0e-2` as `optim.lr=0.01`, `false` as `False`, `~model/stem` as
    `~model/stem=null`: every job of every table must still recognise its own finished run."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vitlab.reproduce import list_tables

    parser = OverridesParser.create()
    checked = 0
    for paper, tables in list_tables(CONFIGS).items():
        for table in tables:
            spec = spec_of(f"{paper}/{table}")
            for scale in spec.scales:
                for job in spec.jobs(scale) + spec.prepare_jobs(scale):
                    ((recorded,),) = BasicSweeper.split_arguments(parser.parse_overrides(list(job.overrides)), None)
                    assert not job.is_stale([*recorded, "paths.weights_dir=/x"]), (job.id, recorded)
                    checked += 1
    assert checked > 100
    job = spec_of("vix/mini_digits").jobs("mini")[0]
    assert job.is_stale([o for o in job.overrides if not o.startswith("seed=")] + ["seed=99"])
