"""One token-mixer layer per benchmark entry: ours (by kernel/mixer) and the reference packages on PyPI.

All entries use the same shape (dim, heads, sequence length) and the ViX code's settings: Nyström 64
landmarks / 6 pinv iterations / 33-tap residual; Performer ⌊d·ln d⌋ features; Linformer k = 64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from vitlab.models.geometry import TokenGeometry
from vitlab.models.mixers.attention import QKVAttention
from vitlab.models.mixers.fnet import FNetMixer
from vitlab.models.mixers.linformer import LinformerKernel
from vitlab.models.mixers.mlp_mixer import TokenMixingMLP
from vitlab.models.mixers.nystrom import NystromKernel
from vitlab.models.mixers.performer import PerformerKernel
from vitlab.models.mixers.softmax import SoftmaxKernel


@dataclass(frozen=True)
class Entry:
    name: str
    family: str  # what it is compared with: the vitlab entry of the same family
    package: str | None  # the PyPI reference implementation it is; None: vitlab
    build: Callable[[TokenGeometry], nn.Module]

    @property
    def reference(self) -> bool:
        return self.package is not None

    @property
    def label(self) -> str:
        return f"{self.package} (reference)" if self.package else self.name


def _ours(kernel: Callable[..., nn.Module]) -> Callable[[TokenGeometry], nn.Module]:
    def build(geo: TokenGeometry) -> nn.Module:
        head_dim = geo.dim // geo.num_heads
        return QKVAttention(geo.dim, geo.num_heads, kernel(geo=geo, num_heads=geo.num_heads, head_dim=head_dim))

    return build


def _nystrom_ref(geo: TokenGeometry) -> nn.Module:
    from nystrom_attention import NystromAttention

    return NystromAttention(geo.dim, dim_head=geo.dim // geo.num_heads, heads=geo.num_heads, num_landmarks=64)


def _performer_ref(geo: TokenGeometry) -> nn.Module:
    from performer_pytorch import SelfAttention

    head_dim = geo.dim // geo.num_heads
    return SelfAttention(
        geo.dim,
        heads=geo.num_heads,
        dim_head=head_dim,
        nb_features=int(head_dim * math.log(head_dim)),
        feature_redraw_interval=None,
    )


def _linformer_ref(geo: TokenGeometry) -> nn.Module:
    from linformer import LinformerSelfAttention

    return LinformerSelfAttention(geo.dim, geo.seq_len, k=64, heads=geo.num_heads)


ENTRIES: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry("softmax_naive", "softmax_naive", None, _ours(lambda **kw: SoftmaxKernel(**kw, impl="naive"))),
        Entry("softmax_sdpa", "softmax_sdpa", None, _ours(SoftmaxKernel)),
        Entry("nystrom", "nystrom", None, _ours(NystromKernel)),
        Entry("nystrom_ref", "nystrom", "nystrom-attention", _nystrom_ref),
        Entry("performer", "performer", None, _ours(PerformerKernel)),
        Entry("performer_ref", "performer", "performer-pytorch", _performer_ref),
        Entry("linformer", "linformer", None, _ours(LinformerKernel)),
        Entry("linformer_ref", "linformer", "linformer", _linformer_ref),
        Entry("fnet", "fnet", None, lambda geo: FNetMixer(geo)),
        Entry("mlp_mixer", "mlp_mixer", None, lambda geo: TokenMixingMLP(geo)),
    )
}
