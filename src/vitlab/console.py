"""vitlab's console scripts as commands to start: a table or a bench starts `vitlab-train` as a user would,
never a module of the command line by its dotted name."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from vitlab.errors import ConfigError


def _script_dirs() -> list[Path]:
    """Where this interpreter's installs put scripts: beside it (a virtual environment's bin/, activated or not),
    the installation's scripts folder, the user scheme's (`pip install --user`). Never another environment's."""
    dirs = [Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))]
    dirs.append(Path(sysconfig.get_path("scripts", sysconfig.get_preferred_scheme("user"))))
    return list(dict.fromkeys(dirs))


def console_script(name: str) -> list[str]:
    """The command that runs `name` (e.g. `vitlab-train`) with this interpreter's vitlab."""
    suffix = ".exe" if os.name == "nt" else ""
    for folder in _script_dirs():
        script = folder / f"{name}{suffix}"
        if script.is_file():
            return [str(script)]
    raise ConfigError(
        f"{name} is not installed for {sys.executable} (looked in {', '.join(map(str, _script_dirs()))}). Install "
        "vitlab into this environment (pip install -e . in a checkout, or pip install vitlab): that installs its "
        "console scripts."
    )
