"""The image folder `vitlab-bench data` reads: natural-looking JPEGs in the ImageFolder layout, made once.

Random noise images would decode slower than photographs and flat colours much faster, so each image is a smooth
colour gradient with a few blurred shapes and a little sensor-like noise, saved as JPEG quality 90 at sizes
around ImageNet's median (about 375 x 500 px), which gives files of tens of kB as photographs of that size are.
The folder is cached under the bench's out_dir and reused when its `spec.json` matches (docs/performance.md,
"Input pipeline").
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SPLITS = ("train", "val", "test")


def _image(rng: random.Random, label: int) -> Image.Image:
    """One image: a gradient between two colours (its direction and hue vary with the class), shapes, noise."""
    w, h = rng.randint(440, 500), rng.randint(330, 375)
    top, bottom = np.array([rng.randint(0, 255) for _ in range(3)]), np.array([rng.randint(0, 255) for _ in range(3)])
    top[label % 3] = 200  # a colour cue per class, so the labels mean something
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    tilt = np.linspace(-0.3, 0.3, w)[None, :, None] * rng.uniform(-1, 1)
    pixels = (top * (1 - t) + bottom * t + 255 * tilt).clip(0, 255)
    img = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 8)):
        x0, y0 = rng.randint(0, w - 40), rng.randint(0, h - 40)
        box = (x0, y0, x0 + rng.randint(30, w // 2), y0 + rng.randint(30, h // 2))
        fill = tuple(rng.randint(0, 255) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 3.0)))
    noise = np.random.default_rng(rng.randint(0, 2**32 - 1)).normal(0, 12, (h, w, 3))  # ~60 kB files
    return Image.fromarray((np.asarray(img, dtype=np.float32) + noise).clip(0, 255).astype(np.uint8))


def make_folder(root: Path, images: int, classes: int = 10, eval_images: int = 0, seed: int = 0) -> Path:
    """`<root>/{train,val,test}/class_XX/*.jpg`: `images` training images, `eval_images` (at least one per
    class) in val/ and in test/; reused when it was made with the same settings."""
    spec: dict[str, Any] = {"images": images, "classes": classes, "eval_images": eval_images, "seed": seed}
    spec |= {"quality": 90, "version": 1}
    marker = root / "spec.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return root
    for stale in (root, root.parent / f"{root.name}.shards"):  # the folder and its packed copy are remade together
        if stale.exists():
            shutil.rmtree(stale)
    rng = random.Random(seed)
    counts = {"train": images, "val": max(eval_images, classes), "test": max(eval_images, classes)}
    for split in SPLITS:
        for i in range(counts[split]):
            label = i % classes  # zero-padded names: natural and plain sorting agree (timm sorts naturally)
            folder = root / split / f"class_{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            _image(rng, label).save(folder / f"{split}_{i:05d}.jpg", quality=90)
    marker.write_text(json.dumps(spec))
    return root
