"""vitlab's Hydra configs, shipped as the package `vitlab.configs` (the repository's `configs/`; see pyproject).

Hydra finds them as `pkg://vitlab.configs`; a user's own configs come first through `--config-dir` or
`hydra.searchpath`.
"""

from __future__ import annotations

from importlib import resources

CONFIG_MODULE = "vitlab.configs"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"  # what the entry points give Hydra


def config_dir() -> str:
    """The packaged configs as a directory on disk (editable installs: the checkout's `configs/`)."""
    root = resources.files(CONFIG_MODULE)
    if not root.joinpath("train.yaml").is_file():
        raise SystemExit(
            f"vitlab: the package {CONFIG_MODULE} holds no train.yaml ({root}). The installation is incomplete: "
            "reinstall vitlab (pip install 'vitlab @ <wheel or checkout>')."
        )
    return str(root)
