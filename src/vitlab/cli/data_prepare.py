"""`vitlab-data prepare <name> <raw dir> <out> [key=value ...]`: check a downloaded data set in its raw layout
and write it as class folders or shards with a manifest (vitlab.data.prepare; docs/data.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vitlab.data.prepare import FORMATS, names, prepare
from vitlab.errors import ConfigError

USAGE = (
    "usage: vitlab-data prepare <name> <raw dir> <out> [key=value ...]\n"
    f"  name           {' | '.join(names())}\n"
    "  raw dir        the unpacked download (tiny-imagenet-200/, the vtab-1k/ folder of task folders, or the\n"
    "                 folder holding a torchvision set's folder such as cifar-10-batches-py/)\n"
    "  out            a new or empty folder\n"
    f"  format=...     {' | '.join(FORMATS)} (default folder)\n"
    "  overwrite=true replace the split folders and manifest.json of a non-empty out\n"
    "  expect_counts=false  accept a small or partial copy (the published counts are checked otherwise)\n"
    "  val_fraction=, split_seed=   the held-out validation split (tiny_imagenet, torchvision sets)\n"
    "  task=, protocol=, final_val=   VTAB-1k (without task=, every task folder under <raw dir>)\n"
)


def _value(text: str) -> Any:
    """A command-line value: true/false, an integer, a float, else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse(argv: list[str]) -> tuple[str, str, str, dict[str, Any]]:
    """(name, raw, out, options) from `<name> <raw> <out> [key=value ...]`; a malformed line is a ConfigError."""
    positional = [a for a in argv if "=" not in a]
    pairs = [a for a in argv if "=" in a]
    if len(positional) != 3 or argv[:3] != positional:
        given = " ".join(argv) or "(nothing)"
        raise ConfigError(
            f"vitlab-data prepare takes <name> <raw dir> <out>, then key=value options; got {given}.\n{USAGE}"
        )
    options: dict[str, Any] = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        key = key.removeprefix("data.")
        if not key or key in options:
            raise ConfigError(f"vitlab-data prepare: {pair!r} is not key=value, or repeats a key.\n" + USAGE)
        options[key] = _value(text)
    return positional[0], positional[1], positional[2], options


def prepare_command(argv: list[str]) -> int:
    """Run `prepare` for the arguments after `vitlab-data prepare`: 0 when written, 2 with one paragraph on
    stderr when the data or the arguments are refused (nothing is written then)."""
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE, end="")
        return 0
    try:
        name, raw, out, options = parse(argv)
        result = prepare(name, raw, out, progress=sys.stderr.isatty(), **options)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifests = {str(Path(out) / task): m for task, m in result.items()} if "splits" not in result else {out: result}
    for where, manifest in manifests.items():
        sizes = ", ".join(f"{split} {info['samples']}" for split, info in manifest["splits"].items())
        print(f"{where}: {len(manifest['classes'])} classes; {sizes} images; sha256 {manifest['sha256'][:16]}")
        data = "imagefolder" if manifest.get("kind") == "folder" else "shards"
        print(f"  train on it: vitlab-train data={data} data.root={where}")
    return 0


def main() -> None:
    """`python -m vitlab.cli.data_prepare ...` (the lead wires `vitlab-data prepare` to `prepare_command`)."""
    sys.exit(prepare_command(sys.argv[1:]))


if __name__ == "__main__":
    main()
