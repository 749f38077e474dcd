"""Build a stock timm `VisionTransformer` with size overrides and optional pre-trained weights."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import timm
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitlab.errors import ConfigError
from vitlab.models.weights import WEIGHTS_KEY, load_file_weights, parse_weights

log = logging.getLogger(__name__)


def create_backbone(
    name: str,
    num_classes: int,
    weights: str | None = "none",
    img_size: int | None = None,
    patch_size: int | None = None,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    mlp_ratio: float | None = None,
    qkv_bias: bool | None = None,
    class_token: bool | None = None,
    global_pool: str | None = None,
    fc_norm: bool | None = None,
    drop_rate: float = 0.0,
    pos_drop_rate: float = 0.0,
    proj_drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    dynamic_img_size: bool | None = None,
    pretrained_head: bool = True,
    norm_eps: float | None = None,
) -> VisionTransformer:
    """Create timm model `name`, overriding any size given (None keeps timm's value).

    Args:
        name: a timm ViT architecture, e.g. `vit_tiny_patch16_224`.
        num_classes: classes of timm's own head; 0 removes it (a head slot then classifies).
        weights: `none` | `hub:<name.tag>` (timm download) | `file:<path>`; see `vitlab.models.weights`.
        drop_rate / pos_drop_rate / proj_drop_rate / attn_drop_rate / drop_path_rate: timm's dropouts on
            the pooled features, after the position embedding, after attention and MLP projections, on the
            attention matrix, and stochastic depth.
        norm_eps: ε of every LayerNorm; None keeps timm's (1e-6). PyTorch's default, which the ViX code
            uses, is 1e-5.
    """
    if norm_eps is not None and (isinstance(norm_eps, bool) or not isinstance(norm_eps, int | float) or norm_eps <= 0):
        raise ConfigError(f"model.backbone.norm_eps={norm_eps!r} is not allowed: it must be a number > 0 (or null).")
    if name not in timm.list_models():
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ConfigError(f"model.backbone.name={name!r} is not a timm model. Close matches: {close}.")
    overrides: dict[str, Any] = dict(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=qkv_bias,
        class_token=class_token,
        global_pool=global_pool,
        fc_norm=fc_norm,
        dynamic_img_size=dynamic_img_size,
    )
    overrides = {k: v for k, v in overrides.items() if v is not None}
    _check_sizes(name, overrides)
    spec = parse_weights(weights)
    kwargs = dict(
        num_classes=num_classes,
        drop_rate=drop_rate,
        pos_drop_rate=pos_drop_rate,
        proj_drop_rate=proj_drop_rate,
        attn_drop_rate=attn_drop_rate,
        drop_path_rate=drop_path_rate,
        **overrides,
    )
    if spec.source == "hub":
        arch = spec.ref.split(".")[0]
        if arch != name:
            raise ConfigError(
                f"{WEIGHTS_KEY}=hub:{spec.ref} is for architecture {arch!r} but model.backbone.name={name!r}; "
                "set both to the same architecture."
            )
        model = _from_hub(spec.ref, kwargs)
    else:
        model = timm.create_model(name, pretrained=False, **kwargs)
    if not isinstance(model, VisionTransformer):
        raise ConfigError(
            f"model.backbone.name={name!r} builds a {type(model).__name__}; vitlab needs a timm "
            "VisionTransformer (names starting with vit_, deit_ ...)."
        )
    if norm_eps is not None:
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = float(norm_eps)
    if spec.source == "file":
        load_file_weights(model, spec.ref, keep_head=pretrained_head)
    elif spec.source == "hub" and not pretrained_head and num_classes > 0:
        nn.init.trunc_normal_(model.head.weight, std=0.02)  # timm's own head init, as if built untrained
        nn.init.zeros_(model.head.bias)
    return model


def _from_hub(ref: str, kwargs: dict[str, Any]) -> VisionTransformer:
    """timm's pretrained model, quietly: from the local cache when the hub cannot be reached (one quick
    connection check instead of huggingface_hub's ten retries over 50 s), else downloaded."""
    online = _hub_reachable()
    quiet = logging.getLogger("huggingface_hub")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        with _offline(not online):
            return timm.create_model(ref, pretrained=True, **kwargs)
    except Exception as exc:
        reason = "not in the local cache, and huggingface.co cannot be reached" if not online else str(exc)
        raise ConfigError(
            f"{WEIGHTS_KEY}=hub:{ref} could not be loaded ({' '.join(reason.split())[:300]}). It needs network "
            "access to the Hugging Face hub (or a filled cache); offline, download the weights once elsewhere and "
            "use file:<path>."
        ) from exc
    finally:
        quiet.setLevel(level)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One request to the hub's endpoint through huggingface_hub's own session (its proxies, its endpoint)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # DNS, connection, proxy, TLS: all mean "not reachable now"
        return False
    return True


@contextmanager
def _offline(offline: bool) -> Iterator[None]:
    """huggingface_hub's offline mode (cache only) for the duration of a call."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline or previous
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _check_sizes(name: str, overrides: dict[str, Any]) -> None:
    """Reject sizes timm would silently floor or fail on deep inside the model."""
    img, patch = overrides.get("img_size"), overrides.get("patch_size")
    if patch is None:
        patch = timm.get_pretrained_cfg_value(name, "patch_size") or _patch_from_name(name)
    if img is not None and patch is not None and int(img) % int(patch) != 0:
        raise ConfigError(
            f"data.img_size={img} (the backbone's img_size) is not divisible by model.backbone.patch_size="
            f"{patch}. Choose an image size that is a multiple of {patch}, or another patch size."
        )
    dim, heads = overrides.get("embed_dim"), overrides.get("num_heads")
    if dim is not None and heads is not None and int(dim) % int(heads) != 0:
        raise ConfigError(f"model.backbone.embed_dim={dim} is not divisible by model.backbone.num_heads={heads}.")


def _patch_from_name(name: str) -> int | None:
    for part in name.split("_"):
        if part.startswith("patch") and part[5:].isdigit():
            return int(part[5:])
    return None
