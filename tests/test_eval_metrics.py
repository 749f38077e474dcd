"""What the test phase records (docs/evaluation.md): each number against scikit-learn or a formula, the test stage
of `ClassificationModule` on a hand-made model, metrics/test.json and the two figures, with and without matplotlib."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict
from sklearn import metrics as sk
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers.train_in_process import train_in_process
from vitlab.analysis.classification_metrics import ECE_BINS, classification_report, reliability
from vitlab.errors import ConfigError
from vitlab.training.module import ClassificationModule, accuracy_metrics
from vitlab.training.test_report import write_test_report

TOL = 1e-9  # everything is float64 on both sides: agreement to rounding


def random_case(n: int = 300, k: int = 12, seed: int = 0, absent: int | None = None) -> tuple[torch.Tensor, ...]:
    """Logits that are right more often than chance (so every metric is away from its trivial value)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    if absent is not None:
        labels[labels == absent] = (absent + 1) % k  # a class with no test sample
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    logits[torch.arange(n), labels] += 1.5
    return logits, labels


def softmax(logits: torch.Tensor) -> np.ndarray:
    z = logits.numpy()
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_each_number_equals_scikit_learn() -> None:
    logits, labels = random_case(absent=3)
    k = logits.shape[1]
    y, p = labels.numpy(), softmax(logits)
    report = classification_report(logits, labels)
    scalars = report["scalars"]
    assert scalars["acc"] == pytest.approx(sk.accuracy_score(y, p.argmax(1)), abs=TOL)
    top5 = sk.top_k_accuracy_score(y, p, k=5, labels=range(k))
    assert scalars["acc_top5"] == pytest.approx(top5, abs=TOL) and scalars["acc_top5"] > scalars["acc"]
    assert report["confusion_matrix"] == sk.confusion_matrix(y, p.argmax(1), labels=range(k)).tolist()
    recall = sk.recall_score(y, p.argmax(1), labels=range(k), average=None, zero_division=np.nan)
    got = np.array([np.nan if v is None else v for v in report["per_class_accuracy"]])
    np.testing.assert_allclose(got, recall, atol=TOL, equal_nan=True)
    assert report["per_class_accuracy"][3] is None  # no sample of class 3: no accuracy, not 0
    with pytest.warns(UserWarning):  # class 3 is predicted but never true: scikit-learn leaves it out, as we do
        balanced = sk.balanced_accuracy_score(y, p.argmax(1))
    assert scalars["acc_per_class_mean"] == pytest.approx(balanced, abs=TOL)
    assert scalars["nll"] == pytest.approx(sk.log_loss(y, p, labels=range(k)), abs=1e-12)
    assert report["class_support"] == np.bincount(y, minlength=k).tolist()


@pytest.mark.parametrize(("k", "has_top5"), [(5, False), (6, True)])
def test_top5_only_where_there_are_more_than_five_classes(k: int, has_top5: bool) -> None:
    logits, labels = random_case(n=50, k=k)
    assert ("acc_top5" in classification_report(logits, labels)["scalars"]) is has_top5
    assert ("acc_top5" in accuracy_metrics(k, "val/")) is has_top5


def test_ece_of_a_small_example_by_hand() -> None:
    """Two classes; confidences 0.9 (right), 0.9 (wrong), 0.62 (right), 0.55 (right). With 15 bins of width 1/15:
    0.9 lies in (13/15, 14/15], 0.62 in (9/15, 10/15], 0.55 in (8/15, 9/15], so
    ECE = 2/4 |0.5 - 0.9| + 1/4 |1 - 0.62| + 1/4 |1 - 0.55| = 0.2 + 0.095 + 0.1125 = 0.4075."""
    confidence = torch.tensor([0.9, 0.9, 0.62, 0.55], dtype=torch.float64)
    logits = torch.stack([confidence.log(), (1 - confidence).log()], dim=1)  # class 0 is predicted everywhere
    labels = torch.tensor([0, 1, 0, 0])
    report = classification_report(logits, labels)
    assert report["scalars"]["ece"] == pytest.approx(0.4075, abs=1e-12)
    filled = {m: row for m, row in enumerate(report["reliability"]) if row["count"]}
    assert sorted(filled) == [8, 9, 13] and [filled[m]["count"] for m in (8, 9, 13)] == [1, 1, 2]
    assert filled[13]["accuracy"] == 0.5 and filled[13]["confidence"] == pytest.approx(0.9, abs=1e-12)
    assert len(report["reliability"]) == ECE_BINS == 15


def test_a_confidence_on_a_bin_edge_falls_in_the_lower_bin() -> None:
    """Bins are right-closed, ((m-1)/M, m/M] as in Guo et al.: two equal logits give confidence 0.5 exactly, which
    with 10 bins belongs to (0.4, 0.5], not (0.5, 0.6]; a confidence of 1 to the last bin."""
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [100.0, 0.0]], dtype=torch.float64)
    rows = reliability(logits, torch.tensor([0, 1, 0]), bins=10)
    assert [r["count"] for r in rows] == [0, 0, 0, 0, 2, 0, 0, 0, 0, 1]
    assert rows[4]["accuracy"] == 0.5 and rows[9]["confidence"] == 1.0


def numpy_ece(logits: torch.Tensor, labels: torch.Tensor, bins: int) -> tuple[float, list[int]]:
    """Guo et al. 2017, written out: bins ((m-1)/M, m/M], ECE = sum n_m/n |acc_m - conf_m|."""
    p = softmax(logits)
    conf, correct = p.max(1), p.argmax(1) == labels.numpy()
    ece, counts = 0.0, []
    for m in range(bins):
        inside = (conf > m / bins) & (conf <= (m + 1) / bins)
        counts.append(int(inside.sum()))
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return ece, counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_equals_a_direct_numpy_implementation(seed: int) -> None:
    logits, labels = random_case(n=1000, k=10, seed=seed)
    ece, counts = numpy_ece(logits, labels, ECE_BINS)
    report = classification_report(logits, labels)
    assert report["scalars"]["ece"] == pytest.approx(ece, abs=1e-12) and ece > 0.01
    assert [row["count"] for row in report["reliability"]] == counts and sum(counts) == 1000
    assert [row["count"] for row in reliability(logits, labels, bins=10)] == numpy_ece(logits, labels, 10)[1]


# --- the test stage of ClassificationModule --------------------------------------------------------------------


class Linear(nn.Module):
    """A hand-made classifier: logits = W vec(x), nothing learned."""

    def __init__(self, k: int, shape: tuple[int, ...], seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(k, math.prod(shape), generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


def run_test_stage(k: int, tta: str = "none", n: int = 70) -> tuple[ClassificationModule, dict, torch.Tensor, ...]:
    torch.manual_seed(0)
    x, y = torch.randn(n, 3, 4, 4), torch.randint(0, k, (n,))
    module = ClassificationModule(Linear(k, (3, 4, 4)), k, optim={"opt": "sgd", "lr": 0.1})
    module.tta = tta
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    (logged,) = trainer.test(module, dataloaders=DataLoader(TensorDataset(x, y), batch_size=16), verbose=False)
    return module, logged, x, y


def test_the_test_stage_reports_the_whole_test_set() -> None:
    module, logged, x, y = run_test_stage(k=7)
    with torch.no_grad():
        expected = classification_report(module.model(x), y)
    assert module.test_report["samples"] == 70  # all five batches, the last one short
    for name, value in expected["scalars"].items():
        assert logged[f"test/{name}"] == pytest.approx(value, abs=1e-6), name  # logged as float32
    assert module.test_report["confusion_matrix"] == expected["confusion_matrix"]
    assert logged["test/loss"] == pytest.approx(expected["scalars"]["nll"], abs=1e-5)  # one process: the same mean


def test_the_test_stage_has_no_top5_with_five_classes() -> None:
    _, logged, _, _ = run_test_stage(k=5)
    assert "test/acc_top5" not in logged and "test/acc" in logged


@pytest.mark.parametrize("k", [5, 6])
def test_a_monitor_on_top5_is_refused_before_training_where_no_top5_is_logged(k: int) -> None:
    from pytorch_lightning.callbacks import EarlyStopping

    x, y = torch.randn(8, 3, 4, 4), torch.arange(8) % k
    module = ClassificationModule(Linear(k, (3, 4, 4)), k, optim={"opt": "sgd", "lr": 0.1})
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, max_epochs=1,
                         enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[EarlyStopping(monitor="val/acc_top5", mode="max")])  # fmt: skip
    if k > 5:
        trainer.fit(module, loader, loader)  # logged: the monitor finds it
        assert "val/acc_top5" in trainer.callback_metrics
        return
    with pytest.raises(ConfigError, match=r"^EarlyStopping monitors val/acc_top5, but this data has 5 classes"):
        trainer.fit(module, loader, loader)
    assert trainer.global_step == 0
    swept = ClassificationModule(Linear(k, (3, 4, 4)), k, {"opt": "sgd"}, config={"optimised_metric": "val/acc_top5"})
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, max_epochs=1,
                         enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    with pytest.raises(ConfigError, match=r"^optimised_metric is val/acc_top5, but this data has 5 classes"):
        trainer.fit(swept, loader, loader)


# --- metrics/test.json and the figures ---------------------------------------------------------------------------


def fake_run(k: int = 4, names: list[str] | None = None) -> tuple[SimpleNamespace, SimpleNamespace, SimpleNamespace]:
    logits, labels = random_case(n=200, k=k)
    module = SimpleNamespace(test_report=classification_report(logits, labels), tta="flip")
    trainer = SimpleNamespace(is_global_zero=True, loggers=[])
    return module, trainer, SimpleNamespace(classes=names)


def test_metrics_json_holds_the_report_and_both_figures_decode(tmp_path: Path) -> None:
    from PIL import Image

    module, trainer, data = fake_run(names=["cat", "dog", "eel", "fox"])
    path = write_test_report(module, trainer, data, tmp_path, figures=True)
    saved = json.loads(path.read_text())
    assert path == tmp_path / "metrics" / "test.json"
    assert saved["class_names"] == ["cat", "dog", "eel", "fox"] and saved["tta"] == "flip" and saved["tta_views"] == 2
    assert saved["confusion_matrix"] == module.test_report["confusion_matrix"]
    assert saved["scalars"] == pytest.approx(module.test_report["scalars"], abs=0)
    for name in ("confusion_matrix", "reliability"):
        png = tmp_path / "figures" / f"{name}.png"
        with Image.open(png) as image:
            image.load()  # decodes the whole file
            assert image.width > 200 and image.height > 200
        assert png.stat().st_size < 300_000


def test_many_classes_draw_without_tick_labels(tmp_path: Path) -> None:
    module, trainer, data = fake_run(k=40)
    write_test_report(module, trainer, data, tmp_path, figures=True)
    assert json.loads((tmp_path / "metrics" / "test.json").read_text())["class_names"] == [str(i) for i in range(40)]
    assert (tmp_path / "figures" / "confusion_matrix.png").stat().st_size > 0


def test_both_figures_go_to_the_loggers_as_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`log_images` hands them to every W&B logger (and ignores the others): it gets both PNGs under test/ keys."""
    from vitlab.plots import figures

    sent: list[tuple[object, dict]] = []
    monkeypatch.setattr(figures, "log_images", lambda loggers, images, step=None: sent.append((loggers, images)))
    module, trainer, data = fake_run()
    trainer.loggers = ["a logger"]
    write_test_report(module, trainer, data, tmp_path, figures=True)
    ((loggers, images),) = sent
    assert loggers == ["a logger"]
    assert images == {"test/reliability": tmp_path / "figures" / "reliability.png",
                      "test/confusion_matrix": tmp_path / "figures" / "confusion_matrix.png"}  # fmt: skip


def test_without_matplotlib_the_metrics_are_written_and_one_line_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ModuleNotFoundError
    module, trainer, data = fake_run()
    with caplog.at_level(logging.INFO, logger="vitlab"):
        path = write_test_report(module, trainer, data, tmp_path, figures=True)
    assert json.loads(path.read_text())["samples"] == 200
    assert not (tmp_path / "figures").exists() or not list((tmp_path / "figures").iterdir())
    skipped = [r for r in caplog.records if "figures skipped" in r.getMessage()]
    assert len(skipped) == 1 and "pip install 'vitlab[plots]'" in skipped[0].getMessage()


def test_figures_false_writes_no_png(tmp_path: Path) -> None:
    module, trainer, data = fake_run()
    write_test_report(module, trainer, data, tmp_path, figures=False)
    assert (tmp_path / "metrics" / "test.json").is_file() and not (tmp_path / "figures").exists()


# --- end to end: vitlab-train's test phase and vitlab-eval, in this process -----------------------------------


@pytest.mark.slow  # trains end to end (in-process, a few seconds)
def test_train_then_eval_record_the_report_and_draw_the_figures(tmp_path: Path) -> None:
    from vitlab.cli import eval as eval_cli
    from vitlab.cli.runner import run_task
    from vitlab.compose import compose_config

    run_dir = tmp_path / "train"
    args = ["tiny=smoke", "trainer.limit_test_batches=1.0", "trainer.enable_progress_bar=false"]
    record = train_in_process(run_dir, args)
    assert record["status"] == "ok", record.get("error")
    saved = json.loads((run_dir / "metrics" / "test.json").read_text())
    assert saved["samples"] == 360 and saved["class_names"] == [str(i) for i in range(10)]  # digits' whole test set
    for name in ("acc", "acc_top5", "nll", "ece", "acc_per_class_mean"):
        assert record[f"test/{name}"] == pytest.approx(saved["scalars"][name], abs=1e-6)  # logged as float32
    assert record["eval/tta"] == "none" and sum(map(sum, saved["confusion_matrix"])) == 360
    assert {p.name for p in (run_dir / "figures").iterdir()} >= {"confusion_matrix.png", "reliability.png"}

    eval_dir = tmp_path / "eval"
    cfg = compose_config("eval", [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "eval.tta=flip",
                                  "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"])  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(eval_dir)
    record = run_task(cfg, eval_cli.evaluate)
    assert record["status"] == "ok", record.get("error")
    flipped = json.loads((eval_dir / "metrics" / "test.json").read_text())
    assert record["eval/tta"] == "flip" and flipped["tta_views"] == 2 and flipped["samples"] == 360
    assert record["test/ece"] == pytest.approx(flipped["scalars"]["ece"], abs=1e-6)
    assert (eval_dir / "figures" / "reliability.png").is_file()


@pytest.mark.slow  # starts two training processes (trainer=ddp_cpu)
def test_under_ddp_every_test_sample_counts_once_as_in_one_process(tmp_path: Path) -> None:
    """253 test images (digits 0-6) on 2 processes: Lightning's sampler pads rank 1 with a repeat of image 0. The
    gathered report holds each image once, and equals a single-process test of the same checkpoint."""
    from conftest import run_cli
    from vitlab.cli import eval as eval_cli
    from vitlab.cli.runner import run_task
    from vitlab.compose import compose_config

    args = ["tiny=smoke", "trainer=ddp_cpu", "trainer.limit_test_batches=1.0", "data.classes=[0,1,2,3,4,5,6]"]
    run = run_cli("train", [*args, "trainer.enable_progress_bar=false"], tmp_path / "logs")
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = run.results()
    (run_dir,) = run.run_dirs()
    ddp = json.loads((run_dir / "metrics" / "test.json").read_text())
    assert result["world_size"] == 2 and ddp["samples"] == 253
    assert ddp["class_support"] == [36, 36, 35, 37, 36, 37, 36]  # digits' test split, each image once
    assert result["test/acc"] == pytest.approx(ddp["scalars"]["acc"], abs=1e-6)

    cfg = compose_config("eval", [f"ckpt_path={result['best_ckpt']}", "trainer.accelerator=cpu", "trainer.devices=1",
                                  "trainer.enable_progress_bar=false"])  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
    assert run_task(cfg, eval_cli.evaluate)["status"] == "ok"
    single = json.loads((tmp_path / "eval" / "metrics" / "test.json").read_text())
    assert single["confusion_matrix"] == ddp["confusion_matrix"]
    assert single["scalars"] == pytest.approx(ddp["scalars"], abs=1e-6)  # the same logits, up to float32 sums
