"""`callbacks=probe` (vitlab.training.probe_callback): its config keeps the default callbacks, bad values are one
paragraph, and in a tiny `vitlab-train` run composed in process its metrics reach the CSV log and results.json,
equal the probe recomputed from the tested checkpoint, and leave the trained weights bit-identical to a run
without it. A paper table may report a probe metric (vitlab.reproduce)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import open_dict

from conftest import CONFIGS, TINY, compose_cfg
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


def _train(run_dir: Path, args: list[str]) -> dict:
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


# two epochs of 3 batches; drop path on, so a probe that left the model in eval mode would change the weights
RUN = [*TINY, "trainer.max_epochs=2", "+trainer.limit_train_batches=3", "data.batch_size=32",
       "model.backbone.drop_path_rate=0.1", "scheduler.warmup_epochs=0"]  # fmt: skip
PROBE = ["callbacks=probe", "callbacks.probe.every_n_epochs=2", "callbacks.probe.max_train_samples=200",
         "callbacks.probe.k=5"]  # fmt: skip


@pytest.mark.slow  # trains twice in process (a few seconds each)
def test_probe_metrics_reach_the_logs_and_results_and_training_is_unchanged(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from vitlab.cli.checkpoint import read_checkpoint
    from vitlab.compose import compose_config
    from vitlab.training.components import build_datamodule

    with_probe = _train(tmp_path / "probe", [*RUN, *PROBE])
    without = _train(tmp_path / "plain", RUN)
    assert with_probe["status"] == "ok" and without["status"] == "ok"
    for name in ("test/probe_knn_acc", "test/probe_linear_acc"):
        assert 0.0 <= with_probe[name] <= 1.0, with_probe
    assert not any("probe" in k for k in without)

    # the CSV log: validation probes after epoch 2 only (every_n_epochs=2), the test probes once
    rows = list(csv.DictReader((tmp_path / "probe" / "csv" / "metrics.csv").open()))
    val_rows = [r for r in rows if r.get("probe/knn_acc")]
    assert [int(r["epoch"]) for r in val_rows] == [1] and val_rows[0]["probe/linear_acc"]
    test_rows = [r for r in rows if r.get("test/probe_knn_acc")]
    assert len(test_rows) == 1 and float(test_rows[0]["test/probe_knn_acc"]) == pytest.approx(
        with_probe["test/probe_knn_acc"]
    )

    # the same numbers again from the tested checkpoint, outside Lightning
    cfg = compose_config("train", [*RUN, *PROBE])
    datamodule = build_datamodule(cfg)
    model = instantiate(cfg.model, num_classes=datamodule.num_classes)
    state = read_checkpoint(with_probe["best_ckpt"])["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    probe = FeatureProbe(k=5, max_train_samples=200)
    scores, _ = probe.scores(model, datamodule.train_set, datamodule.test_set, 32, datamodule.num_classes)
    assert scores["knn_acc"] == pytest.approx(with_probe["test/probe_knn_acc"], abs=1e-6)
    assert scores["linear_acc"] == pytest.approx(with_probe["test/probe_linear_acc"], abs=1e-6)

    # the probe changed nothing in training: the same weights to the bit, the same test accuracy
    weights = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for d in
               (tmp_path / "probe", tmp_path / "plain")]  # fmt: skip
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert with_probe["test/acc"] == without["test/acc"] and with_probe["val/acc"] == without["val/acc"]


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
