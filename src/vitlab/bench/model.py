"""`vitlab-bench model model=<preset>`: what one model costs — parameters, MACs per image (with and without
the attention matrix products; EIT's and ptflops' "FLOPs" exclude them) and training throughput
(forward + backward + AdamW step on random images). Writes `<out_dir>/model_<name>.json` and `.md`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vitlab.bench.transfer import timed_train_step
from vitlab.models.summary import param_counts
from vitlab.runs.files import write_json, write_text
from vitlab.training.cost import macs_breakdown


def measure_model(
    model: nn.Module, img_size: int, batch_size: int, steps: int, untimed_steps: int, device: str
) -> dict:
    """Parameters, MACs and training images per second (`steps` timed after `untimed_steps` untimed ones)."""
    record = {**param_counts(model), "img_size": img_size}
    record.update({f"cost/{k}_per_image": v for k, v in macs_breakdown(model, img_size).items()})
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    y = torch.randint(0, 2, (batch_size,), device=device)
    times = [timed_train_step(model, optimizer, x, y, device) for _ in range(untimed_steps + steps)][untimed_steps:]
    record["cost/train_img_per_s"] = round(batch_size * len(times) / sum(times), 2)
    record.update({"batch_size": batch_size, "device": device})
    return record


def write_report(record: dict, name: str, out_dir: Path) -> Path:
    from vitlab.bench.env import environment, header

    env = environment(str(record["device"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"model_{name}.json", {**record, "env": env})
    md = out_dir / f"model_{name}.md"
    write_text(
        md,
        f"{header(env)}\n\n"
        "| model | params | trainable | GMACs/img | GMACs/img without attention products | train img/s |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        f"| {name} @ {record['img_size']} px | {record['params/total']:,} | {record['params/trainable']:,} | "
        f"{record['cost/macs_per_image'] / 1e9:.3f} | {record['cost/macs_no_attn_per_image'] / 1e9:.3f} | "
        f"{record['cost/train_img_per_s']:.1f} (batch {record['batch_size']}, {record['device']}) |\n",
    )
    return md
