"""Token mixers for `blocks[i].attn` (the `model/mixer` slot).

Two kinds, both called like timm's `Attention` (`mixer(x, attn_mask=None)` on (B, N, C) tokens):
- `QKVAttention` keeps timm's `qkv`/`proj` projections and delegates the (q, k, v) -> output step to an
  `AttentionKernel`: softmax, Performer, Linformer or Nyström. RoPE, when installed, rotates q and k here.
- Mixers without queries and keys: `FNetMixer`, `TokenMixingMLP` (MLP-Mixer).
"""

from vitlab.models.mixers.attention import AttentionKernel, QKVAttention
from vitlab.models.mixers.install import install_mixer

__all__ = ["AttentionKernel", "QKVAttention", "install_mixer"]
