"""One token-mixer layer per benchmark entry: ours, composed from `configs/model/mixer/...` through Hydra,
and the reference packages on PyPI given the same settings.

Our layers are exactly what `model/mixer=<name>` installs in a training run (the kernel options come from
`configs/model/mixer/kernel/*.yaml`: Nyström 64 landmarks / 6 pinv iterations / 33-tap residual; Performer
⌊d·ln d⌋ features; Linformer k = 64), so the bench measures what trains. Only the map from a family to its
reference package lives here; the reference reads its settings from the same composed config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from omegaconf import DictConfig
from torch import nn

from vitlab.models.geometry import TokenGeometry


@dataclass(frozen=True)
class Entry:
    name: str
    family: str  # entries of one family are compared: ours against its reference package
    mixer: str  # the `model/mixer` config the layer (or the reference's settings) is composed from
    overrides: tuple[str, ...] = ()  # further Hydra overrides of the model config
    package: str | None = None  # the PyPI reference implementation it is; None: vitlab
    build_reference: Callable[[TokenGeometry, DictConfig], nn.Module] | None = field(default=None, repr=False)

    @property
    def reference(self) -> bool:
        return self.package is not None

    @property
    def label(self) -> str:
        return f"{self.package} (reference)" if self.package else self.name


def _nystrom_ref(geo: TokenGeometry, kernel: DictConfig) -> nn.Module:
    from nystrom_attention import NystromAttention

    return NystromAttention(
        geo.dim,
        dim_head=geo.dim // geo.num_heads,
        heads=geo.num_heads,
        num_landmarks=int(kernel.get("num_landmarks", 64)),
        pinv_iterations=int(kernel.get("pinv_iterations", 6)),
        residual=bool(kernel.get("residual", True)),
        residual_conv_kernel=int(kernel.get("residual_kernel", 33)),
    )


def _performer_ref(geo: TokenGeometry, kernel: DictConfig) -> nn.Module:
    from performer_pytorch import SelfAttention

    head_dim = geo.dim // geo.num_heads
    features = kernel.get("nb_features") or int(head_dim * math.log(head_dim))
    return SelfAttention(
        geo.dim, heads=geo.num_heads, dim_head=head_dim, nb_features=int(features), feature_redraw_interval=None
    )


def _linformer_ref(geo: TokenGeometry, kernel: DictConfig) -> nn.Module:
    from linformer import LinformerSelfAttention

    return LinformerSelfAttention(geo.dim, geo.seq_len, k=int(kernel.get("k", 64)), heads=geo.num_heads)


ENTRIES: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry("softmax_naive", "softmax_naive", "softmax", ("model.mixer.kernel.impl=naive",)),
        Entry("softmax_sdpa", "softmax_sdpa", "softmax", ("model.mixer.kernel.impl=sdpa",)),
        Entry("nystrom", "nystrom", "nystrom"),
        Entry("nystrom_ref", "nystrom", "nystrom", package="nystrom-attention", build_reference=_nystrom_ref),
        Entry("performer", "performer", "performer"),
        Entry("performer_ref", "performer", "performer", package="performer-pytorch", build_reference=_performer_ref),
        Entry("linformer", "linformer", "linformer"),
        Entry("linformer_ref", "linformer", "linformer", package="linformer", build_reference=_linformer_ref),
        Entry("fnet", "fnet", "fnet"),
        Entry("mlp_mixer", "mlp_mixer", "mlp_mixer"),
    )
}
REFERENCE_PACKAGES = tuple(e.package for e in ENTRIES.values() if e.package)


def reference_of(name: str) -> str | None:
    """The reference entry our entry `name` is compared with (None for references and entries without one)."""
    entry = ENTRIES[name]
    if entry.reference:
        return None
    return next((e.name for e in ENTRIES.values() if e.reference and e.family == entry.family), None)


def mixer_config(entry: Entry, extra: Sequence[str] = ()) -> DictConfig:
    """`model.mixer` of the training config composed with `model/mixer=<entry.mixer>` and the overrides."""
    from vitlab.compose import compose_config

    return compose_config("train", [f"model/mixer={entry.mixer}", *entry.overrides, *extra]).model.mixer


def build_layer(name: str, geo: TokenGeometry, extra: Sequence[str] = ()) -> nn.Module:
    """The layer of entry `name` for token geometry `geo`, as a training run would build it in every block."""
    from hydra.utils import instantiate

    from vitlab.models.mixers.attention import QKVAttention

    entry = ENTRIES[name]
    cfg = mixer_config(entry, extra)
    if entry.build_reference is not None:
        return entry.build_reference(geo, cfg.get("kernel") or DictConfig({}))
    installer = instantiate(cfg)  # functools.partial(install_mixer, kernel=... | mixer=...)
    kernel, mixer = installer.keywords.get("kernel"), installer.keywords.get("mixer")
    if mixer is not None:
        return mixer(geo=geo)
    head_dim = geo.dim // geo.num_heads
    return QKVAttention(
        geo.dim, geo.num_heads, kernel(geo=geo, num_heads=geo.num_heads, head_dim=head_dim, attn_drop=0.0)
    )
