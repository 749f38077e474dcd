"""Image transforms through timm's `create_transform`, with augmentation chosen by config."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PIL import Image
from timm.data import auto_augment, create_transform

from vitlab.data.augment_grammar import check_augment_string, check_color_jitter
from vitlab.errors import ConfigError


def _posterize_any_bits(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize, also for 0 bits. RandAugment's `inc1` policies keep 4 down to 0 bits as the magnitude
    rises (0 at magnitude 10, which `mstd0.5` noise reaches); Pillow >= 13 refuses 0 bits and would crash the
    epoch. Keeping no bit gives a black image, as timm intends and older Pillow returned."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return _timm_posterize(img, bits_to_keep, **kwargs)


_timm_posterize = auto_augment.posterize
POSTERIZE_OPS = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")


def use_posterize_any_bits() -> None:
    """Let timm's RandAugment posterize to 0 bits (`_posterize_any_bits`). timm reads `NAME_TO_OP` when a
    policy is built, so this runs where vitlab builds a transform, not when a module is imported: importing
    vitlab leaves timm as it is."""
    for op in POSTERIZE_OPS:
        auto_augment.NAME_TO_OP[op] = _posterize_any_bits


# Defaults of `data.augment` for natural-image data sets; every key can be overridden from the CLI.
DEFAULT_AUGMENT: dict[str, Any] = {
    "hflip": 0.5,
    "scale": (0.08, 1.0),  # RandomResizedCrop area range
    "randaugment": None,  # e.g. "rand-m9-mstd0.5-inc1"
    "color_jitter": None,
    "random_erasing": 0.0,  # probability
}


def build_transform(
    img_size: int,
    is_training: bool,
    mean: Sequence[float],
    std: Sequence[float],
    augment: Mapping[str, Any] | str | None = None,
    crop_pct: float = 1.0,
    interpolation: str = "bicubic",
) -> Callable:
    """timm's train or eval transform; evaluation resizes to `img_size / crop_pct` then centre-crops.

    `augment="none"` (or null) trains on the evaluation transform: no augmentation at all (the ViX recipe).
    """
    if isinstance(augment, str) and augment != "none":
        raise ConfigError(f"data.augment={augment!r}: give a mapping of {sorted(DEFAULT_AUGMENT)} or 'none'.")
    if not is_training or augment is None or augment == "none":
        return create_transform(
            input_size=img_size,
            is_training=False,
            mean=tuple(mean),
            std=tuple(std),
            crop_pct=crop_pct,
            interpolation=interpolation,
        )
    opts = {**DEFAULT_AUGMENT, **(augment or {})}
    unknown = sorted(set(opts) - set(DEFAULT_AUGMENT))
    if unknown:
        raise ConfigError(f"data.augment has unknown keys {unknown}; allowed: {sorted(DEFAULT_AUGMENT)}.")
    # the strings timm would half-read or assert on at the first epoch: refused here, naming the key
    check_augment_string("data.augment.randaugment", opts["randaugment"])
    check_color_jitter("data.augment.color_jitter", opts["color_jitter"])
    if opts["randaugment"]:
        use_posterize_any_bits()
    return create_transform(
        input_size=img_size,
        is_training=True,
        mean=tuple(mean),
        std=tuple(std),
        interpolation=interpolation,
        hflip=opts["hflip"],
        vflip=0.0,
        scale=tuple(opts["scale"]),
        auto_augment=opts["randaugment"],
        color_jitter=opts["color_jitter"],
        re_prob=opts["random_erasing"],
    )
