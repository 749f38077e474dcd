"""`vitlab-train --cfg hydra --resolve`: print the Hydra node with every interpolation resolved.

Hydra's own `--cfg hydra --resolve` deletes the job's keys before resolving, so `hydra.run.dir:
${paths.log_dir}/runs/...` (our run directories follow `paths.log_dir`) fails with "Interpolation key
'paths.log_dir' not found". Here the whole config is composed as the CLI would compose it, the run directory
is filled in as Hydra fills it when a job starts, everything is resolved, and only then is the job's part
dropped. Light on purpose: no torch import, so it answers in about a second.
"""

from __future__ import annotations

import os
import sys

from omegaconf import OmegaConf

from vitlab.compose import compose_config

CFG_FLAGS = ("--cfg", "-c")
VALUE_FLAGS = (*CFG_FLAGS, "--package", "-p")  # flags followed by a value
MULTIRUN_FLAGS = ("-m", "--multirun")


def wants_resolved_hydra(argv: list[str]) -> bool:
    """True for `--cfg hydra --resolve` (or `-c hydra`) of one run, the case Hydra itself cannot resolve. With
    -m the overrides may be sweeps (`seed=0,1`), which only Hydra's launcher expands: Hydra's own path then."""
    shown = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in CFG_FLAGS]
    return shown == ["hydra"] and "--resolve" in argv and not any(arg in MULTIRUN_FLAGS for arg in argv)


def overrides_of(argv: list[str]) -> list[str]:
    """The command line's overrides: everything but flags and the values that follow a flag."""
    skip = {i + 1 for i, arg in enumerate(argv) if arg in VALUE_FLAGS}
    return [arg for i, arg in enumerate(argv) if i not in skip and not arg.startswith("-")]


CONFIG_DIR_FLAGS = ("--config-dir", "-cd")
OTHER_VALUE_FLAGS = ("--config-name", "-cn", "--config-path", "-cp", "--experimental-rerun")


def split_config_dirs(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the --config-dir directories, argv without them and without other flags that take a value)."""
    dirs: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in CONFIG_DIR_FLAGS:
            dirs.append(next(args, ""))
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
        elif arg in OTHER_VALUE_FLAGS:
            next(args, None)
        else:
            rest.append(arg)
    return [d for d in dirs if d], rest


def composed_overrides(argv: list[str]) -> list[str]:
    """The overrides to compose what the command line composes: its overrides, and a user's --config-dir as
    Hydra's search path (the compose API has no --config-dir)."""
    dirs, rest = split_config_dirs(argv)
    search = [f"hydra.searchpath=[{','.join('file://' + os.path.abspath(d) for d in dirs)}]"] if dirs else []
    return [*overrides_of(rest), *search]


def resolved_hydra_yaml(config_name: str, overrides: list[str]) -> str:
    """The `hydra:` node as YAML, resolved in the context of the full config (`overrides` applied)."""
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_config(config_name, overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # for ${hydra:...} interpolations
    OmegaConf.set_readonly(cfg.hydra, False)
    # what Hydra sets when a job starts: the job number (shown as the first job's, 0) and the run directory
    if OmegaConf.is_missing(cfg.hydra.job, "num"):
        cfg.hydra.job.num = 0
    cfg.hydra.runtime.output_dir = os.path.abspath(cfg.hydra.run.dir)
    node = OmegaConf.to_container(cfg.hydra, resolve=True)
    for key in ("help", "hydra_help"):  # Hydra leaves these out of --cfg hydra as well
        node.pop(key, None)
    return OmegaConf.to_yaml({"hydra": node})


def show_resolved_hydra(config_name: str, argv: list[str]) -> bool:
    """Print the resolved Hydra node when `argv` asks for it; False (nothing printed) otherwise."""
    if not wants_resolved_hydra(argv):
        return False
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        text = resolved_hydra_yaml(config_name, composed_overrides(argv))
    except (HydraException, OmegaConfBaseException) as exc:  # a bad override: Hydra's message, one paragraph
        message = str(exc).split("\nConfig search path")[0].strip()
        print(f"vitlab-{config_name}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.stdout.write(text)
    return True
