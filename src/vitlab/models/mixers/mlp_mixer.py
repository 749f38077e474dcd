"""MLP-Mixer token mixing (Tolstikhin et al. 2021, eq. 1): an MLP across the token axis, shared by channels."""

from __future__ import annotations

from torch import Tensor, nn

from vitlab.errors import ConfigError
from vitlab.models.geometry import TokenGeometry


class TokenMixingMLP(nn.Module):
    """U = X + W₂ σ(W₁ LN(X)ᵀ)ᵀ, hidden width ⌊expansion · N⌋ (ViX's Mixer: expansion 1, Conv1d k=1 ≡ Linear).

    The block's `norm1`, residual and channel MLP are timm's; this module replaces only the attention.
    """

    has_qk = False
    # what vitlab-eval analyse=attention says instead of drawing maps (the token MLP is not linear in the tokens)
    no_attention_matrix = "MLP-Mixer mixes tokens with an MLP across the token axis, without an attention matrix"

    def __init__(self, geo: TokenGeometry, expansion: float = 1.0, drop: float = 0.0) -> None:
        super().__init__()
        if geo.dynamic_img_size:
            raise ConfigError(
                "model/mixer=mlp_mixer mixes a fixed number of tokens, but model.backbone.dynamic_img_size=true. "
                "Use a fixed image size."
            )
        hidden = int(expansion * geo.seq_len)
        if hidden < 1:
            raise ConfigError(f"model.mixer.mixer.expansion={expansion} gives an empty hidden layer.")
        self.seq_len = geo.seq_len
        self.fc1 = nn.Linear(geo.seq_len, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, geo.seq_len)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("token mixing takes no attention mask")
        if x.shape[1] != self.seq_len:
            raise ValueError(f"MLP-Mixer was built for {self.seq_len} tokens but got {x.shape[1]}")
        x = x.transpose(1, 2)  # (B, C, N): mix along N
        x = self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
        return x.transpose(1, 2)
