"""vitlab's console scripts as commands to start: a table or a bench starts `vitlab-train` as a user would,
never a module of the command line by its dotted name."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from vitlab.errors import ConfigError


def console_script(name: str) -> list[str]:
    """The command that runs `name` (e.g. `vitlab-train`): the script installed beside this interpreter (a
    virtual environment's bin/, whether or not it is activated), else the one on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return [str(beside)]
    found = shutil.which(name)
    if found is None:
        raise ConfigError(
            f"{name} is not installed beside {sys.executable} nor on PATH. Install vitlab into this environment "
            "(pip install -e . in a checkout, or pip install vitlab), which installs its console scripts."
        )
    return [found]
