"""`callbacks=probe` (vitlab.training.probe_callback): its config keeps the default callbacks, bad values are one
paragraph; in a tiny `vitlab-train` run composed in process its metrics reach the CSV log and results.json and
equal the probe recomputed from the tested checkpoint; a probed run killed and resumed ends bit-identical to a run
without the probe. A paper table may report a probe metric (vitlab.reproduce)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from omegaconf import open_dict

from conftest import CONFIGS, TINY, assert_identical, compose_cfg
from helpers.train_in_process import train_in_process
from vitlab.cli.validate import check_config
from vitlab.errors import ConfigError
from vitlab.training.probe_callback import FeatureProbe


def test_probe_config_adds_the_probe_to_the_default_callbacks() -> None:
    default = compose_cfg([]).callbacks
    probe = compose_cfg(["callbacks=probe"]).callbacks
    assert set(probe) == {*default, "probe"} and all(probe[name] == default[name] for name in default)
    options = yaml.safe_load((CONFIGS / "callbacks" / "probe.yaml").read_text())["probe"]
    import inspect

    taken = set(inspect.signature(FeatureProbe).parameters)
    assert set(options) - {"_target_"} == taken  # every option of the callback is in its config, and only those


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("k", 0, "an integer >= 1"),
        ("temperature", 0, "a number > 0"),
        ("temperature", -0.1, "a number > 0"),
        ("every_n_epochs", 0, "an integer >= 1"),
        ("max_train_samples", 0, "an integer >= 1 (or null)"),
        ("max_eval_samples", 2.5, "an integer >= 1 (or null)"),
        ("linear_c", 0, "a number > 0"),
        ("weighted", "yes", "true or false"),
        ("linear", 1, "true or false"),
    ],
)
def test_a_bad_probe_value_names_the_key_and_what_is_allowed(key: str, value, allowed: str) -> None:
    cfg = compose_cfg(["callbacks=probe", *TINY])
    with open_dict(cfg):
        cfg.callbacks.probe[key] = value
    with pytest.raises(ConfigError) as refused:
        check_config(cfg)
    assert str(refused.value) == f"callbacks.probe.{key}={value!r} is not allowed: it must be {allowed}."
    if key not in ("weighted", "linear"):  # built in Python, without the config check: the same paragraph
        with pytest.raises(ConfigError) as direct:
            FeatureProbe(**{key: value})
        assert str(direct.value) == str(refused.value)


def test_an_unknown_probe_option_is_refused_with_the_closest() -> None:
    cfg = compose_cfg(["callbacks=probe", "+callbacks.probe.temprature=0.1"])
    with pytest.raises(ConfigError, match=r"Did you mean callbacks\.probe\.temperature\?"):
        check_config(cfg)


# two epochs of 3 batches, the validation probe after the second only, the test probe once
RUN = [*TINY, "trainer.max_epochs=2", "+trainer.limit_train_batches=3", "data.batch_size=32"]
PROBE = ["callbacks=probe", "callbacks.probe.every_n_epochs=2", "callbacks.probe.max_train_samples=200",
         "callbacks.probe.k=5"]  # fmt: skip


@pytest.mark.slow  # trains in process (a few seconds)
def test_probe_metrics_reach_the_logs_and_results(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from vitlab.cli.checkpoint import read_checkpoint
    from vitlab.compose import compose_config
    from vitlab.training.components import build_datamodule

    results = train_in_process(tmp_path / "probe", [*RUN, *PROBE])
    assert results["status"] == "ok"
    for name in ("test/probe_knn_acc", "test/probe_linear_acc"):
        assert 0.0 <= results[name] <= 1.0, results

    # the CSV log: validation probes after epoch 2 only (every_n_epochs=2), the test probes once
    rows = list(csv.DictReader((tmp_path / "probe" / "csv" / "metrics.csv").open()))
    val_rows = [r for r in rows if r.get("probe/knn_acc")]
    assert [int(r["epoch"]) for r in val_rows] == [1] and val_rows[0]["probe/linear_acc"]
    for name in ("probe/knn_acc", "probe/linear_acc"):  # the last validation probe is in results.json too
        assert results[name] == pytest.approx(float(val_rows[-1][name]), abs=1e-6), name
    test_rows = [r for r in rows if r.get("test/probe_knn_acc")]
    assert len(test_rows) == 1 and float(test_rows[0]["test/probe_knn_acc"]) == pytest.approx(
        results["test/probe_knn_acc"]
    )

    # the same numbers again from the tested checkpoint, outside Lightning
    cfg = compose_config("train", [*RUN, *PROBE])
    datamodule = build_datamodule(cfg)
    model = instantiate(cfg.model, num_classes=datamodule.num_classes)
    state = read_checkpoint(results["best_ckpt"])["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    probe = FeatureProbe(k=5, max_train_samples=200)
    scores, _ = probe.scores(model, datamodule.train_set, datamodule.test_set, 32, datamodule.num_classes)
    assert scores["knn_acc"] == pytest.approx(results["test/probe_knn_acc"], abs=1e-6)
    assert scores["linear_acc"] == pytest.approx(results["test/probe_linear_acc"], abs=1e-6)


@pytest.mark.slow  # three tiny trainings in processes (about 30 s)
def test_a_probed_run_killed_and_resumed_is_bit_identical_to_an_unprobed_one(tmp_path: Path) -> None:
    """The probe changes nothing in training, and the exact resume (docs/resume.md) holds with it: a run with
    the probe after every epoch, SIGKILLed mid-epoch 2 and resumed in place, ends with the weights, val/acc and
    test numbers of a run without the probe. Drop path is on: a probe that left the model in eval mode would
    change the weights."""
    from test_resume import kill_and_resume, train_into

    base = [*TINY, "trainer.max_epochs=3", "seed=3", "model.backbone.drop_path_rate=0.1"]  # 19 steps per epoch
    reference = tmp_path / "plain" / "run"
    plain = train_into(base, reference)
    assert not any("probe" in k for k in plain)
    run_dir = tmp_path / "probe" / "run"
    kill_and_resume([*base, "callbacks=probe", "callbacks.probe.max_train_samples=300"], run_dir, 30, "step 30")
    probed = json.loads((run_dir / "results.json").read_text())
    assert probed["resumed"] == 1 and 0.0 <= probed["test/probe_knn_acc"] <= 1.0
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    assert sorted({int(r["epoch"]) for r in rows if r.get("probe/knn_acc")}) == [0, 1, 2]  # every epoch probed
    assert_identical(run_dir, reference, "a probed run killed at step 30 and resumed, against one without probe")


TABLE = """
paper: demo
table: probes
title: "Probe accuracy"
source: "a test table"
metric: test/probe_knn_acc
summary: none
datasets:
  - {name: digits, label: Digits, overrides: [data=digits]}
scales:
  mini: {seeds: [0, 1]}
rows:
  - {name: vit, label: ViT, overrides: [callbacks=probe]}
"""


def test_a_paper_table_can_report_a_probe_metric(tmp_path: Path) -> None:
    from vitlab.reproduce import collect, load_table, render_markdown

    path = tmp_path / "configs/paper/demo/probes.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(TABLE)
    spec = load_table(path)
    for job, knn in zip(spec.jobs("mini"), (0.5, 0.7), strict=True):
        result = job.results_path(tmp_path / "runs")
        result.parent.mkdir(parents=True)
        result.write_text(json.dumps({"status": "ok", "val/acc": 0.3, "test/acc": 0.1, "test/probe_knn_acc": knn}))
    (row,) = collect(spec, "mini", tmp_path / "runs")
    assert row.cells["digits"].mean == pytest.approx(60.0) and row.cells["digits"].n_ok == 2  # percent
    assert "test/probe_knn_acc" in render_markdown([row], spec) and "60.00" in render_markdown([row], spec)


def test_under_fsdp_with_several_processes_the_probe_is_refused_in_one_paragraph() -> None:
    from types import SimpleNamespace

    from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy

    probe = FeatureProbe()
    with pytest.raises(ConfigError, match=r"^callbacks=probe cannot run under FSDPStrategy with 2 processes") as e:
        probe.setup(SimpleNamespace(strategy=FSDPStrategy(), world_size=2), None, "fit")
    assert "\n" not in str(e.value)
    probe.setup(SimpleNamespace(strategy=DDPStrategy(), world_size=2), None, "fit")  # DDP: every weight whole
    probe.setup(SimpleNamespace(strategy=FSDPStrategy(), world_size=1), None, "fit")  # one process: unsharded
