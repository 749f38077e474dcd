"""`vitlab-data`: pack a data config into shards, check a packed set, print its counts (docs/data.md).

    vitlab-data pack data=digits out=/data/packed/digits            # any data config and its data.* overrides
    vitlab-data pack data=imagefolder data.root=/data/pets out=s3://bucket/pets shard_bytes=500000000
    vitlab-data check /data/packed/digits                            # every shard's size and sha256
    vitlab-data stats /data/packed/digits                            # splits, per-class counts, image sizes
    vitlab-data stats data=tiny_imagenet                             # the same counts for a data config
    vitlab-data prepare tiny_imagenet /raw/tiny-imagenet-200 /data/tiny   # a downloaded layout, verified

Every command exits 2 with one paragraph on bad input (missing or truncated shard, checksum mismatch, another
manifest version, an empty split, a label outside the classes, a URL whose package is missing, pack into a
non-empty directory without overwrite=true).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import vitlab.cli.resolvers  # noqa: F401  (data=shards sizes itself from its manifest: ${vitlab.packed:...})
from vitlab.errors import ConfigError

COMMANDS = ("pack", "check", "stats", "prepare")
USAGE = (
    "usage: vitlab-data pack data=<config> out=<dir|url> [overwrite=true] [shard_bytes=N] [data.<key>=<value> ...]\n"
    "       vitlab-data check <packed dir|url>\n"
    "       vitlab-data stats <packed dir|url> | data=<config> [data.<key>=<value> ...]\n"
    "       vitlab-data prepare <name> <raw dir> <out> [key=value ...]"
)


def _parse(tokens: Sequence[str], allowed: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """`key=value` tokens: (the command's own keys, the data overrides for Hydra)."""
    own, overrides = {}, []
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            raise ConfigError(f"{token!r} is not key=value.\n{USAGE}")
        if key.lstrip("+~") == "data" or key.lstrip("+~").startswith("data."):
            overrides.append(token)
        elif key in allowed:
            own[key] = value
        else:
            raise ConfigError(f"{key}= is not a key of this command; allowed: {list(allowed)} and data.<key>=.")
    return own, overrides


def _bool(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ConfigError(f"{key}={value!r} is not a boolean; allowed: true, false.")
    return value.lower() == "true"


def _data_module(overrides: list[str]) -> tuple[Any, dict[str, Any]]:
    """The data module a training run with these overrides would build, and its resolved config."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from vitlab.compose import compose_config

    if not any(o.lstrip("+").startswith("data=") for o in overrides):
        raise ConfigError(f"data=<config> is required (e.g. data=digits, data=imagefolder data.root=<dir>).\n{USAGE}")
    try:
        cfg = compose_config("train", overrides)
    except Exception as exc:  # Hydra's own errors (unknown group option, missing key)
        raise ConfigError(f"the overrides {' '.join(overrides)!r} do not compose: {exc}") from exc
    source = OmegaConf.to_container(cfg.data, resolve=True)
    return instantiate(cfg.data), source  # type: ignore[return-value]


def pack_command(tokens: Sequence[str]) -> int:
    from vitlab.data.shards.pack import DEFAULT_SHARD_BYTES, pack

    own, overrides = _parse(tokens, ("out", "overwrite", "shard_bytes"))
    if "out" not in own:
        raise ConfigError(f"out=<dir|url> is required: where the packed set is written.\n{USAGE}")
    try:
        shard_bytes = int(own.get("shard_bytes", DEFAULT_SHARD_BYTES))
    except ValueError:
        raise ConfigError(f"shard_bytes={own['shard_bytes']!r} must be a whole number of bytes.") from None
    from vitlab.data.shards.pack import check_out

    overwrite = _bool("overwrite", own.get("overwrite", "false"))
    check_out(own["out"], overwrite)  # before the data are read: a refusal costs nothing
    module, source = _data_module(overrides)
    manifest = pack(module, own["out"], source=source, overwrite=overwrite, shard_bytes=shard_bytes)
    print(_summary(manifest, own["out"]))
    print(f"sha256 {manifest['sha256']}\ntrain on it: vitlab-train data=shards data.root={own['out']}")
    return 0


def check_command(tokens: Sequence[str]) -> int:
    from vitlab.data.shards.verify import verify_set

    if len(tokens) != 1:
        raise ConfigError(f"check takes one packed directory or URL.\n{USAGE}")
    problems, manifest = verify_set(tokens[0])
    if problems:
        listed = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ConfigError(
            f"{tokens[0]}: {len(problems)} file(s) do not match the manifest: {listed}. Copy them again or re-pack."
        )
    print(_summary(manifest, tokens[0]))
    print(f"ok: every shard and index matches its size and sha256 (set sha256 {manifest['sha256']})")
    return 0


def stats_command(tokens: Sequence[str]) -> int:
    from vitlab.data.shards.verify import config_stats

    if len(tokens) == 1 and "=" not in tokens[0]:
        from vitlab.data.shards.module import read_manifest

        print(_summary(read_manifest(tokens[0]), tokens[0], per_class=True))
        return 0
    _, overrides = _parse(tokens, ())
    module, _ = _data_module(overrides)
    print(_summary(config_stats(module), " ".join(overrides), per_class=True))
    return 0


def _summary(manifest: Mapping[str, Any], where: str, per_class: bool = False) -> str:
    classes = list(manifest["classes"])
    lines = [f"{where}: {len(classes)} classes"]
    for split, entry in manifest["splits"].items():
        counts = entry["class_counts"]
        size = entry.get("image_size") or {}
        sizes = " ".join(f"{k} {'x'.join(map(str, v))}" for k, v in size.items())
        shards = f", {len(entry['shards'])} shard(s)" if "shards" in entry else ""
        lines.append(
            f"  {split:5s} {entry['samples']:>8d} images{shards}; per class min {min(counts)} max {max(counts)}"
            + (f"; image size (w x h) {sizes}" if sizes else "")
        )
        if per_class:
            lines.append("        " + ", ".join(f"{c}: {n}" for c, n in zip(classes, counts, strict=True)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        raise SystemExit(0)
    try:
        if argv[0] not in COMMANDS:
            raise ConfigError(f"{argv[0]!r} is not a vitlab-data command; allowed: {list(COMMANDS)}.\n{USAGE}")
        if argv[0] == "prepare":
            from vitlab.cli.data_prepare import prepare_command

            code = prepare_command(argv[1:])
        else:
            code = {"pack": pack_command, "check": check_command, "stats": stats_command}[argv[0]](argv[1:])
    except ConfigError as exc:
        print(f"\nvitlab-data: error: {exc}\n", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(code)


if __name__ == "__main__":
    main()
