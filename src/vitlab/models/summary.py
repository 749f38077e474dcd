"""Parameter accounting: totals for `results.json`/loggers and a compact table of what is trainable."""

from __future__ import annotations

from collections import defaultdict

from torch import nn


def param_counts(model: nn.Module) -> dict[str, int]:
    """`params/total`, `params/trainable` and `params/trainable_no_head` (what PEFT tables report)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head_fn = getattr(model, "head_parameters", None)
    head = sum(p.numel() for p in head_fn() if p.requires_grad) if callable(head_fn) else 0
    return {
        "params/total": total,
        "params/trainable": trainable,
        "params/trainable_no_head": trainable - head,
    }


def trainable_rows(model: nn.Module, depth: int = 2) -> list[tuple[str, int, int]]:
    """(module path, trainable, frozen) per module prefix of `depth` dotted parts; `blocks.N` are merged."""
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, p in model.named_parameters():
        parts = name.split(".")
        key_parts = parts[:depth] if len(parts) > depth else parts[:-1] or parts
        key = ".".join("*" if part.isdigit() else part for part in key_parts)
        rows[key][0 if p.requires_grad else 1] += p.numel()
    return [(k, v[0], v[1]) for k, v in rows.items()]
