"""What a test leaves in the run directory beyond results.json: `metrics/test.json` and the test figures.

`ClassificationModule` computes the report at the end of the test stage (every process, from the gathered
logits); the commands that test (vitlab-train's test phase, vitlab-eval) call `write_test_report` afterwards, and
process 0 writes it. results.json keeps the scalars only (`test/acc`, `test/acc_top5`, `test/nll`, `test/ece`,
`test/acc_per_class_mean`); the per-class arrays go here (docs/evaluation.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitlab.analysis.tta import check_tta, view_count
from vitlab.errors import ConfigError
from vitlab.extras import MissingExtra
from vitlab.runs.files import jsonable, write_text

log = logging.getLogger("vitlab")

METRICS_DIR = "metrics"
TEST_FILE = "test.json"
INDENTED_UP_TO = 30  # classes: above this the arrays are written compactly (a 1000-class matrix, indented, is 10 MB)
WANDB_KEYS = {"confusion_matrix": "test/confusion_matrix", "reliability": "test/reliability"}


def eval_options(cfg: Any) -> tuple[str, bool]:
    """(`eval.tta`, `eval.figures`) of a run config; (none, true) where the config has no `eval` node."""
    from omegaconf import OmegaConf

    tta = OmegaConf.select(cfg, "eval.tta", default="none")
    figures = OmegaConf.select(cfg, "eval.figures", default=True)
    if not isinstance(figures, bool):
        raise ConfigError(f"eval.figures={figures!r} is not allowed: it must be true or false.")
    return check_tta(tta), figures


def class_names(datamodule: Any, num_classes: int) -> list[str] | None:
    """The class names the data module knows (its `classes`, else its test set's, e.g. torchvision's CIFAR),
    as strings; None when there are none of the right length."""
    test_set = getattr(datamodule, "test_set", None)
    for source in (datamodule, test_set, getattr(test_set, "dataset", None)):
        names = getattr(source, "classes", None)
        if isinstance(names, Sequence) and not isinstance(names, str) and len(names) == num_classes:
            return [str(n) for n in names]
    return None


def report_payload(report: dict[str, Any], tta: str, names: list[str] | None) -> dict[str, Any]:
    """The content of metrics/test.json: the report, how it was measured, and the class names."""
    return {
        "tta": tta,
        "tta_views": view_count(tta),
        "class_names": names if names is not None else [str(i) for i in range(report["num_classes"])],
        **report,
    }


def write_test_report(module: Any, trainer: Any, datamodule: Any, run_dir: str | Path, figures: bool) -> Path | None:
    """Process 0 writes `<run_dir>/metrics/test.json` and, with `figures`, `figures/confusion_matrix.png` and
    `figures/reliability.png` (sent to W&B when logging there). Without matplotlib the figures are skipped with one
    log line naming the pip command; the metrics are written regardless. Returns the JSON path (None elsewhere)."""
    report = getattr(module, "test_report", None)
    if report is None or not trainer.is_global_zero:
        return None
    names = class_names(datamodule, report["num_classes"])
    payload = jsonable(report_payload(report, module.tta, names))
    indent = 2 if report["num_classes"] <= INDENTED_UP_TO else None
    path = Path(run_dir) / METRICS_DIR / TEST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(payload, indent=indent, allow_nan=False) + "\n")
    log.info("test metrics per class, confusion matrix and reliability bins: %s", path)
    if figures:
        write_test_figures(report, names, run_dir, trainer.loggers)
    return path


def write_test_figures(report: dict[str, Any], names: list[str] | None, run_dir: str | Path, loggers: Any) -> None:
    """The confusion matrix (when the report kept one) and the reliability diagram, as PNGs and W&B images."""
    try:
        from vitlab.plots.classification import plot_confusion_matrix, plot_reliability
        from vitlab.plots.figures import log_images

        paths = {"reliability": plot_reliability(run_dir, report["reliability"], report["scalars"]["ece"])}
        if report["confusion_matrix"] is not None:
            paths["confusion_matrix"] = plot_confusion_matrix(run_dir, report["confusion_matrix"], names)
    except MissingExtra as exc:
        log.warning("test figures skipped (metrics/test.json is written): %s", exc)
        return
    log_images(loggers, {WANDB_KEYS[name]: path for name, path in paths.items()})
    log.info("test figures: %s", ", ".join(str(p) for p in paths.values()))
