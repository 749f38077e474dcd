"""`resume=<run dir>` and `resume=auto`: continue a run in its own directory without repeating its overrides.

`vitlab-train resume=outputs/runs/2026-11-30/10-00-00_train` becomes, before Hydra sees it, the run's own
overrides (read from its `run.json`), any trainer or logging overrides given beside `resume=` (e.g.
`trainer.devices=4`, `logger=wandb`), and `hydra.run.dir=<run dir>`; the run then continues from its
`last.ckpt` (vitlab.cli.in_place). `resume=auto` does the same for the newest unfinished run (interrupted,
or killed before it wrote a result) whose overrides equal the given ones, and starts a new run when there is
none, so one command line serves a job script that may be started several times.

A run whose `checkpoints/last.ckpt` cannot be read (a node that died while copying it, a failing disk) is
refused here, before Hydra writes anything, naming the newest readable checkpoint of the run;
`resume.fallback=true` beside `resume=` continues from that one instead (vitlab.runs.checkpoint_choice).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vitlab.errors import ConfigError
from vitlab.runs.checkpoint_choice import continue_refusal, damaged_last
from vitlab.runs.files import results_status
from vitlab.runs.state import (
    MAY_CHANGE_ON_RESUME,
    RUN_FILE,
    RunState,
    hydra_quote,
    is_running,
    is_under,
    override_key,
    same_experiment,
)

log = logging.getLogger("vitlab")
UNFINISHED = (None, "interrupted")  # results.json status of a run that can be continued by resume=auto
ALLOWED = ", ".join(k[:-1] + " (the group)" if k.endswith("=") else k for k in MAY_CHANGE_ON_RESUME)


def is_override(token: str) -> bool:
    """A Hydra override (`a=b`, `+a=b`, `~a`), not a flag (`--cfg`) or a flag's value (`job`)."""
    return not token.startswith("-") and ("=" in token or token.startswith("~"))


def expand_resume_argv(argv: list[str]) -> list[str]:
    """`argv` with `resume=...` replaced as described in the module docstring (unchanged without it)."""
    tokens = [t for t in argv if t.startswith("resume=")]
    if not tokens:
        return argv
    if len(tokens) > 1:
        raise ConfigError(f"resume= was given {len(tokens)} times ({' '.join(tokens)}); give one run directory.")
    if any(t in ("-m", "--multirun") for t in argv):
        raise ConfigError(
            "resume= continues one run and cannot be combined with -m/--multirun. Continue each job with "
            "resume=<its directory>, re-run the same sweep (its jobs continue in place when hydra.sweep.dir is "
            "fixed), or use vitlab-reproduce, which continues unfinished rows by itself."
        )
    value = tokens[0].split("=", 1)[1].strip()
    rest = [t for t in argv if t is not tokens[0]]
    overrides = [t for t in rest if is_override(t)]
    flags = [t for t in rest if not is_override(t)]
    if value == "auto":
        run_dir = newest_unfinished(log_dir_of(overrides), overrides)
        if run_dir is None:
            log.info("resume=auto: no unfinished run with these overrides; starting a new one")
            return rest
        extras = [o for o in overrides if is_under(override_key(o), MAY_CHANGE_ON_RESUME)]
    else:
        if not value:
            raise ConfigError("resume= needs a run directory (outputs/runs/<date>/<time>_train) or auto.")
        run_dir = Path(value).expanduser()
        extras = overrides
    state = _resumable_state(run_dir, value)
    changing = [o for o in extras if not is_under(override_key(o), MAY_CHANGE_ON_RESUME)]
    if changing:
        raise ConfigError(
            f"resume={value} continues that run with its own overrides [{' '.join(state.overrides) or 'none'}]; "
            f"{' '.join(changing)} would make it another experiment. Only where and how long it runs may change "
            f"(keys under: {ALLOWED})."
            " To change anything else start a new run, "
            f"e.g. from its weights with ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}."
        )
    damage = damaged_last(run_dir)
    if damage is not None and not wants_fallback(extras):  # decided before Hydra writes .hydra/ into the run
        raise ConfigError(continue_refusal(damage, f"resume={value}", run_dir))
    replaced = {override_key(o) for o in extras}
    merged = [o for o in state.overrides if override_key(o) not in replaced] + extras
    log.info("resume: continuing %s (attempt %d)", run_dir, len(state.attempts) + 1)
    return [*merged, f"hydra.run.dir={hydra_quote(run_dir.resolve())}", *flags]


def wants_fallback(overrides: list[str]) -> bool:
    """`resume.fallback=true` among the overrides (the last one for the key wins, as in Hydra)."""
    values = [
        o.split("=", 1)[1].strip().lower() for o in overrides if override_key(o) == "resume.fallback" and "=" in o
    ]
    return bool(values) and values[-1] == "true"


def _resumable_state(run_dir: Path, value: str) -> RunState:
    state = RunState.read(run_dir)
    if state is None:
        raise ConfigError(
            f"resume={value}: {run_dir} is not a vitlab run directory (no readable {RUN_FILE}). Give the folder "
            "of a run (outputs/runs/<date>/<time>_train, or a sweep job's folder), or resume=auto."
        )
    if results_status(run_dir) == "ok":
        raise ConfigError(
            f"resume={value}: that run finished (results.json says ok); there is nothing to continue. "
            "Start a new run, or warm-start one from its weights with ckpt_path=<run dir>/checkpoints/last.ckpt."
        )
    return state


def log_dir_of(overrides: list[str]) -> Path:
    """`paths.log_dir` as the train config composes it with these overrides (configs/local/ included)."""
    from omegaconf import OmegaConf

    from vitlab.compose import compose_config

    plain = [o for o in overrides if not is_under(override_key(o), ("hydra",))]
    try:
        cfg = compose_config("train", plain)
    except Exception as exc:
        raise ConfigError(f"resume=auto: the overrides do not compose: {' '.join(str(exc).split())}") from exc
    return Path(str(OmegaConf.select(cfg, "paths.log_dir")))


def newest_unfinished(log_dir: Path, overrides: list[str]) -> Path | None:
    """The most recently started unfinished run under `log_dir` (runs/ and multiruns/) of this experiment."""
    candidates = []
    for path in [*log_dir.glob(f"runs/*/*/{RUN_FILE}"), *log_dir.glob(f"multiruns/*/*/*/{RUN_FILE}")]:
        state = RunState.read(path.parent)
        if state is None or results_status(path.parent) not in UNFINISHED or is_running(path.parent):
            continue
        if same_experiment(state.overrides, overrides, MAY_CHANGE_ON_RESUME):
            candidates.append((state.created, path.stat().st_mtime, path.parent))
    return max(candidates)[2] if candidates else None


def recorded_data_sources(cfg: Any) -> list[tuple[str, RunState]]:
    """(what, run state) of the runs whose training state this job continues: its own directory when it is an
    unfinished run of the same experiment with a checkpoint (`resume=`, a sweep re-run in place; open_attempt
    refuses or skips the others), and the run of `ckpt_path` (`<run>/checkpoints/<file>.ckpt`)."""
    from vitlab.runs.state import task_overrides

    sources = []
    run_dir = Path(str(cfg.paths.output_dir))
    state = RunState.read(run_dir)
    if (
        state is not None
        and results_status(run_dir) != "ok"
        and same_experiment(state.overrides, task_overrides(), MAY_CHANGE_ON_RESUME)
        and any((run_dir / "checkpoints").glob("*.ckpt"))
    ):
        sources.append((f"the run in {run_dir}", state))
    ckpt = cfg.get("ckpt_path")
    if ckpt:
        path = Path(str(ckpt))
        origin = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        state = RunState.read(origin)
        if state is not None and origin.resolve() != run_dir.resolve():
            sources.append((f"ckpt_path={ckpt}", state))
    return sources


def check_same_data(cfg: Any) -> None:
    """A continued run must read the data it trained on (docs/runs.md, "Which data a run read"): the data hash
    its run.json recorded must equal this job's. Checked before the attempt opens, so a refusal writes nothing;
    a run from before data hashes were recorded continues with one warning line."""
    from omegaconf import OmegaConf

    from vitlab.training.components import build_datamodule

    sources = recorded_data_sources(cfg)
    if not sources:
        return
    current = None
    for what, state in sources:
        saved = state.data_fingerprint()
        if saved is None:
            log.warning("%s recorded no data hash (a run from before data hashes): its data is not checked", what)
            continue
        if current is None:
            current = build_datamodule(cfg).fingerprint()
        if saved["sha256"] == current["sha256"]:
            continue
        target = _data_choice() or str(OmegaConf.select(cfg, "data._target_") or "?").rsplit(".", 1)[-1]
        root = OmegaConf.select(cfg, "data.root")
        data = f"data={target}" + (f" data.root={root}" if root is not None else "")
        raise ConfigError(
            f"{what} trained on data with sha256 {saved['sha256']} ({saved.get('samples')} samples), but {data} "
            f"now reads data with sha256 {current['sha256']} ({current['samples']} samples): files were added, "
            "removed, renamed or resized, a label changed, or the split or class selection differs. Continuing "
            "would mix two data sets in one result, so nothing was started or overwritten. Restore the data the "
            "run read (or point data.root at that copy), or start a new run on the new data (a new run "
            "directory, without resume= or ckpt_path=)."
        )


def _data_choice() -> str | None:
    """The `data=` config group this job composed (e.g. `imagefolder`), inside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized() else None
