"""`vitlab-train`: fit a model, test its best checkpoint, write `results.json`.

vitlab-train                                  # the default: a small ViT on scikit-learn's digits
vitlab-train optim.lr=3e-3 data.batch_size=128
vitlab-train -m optim.lr=1e-3,3e-3 seed=0,1,2 # a sweep: one run directory and results.json per job
vitlab-train resume=outputs/runs/<date>/<time>_train     # continue an interrupted run in its own directory
vitlab-train resume=auto <overrides>          # continue the newest unfinished run of these overrides, or start
vitlab-train ckpt_path=<a checkpoint>         # a new run, warm-started from a checkpoint's full training state
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

import vitlab.cli.resolvers  # noqa: F401  (registers ${vitlab.*} resolvers before Hydra composes)
from vitlab.cli.launcher_check import check_launcher
from vitlab.cli.show_hydra import show_resolved_hydra
from vitlab.cli.sweep_check import sweeper_params_as_overrides
from vitlab.cli.validate import check_config, writable_dir
from vitlab.configs import CONFIG_PATH
from vitlab.errors import ConfigError
from vitlab.extras import check_argv

# torch, Lightning and everything that imports them load inside the functions that use them: `--help`,
# `--cfg` and Hydra's composition answer in about a second instead of paying the ~10 s of those imports.
if TYPE_CHECKING:
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint

    from vitlab.cli.in_place import Attempt

log = logging.getLogger("vitlab")


def check_resume(cfg: DictConfig) -> None:
    """A resumed run must rebuild the architecture it saved; say which overrides made it if not."""
    from vitlab.cli.checkpoint import read_checkpoint_config

    path = cfg.get("ckpt_path")
    if path is None:
        return
    saved = read_checkpoint_config(path)
    if saved is not None and _architecture(saved.get("model")) != _architecture(
        OmegaConf.to_container(cfg.model, resolve=True)
    ):
        raise ConfigError(
            f"ckpt_path={path} was trained with another model configuration. Resume with the overrides of the "
            f"original run: {' '.join(saved.get('_overrides', [])) or '(see its config_resolved.yaml)'}."
        )


# model keys that change how a step is computed in memory, never the architecture or its numbers: a run may be
# resumed with checkpointing switched on (e.g. after running out of memory) or off (docs/finetuning.md)
MEMORY_ONLY_MODEL_KEYS = ("grad_checkpointing",)


def _architecture(model: Any) -> Any:
    if not isinstance(model, dict):
        return model
    return {k: v for k, v in model.items() if k not in MEMORY_ONLY_MODEL_KEYS}


def train(cfg: DictConfig, record: dict[str, Any], attempt: Attempt | None = None) -> None:
    """The recipe: seed, data, model, trainer; fit; test the best checkpoint; fill `record`. `attempt` (the run
    directory's bookkeeping) gets the data's hash in run.json as soon as it is known."""
    from pytorch_lightning import seed_everything

    from vitlab.cli.trainer_check import check_batch_split, check_optimisation, check_trainer
    from vitlab.data.corrupt import skipped_files
    from vitlab.models.summary import param_counts
    from vitlab.provenance import provenance
    from vitlab.training.batch_split import MicroBatchResume
    from vitlab.training.budget import check_training_budget
    from vitlab.training.components import (
        build_datamodule,
        build_module,
        build_trainer,
        log_config,
        print_param_table,
        update_wandb_summary,
    )
    from vitlab.training.cost import CostMeter
    from vitlab.training.determinism import StepSeeding
    from vitlab.training.dynamics_monitor import learned_dynamics, summarise
    from vitlab.training.interrupts import InterruptGuard, raise_if_interrupted
    from vitlab.training.optuna_pruning import pruning_callbacks
    from vitlab.training.test_report import eval_options, write_test_report

    # retries so far and the micro-batch: in results.json however this attempt ends (docs/runs.md#retries)
    record["retries"] = attempt.state.retries if attempt is not None and attempt.state is not None else 0
    check_config(cfg)  # types and ranges first: nothing is built from a value that cannot work
    check_trainer(cfg)  # accelerator/strategy/devices that contradict: said here, before other processes start
    seed_everything(cfg.seed, workers=True)
    check_resume(cfg)
    if cfg.get("test_checkpoint", "best") not in ("best", "last"):  # fail before training, not after
        raise ConfigError(f"test_checkpoint={cfg.test_checkpoint!r} is not an option. Allowed: best, last.")
    export = _export_path(cfg)
    datamodule = build_datamodule(cfg)
    datamodule.batch_split = attempt.batch_split if attempt is not None else 1  # whole batches of the run per epoch
    data = record_data(datamodule.fingerprint(), record, attempt, Path(cfg.paths.output_dir))
    module = build_module(cfg, datamodule.num_classes)
    module.tta = eval_options(cfg)[0]  # eval.tta: test-time views of the test phase (docs/evaluation.md)
    record.update(param_counts(module.model))
    print_param_table(module.model)
    record_weights_report(module.model, Path(cfg.paths.output_dir), record)
    cost = CostMeter(img_size=int(cfg.data.img_size))
    # exact resume: per-step seeds, and signals turned into a checkpoint and a clean stop (docs/resume.md)
    extra = [cost, StepSeeding(cfg.seed), InterruptGuard(), MicroBatchResume(), *pruning_callbacks()]
    trainer = build_trainer(cfg, extra_callbacks=extra)
    check_batch_split(cfg, trainer.world_size)  # each process would find it after all of them started
    record.update(
        world_size=trainer.world_size,
        micro_batch=int(cfg.data.batch_size) // trainer.world_size,  # per device; halved by an out-of-memory retry
        accumulate_grad_batches=int(trainer.accumulate_grad_batches),
    )
    origin = provenance(trainer.strategy.root_device)  # versions, device, git state: in results.json and loggers
    record.update(origin)
    log_config(trainer, cfg, extra={"provenance": origin, "data/sha256": data["sha256"]})
    log.info("run directory: %s", cfg.paths.output_dir)
    raise_if_interrupted()

    if cfg.get("train", True):
        # no optimiser step or no validation image: refused now, not recorded ok after training nothing
        lr = float(OmegaConf.select(cfg, "optim.lr") or 0)
        steps = check_training_budget(trainer, datamodule, cfg.get("scheduler"), lr)
        check_optimisation(module, trainer, steps)  # under DDP: its errors once, before the other processes start
        _fit(trainer, module, datamodule, cfg.get("ckpt_path"))
        record["val/acc"] = _best_val(trainer)
        record["epochs"] = trainer.fit_loop.epoch_progress.total.processed  # also right after an early stop
        record["world_size"] = trainer.world_size
        # what configure_optimizers built: fused/foreach/for-loop, per-layer lr scales (with optim.layer_decay)
        record["optim/implementation"] = module.optimizer_implementation
        if module.layer_scales is not None:
            record["optim/layer_scales"] = module.layer_scales
        record.update(cost.results(module.device))
        record.update(summarise(learned_dynamics(module.model)))  # learned a and h (ODE transfer), if any
        # the last validation probe of callbacks=probe (docs/probes.md), beside the test probe recorded below
        record.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("probe/")})
        raise_if_interrupted()
    if cfg.get("test", True):
        best = _test_checkpoint(cfg, trainer)
        record["best_ckpt"] = best
        log.info("testing %s", best or "the final weights")
        metrics = trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
        record.update({k: float(v) for k, v in (metrics[0] if metrics else {}).items()})
        record["eval/tta"] = module.tta
        # per-class accuracy, confusion matrix, reliability bins and figures (docs/evaluation.md)
        write_test_report(module, trainer, datamodule, cfg.paths.output_dir, figures=eval_options(cfg)[1])
    if export is not None and trainer.is_global_zero:
        export_backbone(module.model, export)
        record["exported_weights"] = str(export)
    skipped = skipped_files(datamodule.train_set, datamodule.val_set, datamodule.test_set)
    if skipped:  # this run's data sets only (a sweep runs many in one process)
        record["data/skipped_corrupt"] = skipped
    update_wandb_summary(trainer, record)
    if trainer.is_global_zero and record.get("test/acc") is not None:
        best = record.get("best_ckpt")
        tested = f"the best checkpoint, {Path(best).name}" if best else "the final weights"
        print(f"\ntest/acc = {record['test/acc']:.4f} with {tested}   (results: {cfg.paths.output_dir}/results.json)")


def record_data(data: dict[str, Any], record: dict[str, Any], attempt: Attempt | None, run_dir: Path) -> dict:
    """Which data this run reads (docs/runs.md): `data/sha256` and `data/samples` in results.json, the whole
    fingerprint in this attempt's entry of run.json (written now: an interrupted run has it for its resume)."""
    from pytorch_lightning.utilities import rank_zero_only

    record["data/sha256"], record["data/samples"] = data["sha256"], data["samples"]
    log.info("data: sha256 %s (%d samples, %s)", data["sha256"], data["samples"], data["basis"])
    if attempt is not None and attempt.state is not None and rank_zero_only.rank == 0:
        attempt.state.record_data(data)
        attempt.state.write(run_dir)
    return data


def record_weights_report(model: torch.nn.Module, run_dir: Path, record: dict[str, Any]) -> None:
    """When weights were loaded: the counts in results.json, the full lists in weights_report.json."""
    from pytorch_lightning.utilities import rank_zero_only

    report = getattr(model, "weights_report", None)
    if report is None:
        return
    record.update(report.counts())
    if rank_zero_only.rank == 0:
        report.write(run_dir / "weights_report.json")
        print(report.table())


def _fit(trainer: Any, module: Any, datamodule: Any, ckpt_path: str | None) -> None:
    """`trainer.fit`, with Lightning's own SIGTERM exit (status 0, nothing saved) reported as an interrupt."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from vitlab.training.interrupts import TrainingInterrupted

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException as exc:
        raise TrainingInterrupted(signal.SIGTERM, None, trainer.current_epoch, trainer.global_step) from exc


def _checkpoint_callback(trainer: Any) -> ModelCheckpoint | None:
    """The checkpoint callback that tracks a metric (the best model), not the one writing last.ckpt."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    return next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)


def _best_checkpoint(trainer: Any) -> str | None:
    ckpt = _checkpoint_callback(trainer)
    return ckpt.best_model_path or None if ckpt is not None else None


def _test_checkpoint(cfg: DictConfig, trainer: Any) -> str | None:
    """`test_checkpoint=best` (the best val/acc checkpoint) or `last` (the final weights, e.g. VTAB-1k's
    `final` protocol, whose validation split is the test split: selecting on it would select on test)."""
    return _best_checkpoint(trainer) if cfg.get("test_checkpoint", "best") == "best" else None


def _export_path(cfg: DictConfig) -> Path | None:
    """`export_weights`, checked before training: a .safetensors path that does not exist yet."""
    path = cfg.get("export_weights")
    if path is None:
        return None
    path = Path(str(path))
    if path.suffix != ".safetensors":
        raise ConfigError(f"export_weights={path} must end in .safetensors.")
    if path.exists():
        raise ConfigError(f"export_weights={path} already exists; delete it or choose another path.")
    if not writable_dir(path.parent):
        raise ConfigError(f"export_weights={path}: {path.parent} cannot be created or written; choose another path.")
    return path


def export_backbone(model: torch.nn.Module, path: Path) -> None:
    """Save the backbone's state dict (timm keys, the classifier included) as safetensors."""
    from safetensors.torch import save

    from vitlab.runs.files import write_bytes

    backbone = getattr(model, "backbone", model)
    path.parent.mkdir(parents=True, exist_ok=True)
    # whole or absent: a full disk leaves no truncated .safetensors under the name a later run loads
    write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}))
    log.info("backbone weights exported to %s (use model.backbone.weights=file:%s)", path, path)


def _best_val(trainer: Any) -> float | None:
    import torch

    ckpt = _checkpoint_callback(trainer)
    if ckpt is not None and isinstance(ckpt.best_model_score, torch.Tensor):
        return float(ckpt.best_model_score)
    value = trainer.callback_metrics.get("val/acc")
    return float(value) if value is not None else None


def train_job(cfg: DictConfig, failures: list[str]) -> float | Exception | None:
    """One job of `vitlab-train` (the only one, or one of a multirun): its metric for a sweeper (`Pruned` for an
    Optuna trial its pruner stopped); a failed job's run directory is added to `failures` (this command's list: a
    multirun goes on, then exits non-zero)."""
    from vitlab.cli.in_place import RunFinished, attempt_options, open_attempt
    from vitlab.cli.resume import check_same_data
    from vitlab.cli.retry import retry_budget, run_attempts
    from vitlab.cli.runner import configure_wandb, is_multirun, pin_run_dir_for_ddp, report
    from vitlab.cli.slurm import match_threads_to_allocation
    from vitlab.runs.files import read_results
    from vitlab.runs.state import task_overrides

    configure_wandb(cfg)
    pin_run_dir_for_ddp()
    match_threads_to_allocation()
    try:  # this run directory: a new run, or the same experiment continued in place (docs/resume.md)
        metric = _optimised_metric(cfg)  # what the job returns; a conflicting old spelling is refused before training
        budget = retry_budget(cfg, in_sweep=is_multirun())  # docs/runs.md#retries
        check_same_data(cfg)  # a continued run on changed data: refused before anything is written
        attempt = open_attempt(Path(cfg.paths.output_dir), task_overrides(), **attempt_options(cfg))
    except RunFinished as exc:
        if not is_multirun():
            report(str(exc), user_error=True)
            raise SystemExit(2) from None
        log.info("%s: finished earlier, skipped", cfg.paths.output_dir)  # a sweep run again in its directory
        return (read_results(cfg.paths.output_dir) or {}).get(metric)
    except ConfigError as exc:
        failures.append(str(cfg.paths.output_dir))
        report(str(exc), user_error=True)
        if not is_multirun():
            raise SystemExit(2) from None
        return None
    record = run_attempts(cfg, attempt, budget, train)  # retried in place while it crashes (docs/runs.md#retries)
    if record.get("status") == "failed":
        failures.append(str(cfg.paths.output_dir))
        return None  # no metric: a sweeper records the trial as failed (Optuna: FAIL), even if val/acc was measured
    if record.get("status") == "pruned":  # vitlab's Optuna sweeper tells the study PRUNED
        from vitlab.training.optuna_pruning import Pruned

        return Pruned(record["error"])
    return record.get(metric)


def _optimised_metric(cfg: DictConfig) -> str:
    """What a sweeper maximises (`optimised_metric`; its old spelling `optimized_metric` for one release)."""
    from vitlab.config_names import read_renamed

    return str(read_renamed(cfg, "optimized_metric", "optimised_metric", "val/acc"))


def main() -> None:
    try:
        sys.argv = [sys.argv[0], *sweeper_params_as_overrides(sys.argv[1:])]  # the documented search-space form
        check_argv(sys.argv[1:])  # a Hydra plugin of a missing extra: name the extra, not a missing config file
        check_launcher("train", sys.argv[1:])  # e.g. trainer.devices=-1 cannot size a SLURM job
    except ConfigError as exc:
        print(f"\nvitlab: error: {exc}\n", file=sys.stderr)
        raise SystemExit(2) from None
    if any(arg.startswith("resume=") for arg in sys.argv[1:]):  # the run-state modules import torch: only then
        from vitlab.cli.resume import expand_resume_argv
        from vitlab.cli.runner import report

        try:
            sys.argv = [sys.argv[0], *expand_resume_argv(sys.argv[1:])]
        except ConfigError as exc:
            report(str(exc), user_error=True)
            raise SystemExit(2) from None
    if show_resolved_hydra("train", sys.argv[1:]):  # Hydra's own cannot resolve ${paths.log_dir} there
        return
    failures: list[str] = []  # this command's failed jobs, from its own jobs only

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
    def _hydra_main(cfg: DictConfig) -> float | Exception | None:
        return train_job(cfg, failures)

    _hydra_main()
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
