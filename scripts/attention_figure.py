"""The ViX attention figure: a softmax ViT next to the attention that Nyström, Performer and Linformer imply.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/attention_figure.py    # trains what is missing (4 x ~2 min), draws

Trains (or reuses, when `<runs>/<mixer>/results.json` says ok) four digits models, seed 0: the softmax, Nyström,
Performer and Linformer rows of the ViX digits study (`experiment=vix/digits_study`, the rows of
configs/paper/vix/mini_digits.yaml).
For the first test images it draws, per mixer, the class token's attention in the last block (head mean) and, for
each linear mixer, softmax(q kᵀ/√d) of that same model's q and k beside it; and it measures, per block, how far
each linear mixer's implied matrix is from softmax of its own q and k over the whole test split (the approximation
error the ViX question is about, not a distance between different models): the row-wise total-variation distance
½ Σⱼ |Aᵢⱼ − Sᵢⱼ| averaged over rows, heads and images, and ‖A − S‖_F / ‖S‖_F. Output: the PNG (`--png`), and the
numbers as JSON and as a markdown table on stdout. docs/papers/vix.md#attention-maps shows both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import open_dict

import vitlab.cli.resolvers  # noqa: F401  (the ${vitlab.*} resolvers of the configs)
from vitlab.analysis.attention_maps import model_attention, relative_frobenius, row_tv_distance, token_maps
from vitlab.cli.eval import load_trained, run_config
from vitlab.cli.eval_analyse import test_images
from vitlab.compose import compose_config
from vitlab.plots.attention import display_images, heatmap_grid

ROOT = Path(__file__).resolve().parents[1]
# the study's rows (configs/paper/vix/mini_digits.yaml): kernel sizes scaled to its 65 tokens
MIXERS = {
    "softmax": [],
    "nystrom": ["model/mixer=nystrom", "model.mixer.kernel.num_landmarks=13"],
    "performer": ["model/mixer=performer"],
    "linformer": ["model/mixer=linformer", "model.mixer.kernel.k=16"],
}
LABELS = {"softmax": "softmax ViT", "nystrom": "Nyström", "performer": "Performer", "linformer": "Linformer"}


def train(name: str, run_dir: Path) -> dict:
    """The run's results.json, training it first (vitlab-train, one thread) unless it finished before."""
    results = run_dir / "results.json"
    if results.is_file() and json.loads(results.read_text()).get("status") == "ok":
        return json.loads(results.read_text())
    args = ["experiment=vix/digits_study", "seed=0", *MIXERS[name], "trainer.enable_progress_bar=false"]
    print(f"training {name}: vitlab-train {' '.join(args)}", flush=True)
    start = time.time()
    subprocess.run([sys.executable, "-m", "vitlab.cli.train", *args, f"hydra.run.dir={run_dir}"], cwd=ROOT, check=True)
    print(f"  {time.time() - start:.0f} s", flush=True)
    return json.loads(results.read_text())


def load(checkpoint: str):
    cfg = compose_config("eval", [f"ckpt_path={checkpoint}", "trainer.accelerator=cpu"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(ROOT / "outputs" / "attention_figure" / "eval")
    module, datamodule = load_trained(run_config(cfg))
    return module.model, datamodule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "attention_figure")
    parser.add_argument("--images", type=int, default=6, help="test images drawn")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "img" / "vix_attention_digits.png")
    args = parser.parse_args()
    torch.manual_seed(0)
    columns, titles, numbers, shown = [], [], {}, None
    for name in MIXERS:
        record = train(name, args.runs / name)
        model, datamodule = load(record["best_ckpt"])
        everything = test_images(datamodule, len(datamodule.test_set))  # the distances: the whole test split
        maps = model_attention(model, everything)
        drawn = slice(0, args.images)
        last = maps.blocks[-1]
        mean_map = token_maps(last.implied[drawn].mean(dim=1), maps.num_prefix_tokens, True, maps.grid)
        columns.append(mean_map.numpy())
        titles.append(LABELS[name].replace(" ", "\n") if name == "softmax" else f"{LABELS[name]}\n(implied)")
        if name != "softmax":
            exact = token_maps(last.softmax[drawn].mean(dim=1), maps.num_prefix_tokens, True, maps.grid)
            columns.append(exact.numpy())
            titles.append(f"{LABELS[name]}:\nsoftmax(qkᵀ)")
            numbers[name] = {
                "test_acc": record.get("test/acc"),
                "tv": [row_tv_distance(b.implied, b.softmax) for b in maps.blocks],
                "rel_frobenius": [relative_frobenius(b.implied, b.softmax) for b in maps.blocks],
                # how far the implied rows are from distributions: their sums, and the share of |A| that is negative
                "row_sum_min_max": [
                    [float(b.implied.sum(-1).min()), float(b.implied.sum(-1).max())] for b in maps.blocks
                ],
                "negative_share": [
                    float(b.implied.clamp(max=0).abs().sum() / b.implied.abs().sum()) for b in maps.blocks
                ],
                "images": len(everything),
            }
        else:
            numbers[name] = {"test_acc": record.get("test/acc")}
        shown = display_images(everything[drawn].numpy())
    grid = np.stack(columns, axis=1)  # (images, columns, rows, cols)
    title = "Class-token attention, last block, head mean (digits, 65 tokens): each mixer's own model"
    args.png.parent.mkdir(parents=True, exist_ok=True)
    heatmap_grid(shown, grid, titles, args.png, title=title, cell=1.1)
    (args.runs / "distances.json").write_text(json.dumps(numbers, indent=2))
    print_table(numbers)
    print(f"\nfigure: {args.png} ({args.png.stat().st_size // 1024} KiB); numbers: {args.runs / 'distances.json'}")


def print_table(numbers: dict) -> None:
    linear = [n for n in MIXERS if n != "softmax"]
    blocks = len(numbers[linear[0]]["tv"])
    print("\n| block | " + " | ".join(f"{LABELS[n]} TV | {LABELS[n]} rel. Frob." for n in linear) + " |")
    print("|---:|" + "---:|---:|" * len(linear))
    for i in range(blocks):
        cells = " | ".join(f"{numbers[n]['tv'][i]:.3f} | {numbers[n]['rel_frobenius'][i]:.3f}" for n in linear)
        print(f"| {i} | {cells} |")
    print("| test/acc | " + " | ".join(f"{100 * numbers[n]['test_acc']:.1f} % | " for n in linear) + " |")


if __name__ == "__main__":
    main()
