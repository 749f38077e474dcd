"""`vitlab-eval probe=fewshot ckpt_path=...`: n-shot linear evaluation of a checkpoint's frozen backbone.

Instead of the test, for every n in `probe.shots` and each of `probe.draws` draws, a linear probe is fit on n
training images per class (features of the evaluation transform) and scored on the test split
(`vitlab.analysis.fewshot`). `results.json` gets `fewshot/<n>shot_acc_mean` and `fewshot/<n>shot_acc_std`, the
loggers (CSV, W&B) the same numbers, and the console a small table. Any data config works (`data=...`
replaces the checkpoint's, with any number of classes): only the backbone is used, never the trained head.
docs/probes.md.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Subset

from vitlab.analysis.features import (
    dataset_labels,
    eval_view,
    extract_features,
    feature_loader,
    rng_untouched,
    sample_indices,
)
from vitlab.analysis.fewshot import class_counts, fewshot_accuracies, fewshot_draws, summarise
from vitlab.cli.checkpoint import load_trained
from vitlab.cli.rules import POSITIVE_INT, Rule, closest, refuse, refuse_name
from vitlab.cli.validate_lists import LIST_RULES
from vitlab.data.base import ImageDataModule
from vitlab.errors import ConfigError
from vitlab.training.components import (
    build_trainer,
    log_config,
    update_wandb_summary,
)

log = logging.getLogger("vitlab")

PROBES = ("fewshot",)  # the options of configs/probe/
OPTIONS: dict[str, Rule] = {
    "draws": POSITIVE_INT,
    "seed": Rule(int, 0, 2**32 - 1),
    "c": Rule(float, 0, open_low=True),
    "max_test_samples": Rule(int, 1, nullable=True),
}
KEYS = ("name", "shots", *OPTIONS)


def probe_options(cfg: DictConfig) -> dict[str, Any]:
    """`cfg.probe` checked: one paragraph naming the key and what it allows for anything a probe cannot use."""
    probe = cfg.get("probe")
    name = probe.get("name") if OmegaConf.is_dict(probe) else probe
    if name not in PROBES:
        raise refuse_name("probe", name, PROBES)
    unknown = [k for k in probe if k not in KEYS]
    if unknown:
        guess = closest(unknown[0], KEYS)
        hint = f" Did you mean probe.{guess}?" if guess else ""
        raise ConfigError(f"probe.{unknown[0]} is not an option of probe={name}. Its options: {', '.join(KEYS)}.{hint}")
    options = OmegaConf.to_container(probe, resolve=True)
    assert isinstance(options, dict)
    if not LIST_RULES["probe.shots"].accepts(options.get("shots")):
        raise refuse("probe.shots", probe.get("shots"), LIST_RULES["probe.shots"].allowed())
    for key, rule in OPTIONS.items():
        if not rule.accepts(options.get(key)):
            raise refuse(f"probe.{key}", options.get(key), rule.allowed())
    return options


def _device(cfg: DictConfig) -> torch.device:
    """The trainer's accelerator: a GPU when asked for (or `auto` and one is there), else the CPU."""
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    return torch.device("cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu")


def load_model(cfg: DictConfig) -> tuple[torch.nn.Module, ImageDataModule]:
    """(the checkpoint's model with its weights, in eval mode; the data module of `cfg.data`)."""
    module, datamodule = load_trained(cfg)
    return module.model, datamodule


def run_probe(cfg: DictConfig, record: dict[str, Any]) -> None:
    """The few-shot evaluation of `cfg.ckpt_path` on `cfg.data`; fills `record` (results.json)."""
    options = probe_options(cfg)  # before anything is loaded
    shots, draws, seed = [int(n) for n in options["shots"]], int(options["draws"]), int(options["seed"])
    model, datamodule = load_model(cfg)
    num_classes = int(datamodule.num_classes)
    labels = dataset_labels(datamodule.train_set)
    counts = class_counts(labels, num_classes)
    if max(shots) > int(counts.min()):
        smallest = int(counts.argmin())
        raise ConfigError(
            f"probe.shots={shots} is not allowed with this data: class {smallest} of the training split has only "
            f"{int(counts.min())} images; every n in probe.shots must be at most {int(counts.min())}."
        )
    start = time.monotonic()
    drawn = fewshot_draws(labels, shots, draws, num_classes, seed)
    pool = torch.cat([d for per_n in drawn.values() for d in per_n]).unique()  # sorted: each image computed once
    model = model.to(_device(cfg))
    batch, workers = int(datamodule.batch_size), int(datamodule.num_workers)
    test_set = datamodule.test_set
    chosen = sample_indices(len(test_set), options.get("max_test_samples"))
    with rng_untouched():
        reference = eval_view(datamodule.train_set, test_set) or datamodule.train_set
        pool_f, pool_y = extract_features(model, feature_loader(Subset(reference, pool.tolist()), batch, workers))
        test = test_set if chosen is None else Subset(test_set, chosen)
        test_f, test_y = extract_features(model, feature_loader(test, batch, workers))
    accuracies = fewshot_accuracies(drawn, pool, pool_f, pool_y, test_f, test_y, num_classes, c=float(options["c"]))
    summary = summarise(accuracies)
    record.update(summary)
    record.update({"fewshot/shots": shots, "fewshot/draws": draws, "fewshot/test_images": len(test_f)})
    record["ckpt_path"] = str(cfg.ckpt_path)
    trainer = build_trainer(cfg)  # its loggers (CSV, W&B) get the numbers too
    log_config(trainer, cfg)
    for logger in trainer.loggers:
        logger.log_metrics(summary, step=0)
        logger.finalize("success")
    update_wandb_summary(trainer, record)
    if trainer.is_global_zero:
        print(table(accuracies, len(test_f), time.monotonic() - start, f"{cfg.paths.output_dir}/results.json"))


def table(accuracies: dict[int, list[float]], test_images: int, seconds: float, results: str) -> str:
    """The console's summary: one line per n, mean ± std over the draws, in percent."""
    lines = [f"\nfew-shot linear probe ({test_images} test images, {seconds:.1f} s)", "  shots   accuracy (%)   draws"]
    for n, values in accuracies.items():
        summary = summarise({n: values})
        mean, std = summary[f"fewshot/{n}shot_acc_mean"], summary[f"fewshot/{n}shot_acc_std"]
        lines.append(f"  {n:>5}   {100 * mean:6.2f} ± {100 * std:5.2f}   {len(values):>5}")
    lines.append(f"(results: {results})")
    return "\n".join(lines)
