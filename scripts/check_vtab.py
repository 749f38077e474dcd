"""Check a prepared VTAB-1k folder (the standard processed layout of the NOAH/FacT repositories).

    python scripts/check_vtab.py data/vtab-1k                       # all 19 tasks
    python scripts/check_vtab.py data/vtab-1k --tasks dtd svhn --open

Prints one row per task (line counts of train800/val200/train800val200/test, classes seen/known, ✓ or ✗ with
the reasons) and exits 1 if any task fails. The checks live in `vitlab.data.vtab_check`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitlab.data.vtab_check import check_root, format_checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the folder holding one sub-folder per task")
    parser.add_argument("--tasks", nargs="+", default=None, help="task folder names (default: all 19)")
    parser.add_argument("--no-counts", action="store_true", help="skip the 800/200/1000 line counts (miniatures)")
    parser.add_argument("--open", action="store_true", help="also decode every image (slow)")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"{args.root} is not a folder", file=sys.stderr)
        return 2
    checks = check_root(args.root, args.tasks, expected_counts=not args.no_counts, open_images=args.open)
    print(format_checks(checks))
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
