"""`vitlab-report`: one self-contained HTML page per run (docs/report.md).

    vitlab-report outputs/runs/<date>/<time>_train                      # -> <run dir>/report.html
    vitlab-report outputs/runs/<date>/<time>_train <other run dir>      # beside a second run: config diff, columns
    vitlab-report outputs/runs/<date>/<time>_train --out /tmp/a.html

The page inlines its images and needs no network: it opens offline, from a mail or an archive. Bad input (a
missing folder, one that is not a run, matplotlib not installed) exits 2 with one paragraph.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from vitlab.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are a `ConfigError` (one paragraph, exit 2) like every vitlab command's."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message}.\n{self.format_usage().strip()}")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vitlab-report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a run directory (vitlab-train, vitlab-eval)")
    p.add_argument("other", type=Path, nargs="?", help="a second run directory to compare with (optional)")
    p.add_argument("--out", type=Path, help="where to write the page (default <run_dir>/report.html)")
    return p


def run(argv: Sequence[str]) -> Path:
    args = parser().parse_args(argv)
    from vitlab.report.build import build_report  # reads runs and draws: only once the arguments are fine

    path = build_report(args.run_dir, args.other, args.out)
    print(f"{path}  ({path.stat().st_size / 1024:.0f} KiB)")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    try:
        run(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"\nvitlab-report: error: {exc}\n", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
