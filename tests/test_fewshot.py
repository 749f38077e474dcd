"""n-shot linear evaluation (vitlab.analysis.fewshot, `vitlab-eval probe=fewshot`): the draws are balanced,
distinct, reproducible and independent of what else is asked; the evaluation of a tiny checkpoint writes the
mean ± std keys, which equal scikit-learn's logistic regression on the same draws (within 0.02: float32 and
float64 fits may disagree on a few borderline test images); bad values are one paragraph."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from conftest import TINY, compose_cfg
from helpers.train_in_process import train_in_process
from vitlab.analysis.fewshot import draw_shots, fewshot_draws, summarise
from vitlab.cli.eval_probe import probe_options, run_probe
from vitlab.cli.validate import check_config
from vitlab.errors import ConfigError

LABELS = torch.arange(4).repeat_interleave(torch.tensor([30, 12, 25, 9]))  # 4 classes of unequal size


def test_draws_are_balanced_distinct_and_reproducible() -> None:
    draws = fewshot_draws(LABELS, [1, 5], draws=6, num_classes=4, seed=0)
    for n, drawn in draws.items():
        assert len(drawn) == 6
        for indices in drawn:
            assert torch.equal(torch.bincount(LABELS[indices], minlength=4), torch.full((4,), n))  # n of each class
            assert len(indices.unique()) == len(indices) and torch.equal(indices, indices.sort().values)
        assert len({tuple(d.tolist()) for d in drawn}) == 6  # no two draws alike
    again = fewshot_draws(LABELS, [1, 5], draws=6, num_classes=4, seed=0)
    assert all(torch.equal(a, b) for n in draws for a, b in zip(draws[n], again[n], strict=True))
    other = fewshot_draws(LABELS, [5], draws=6, num_classes=4, seed=1)[5]
    assert not any(torch.equal(a, b) for a, b in zip(draws[5], other, strict=True))
    # a draw depends on (seed, n, draw) alone: not on the other shots or the number of draws
    assert torch.equal(fewshot_draws(LABELS, [5], draws=3, num_classes=4, seed=0)[5][2], draws[5][2])
    assert torch.equal(draw_shots(LABELS, 5, 4, seed=0, draw=4), draws[5][4])


def test_a_class_smaller_than_the_shots_is_refused() -> None:
    with pytest.raises(ValueError, match="smallest class has 9"):
        draw_shots(LABELS, 10, 4, seed=0, draw=0)


def test_summary_is_the_mean_and_sample_std_over_draws() -> None:
    values = {1: [0.2, 0.3, 0.7], 5: [0.6]}
    out = summarise(values)
    assert out["fewshot/1shot_acc_mean"] == pytest.approx(np.mean(values[1]))
    assert out["fewshot/1shot_acc_std"] == pytest.approx(np.std(values[1], ddof=1))
    assert out["fewshot/5shot_acc_mean"] == 0.6 and out["fewshot/5shot_acc_std"] == 0.0


def _eval_cfg(*overrides: str):
    return compose_cfg(["probe=fewshot", "ckpt_path=some.ckpt", *overrides], config_name="eval")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("probe.draws=0", "probe.draws=0 is not allowed: it must be an integer >= 1."),
        ("probe.c=0", "probe.c=0 is not allowed: it must be a number > 0."),
        ("probe.seed=-1", "probe.seed=-1 is not allowed: it must be an integer in [0, 4.29497e+09]."),
        ("probe.max_test_samples=0", "probe.max_test_samples=0 is not allowed: it must be an integer >= 1 (or null)."),
        (
            "probe.shots=5",
            "probe.shots=5 is not allowed: it must be a list of at least 1 integers >= 1, each once, e.g. [1,5,10].",
        ),
        (
            "probe.shots=[1,1]",
            "probe.shots=[1, 1] is not allowed: it must be a list of at least 1 integers >= 1, "
            "each once, e.g. [1,5,10].",
        ),
        ("probe.name=linear", "probe='linear' is not an option. Allowed: fewshot."),
        (
            "+probe.shot=[1]",
            "probe.shot is not an option of probe=fewshot. Its options: name, shots, draws, seed, c, "
            "max_test_samples. Did you mean probe.shots?",
        ),
    ],
)
def test_a_bad_fewshot_value_names_the_key_and_what_is_allowed(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        probe_options(_eval_cfg(override))
    assert str(refused.value) == message


def test_the_shipped_fewshot_options_pass_every_check() -> None:
    cfg = _eval_cfg()
    check_config(cfg)
    assert probe_options(cfg) == {"name": "fewshot", "shots": [1, 5, 10], "draws": 5, "seed": 0, "c": 1.0,
                                  "max_test_samples": None}  # fmt: skip
    with pytest.raises(ConfigError, match=r"probe\.shots=\[0\] is not allowed"):
        check_config(_eval_cfg("probe.shots=[0]"))  # the list rule also runs before the checkpoint is read
    with pytest.raises(Exception, match="fewshot"):  # Hydra's own error lists the options of the group
        compose_cfg(["probe=fewshots", "ckpt_path=some.ckpt"], config_name="eval")


def test_more_shots_than_the_smallest_class_has_is_one_paragraph(monkeypatch) -> None:
    from vitlab.cli import eval_probe
    from vitlab.data.digits import DigitsDataModule

    datamodule = DigitsDataModule(img_size=16, train_per_class=3)
    datamodule.setup()
    monkeypatch.setattr(eval_probe, "load_model", lambda cfg: (None, datamodule))  # refused before the model
    cfg = _eval_cfg("probe.shots=[1,4]")
    with pytest.raises(ConfigError) as refused:
        run_probe(cfg, {})
    assert str(refused.value) == (
        "probe.shots=[1, 4] is not allowed with this data: class 0 of the training split has only 3 images; every n "
        "in probe.shots must be at most 3."
    )


@pytest.mark.slow  # trains a tiny model, then evaluates it (in process, seconds)
def test_eval_fewshot_writes_mean_and_std_equal_to_scikit_learn(tmp_path: Path, capsys) -> None:
    from hydra.utils import instantiate
    from sklearn.linear_model import LogisticRegression

    from vitlab.analysis.features import eval_view, extract_features, feature_loader
    from vitlab.analysis.linear_probe import standardise
    from vitlab.cli.checkpoint import read_checkpoint
    from vitlab.cli.eval import evaluate
    from vitlab.cli.runner import run_task
    from vitlab.compose import compose_config
    from vitlab.data.digits import DigitsDataModule

    trained = train_in_process(tmp_path / "train", [*TINY, "+trainer.limit_train_batches=2", "test=false"])
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    assert trained["status"] == "ok" and ckpt.exists()
    cfg = compose_config("eval", ["probe=fewshot", f"ckpt_path={ckpt}", "probe.shots=[1,3]", "probe.draws=3",
                                  "probe.seed=7", "trainer.accelerator=cpu"])  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
    record = run_task(cfg, evaluate)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert record["status"] == "ok" and results["status"] == "ok", results.get("error")
    assert results["fewshot/shots"] == [1, 3] and results["fewshot/draws"] == 3
    mean, std = results["fewshot/3shot_acc_mean"], results["fewshot/3shot_acc_std"]
    assert f"      3   {100 * mean:6.2f} ± {100 * std:5.2f}       3" in capsys.readouterr().out  # the console's table
    metrics = (tmp_path / "eval" / "csv" / "metrics.csv").read_text()
    assert "fewshot/3shot_acc_mean" in metrics and "fewshot/1shot_acc_std" in metrics

    # another data config, with another number of classes than the checkpoint's head: only the backbone is used
    other = compose_config("eval", ["probe=fewshot", f"ckpt_path={ckpt}", "probe.shots=[2]", "probe.draws=2",
                                    "data=digits", "data.img_size=16", "data.classes=[3,5,7]"])  # fmt: skip
    with open_dict(other):
        other.paths.output_dir = str(tmp_path / "eval_other")
    assert run_task(other, evaluate)["status"] == "ok"
    transfer = json.loads((tmp_path / "eval_other" / "results.json").read_text())
    assert 0.0 <= transfer["fewshot/2shot_acc_mean"] <= 1.0 and transfer["fewshot/2shot_acc_std"] >= 0.0

    # the same draws fit by scikit-learn on the checkpoint's features
    model = instantiate(compose_config("train", TINY).model, num_classes=10)
    state = read_checkpoint(str(ckpt))["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    dm = DigitsDataModule(img_size=16)
    dm.setup()
    train_f, train_y = extract_features(model, feature_loader(eval_view(dm.train_set, dm.test_set), 256))
    test_f, test_y = extract_features(model, feature_loader(dm.test_set, 256))
    for n in (1, 3):
        accuracies = []
        for d in range(3):
            rows = draw_shots(train_y, n, 10, seed=7, draw=d)
            x, t = (f.double().numpy() for f in standardise(train_f[rows], test_f))
            sk = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(x, train_y[rows].numpy())
            accuracies.append(float((sk.predict(t) == test_y.numpy()).mean()))
        assert results[f"fewshot/{n}shot_acc_mean"] == pytest.approx(statistics.mean(accuracies), abs=0.02)
        assert results[f"fewshot/{n}shot_acc_std"] == pytest.approx(statistics.stdev(accuracies), abs=0.02)
