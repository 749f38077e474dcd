"""`vitlab-eval ckpt_path=...`: test a checkpoint written by `vitlab-train`; writes its own `results.json`.

The architecture and data come from the config stored in the checkpoint, so a checkpoint is enough:

    vitlab-eval ckpt_path=outputs/runs/<date>/<time>_train/checkpoints/epoch_007.ckpt
    vitlab-eval ckpt_path=... data=cifar10 data.batch_size=256   # evaluate on another data config
    vitlab-eval ckpt_path=... eval.tta=flip                       # average the logits of each image and its mirror

Besides results.json (top-1, top-5 where K > 5, NLL, ECE, balanced accuracy) it writes metrics/test.json (per-class
accuracy, confusion matrix, reliability bins) and figures/{confusion_matrix,reliability}.png: docs/evaluation.md.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

import vitlab.cli.resolvers  # noqa: F401  (registers ${vitlab.*} resolvers before Hydra composes)
from vitlab.cli.checkpoint import load_trained, read_checkpoint
from vitlab.cli.runner import configure_wandb, pin_run_dir_for_ddp, run_task
from vitlab.cli.slurm import match_threads_to_allocation
from vitlab.cli.validate import check_config
from vitlab.configs import CONFIG_PATH
from vitlab.errors import ConfigError
from vitlab.models.summary import param_counts
from vitlab.training.components import (
    build_datamodule,
    build_module,
    build_trainer,
    log_config,
    update_wandb_summary,
)
from vitlab.training.interrupts import InterruptGuard
from vitlab.training.test_report import eval_options, write_test_report

log = logging.getLogger("vitlab")


def run_config(cfg: DictConfig) -> DictConfig:
    """`cfg` (trainer, logger, paths) merged with the trained run's model/optim/module, and its data unless
    `data=` was given; pre-trained weights are not fetched again (the checkpoint holds them)."""
    if not cfg.get("ckpt_path"):
        raise ConfigError(
            "vitlab-eval needs ckpt_path=<a checkpoint written by vitlab-train>, e.g. "
            "ckpt_path=outputs/runs/<date>/<time>_train/checkpoints/epoch_007.ckpt."
        )
    check_config(cfg)
    checkpoint = read_checkpoint(cfg.ckpt_path)
    saved = (checkpoint.get("hyper_parameters") or {}).get("config")
    saved = saved if isinstance(saved, dict) else None
    if saved is None:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} holds no vitlab config (it was not written by vitlab-train); "
            "vitlab-eval cannot rebuild its model."
        )
    saved_cfg = OmegaConf.create(saved)
    merged = cfg.copy()
    with open_dict(merged):
        for key in ("model", "optim", "scheduler", "module"):
            merged[key] = saved_cfg.get(key)
        if merged.get("data") is None:
            merged.data = saved_cfg.data
        merged.model.backbone.weights = "none"
        merged.seed = saved_cfg.get("seed", 0)
        stem = merged.model.get("stem")
        if (
            stem
            and stem.get("only_from_scratch")
            and "model.backbone.patch_embed.proj.weight" in checkpoint["state_dict"]
        ):
            merged.model.stem = None  # model/stem=auto kept the loaded patch embedding when this model was built
    return merged


def refuse_mixed_modes(cfg: DictConfig) -> None:
    """`analyse=` and `probe=` replace the test: each alone, and `eval.tta` (a test option) not with them."""
    chosen = {key: cfg[key] for key in ("analyse", "probe") if cfg.get(key)}  # probe is a group: its name says
    modes = [f"{key}={value.get('name') if isinstance(value, DictConfig) else value}" for key, value in chosen.items()]
    tta = OmegaConf.select(cfg, "eval.tta", default="none")
    if len(modes) > 1 or (modes and tta != "none"):
        given = " and ".join([*modes, *([f"eval.tta={tta}"] if modes and tta != "none" else [])])
        raise ConfigError(
            f"vitlab-eval was given {given}: analyse=attention and probe=fewshot each replace the test, so they run "
            "one at a time and eval.tta (a test option) does not apply to them. Run one command per analysis."
        )


def evaluate(cfg: DictConfig, record: dict[str, Any]) -> None:
    refuse_mixed_modes(cfg)
    record["ckpt_path"] = str(cfg.ckpt_path)
    if cfg.get("analyse"):  # vitlab-eval analyse=attention (before run_config: data.n_images is the analysis's key)
        from vitlab.cli.eval_analyse import run_analysis

        return run_analysis(cfg, record, lambda analysed: load_trained(run_config(analysed)))
    cfg = run_config(cfg)
    if cfg.get("probe"):  # vitlab-eval probe=fewshot: n-shot linear evaluation of the frozen features
        from vitlab.cli.eval_probe import run_probe

        return run_probe(cfg, record)  # its own loading: the data may have other classes than the checkpoint
    tta, figures = eval_options(cfg)  # eval.tta, eval.figures: refused here, before the data are read
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule.num_classes)
    module.tta = tta
    record.update(param_counts(module.model))
    trainer = build_trainer(cfg, extra_callbacks=[InterruptGuard()])  # a signal stops it cleanly (non-zero)
    log_config(trainer, cfg)
    metrics = trainer.test(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True, verbose=False)
    record.update({k: float(v) for k, v in (metrics[0] if metrics else {}).items()})
    record["eval/tta"] = tta
    # per-class accuracy, confusion matrix, reliability bins (metrics/test.json) and the figures (docs/evaluation.md)
    write_test_report(module, trainer, datamodule, cfg.paths.output_dir, figures=figures)
    update_wandb_summary(trainer, record)
    if trainer.is_global_zero:
        extra = "".join(
            f"   {k} = {record[k]:.4f}" for k in ("test/acc_top5", "test/nll", "test/ece") if record.get(k) is not None
        )
        print(f"\ntest/acc = {record['test/acc']:.4f}{extra}   (results: {cfg.paths.output_dir}/results.json)")


def eval_job(cfg: DictConfig, failures: list[str]) -> float | None:
    """One job of `vitlab-eval`: its test accuracy; a failed job's run directory is added to `failures`."""
    configure_wandb(cfg)
    pin_run_dir_for_ddp()
    match_threads_to_allocation()
    record = run_task(cfg, evaluate)
    if record.get("status") == "failed":
        failures.append(str(cfg.paths.output_dir))
    return record.get("test/acc")


def main() -> None:
    failures: list[str] = []  # this command's failed jobs (a multirun goes on past them, then exits 1)

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
    def _hydra_main(cfg: DictConfig) -> float | None:
        return eval_job(cfg, failures)

    _hydra_main()
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
