"""FNet mixing (Lee-Thorp et al. 2022, eq. 3): the real part of a 2-D DFT over (sequence, hidden). No parameters."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vitlab.models.geometry import TokenGeometry
from vitlab.models.mixers.attention import at_least_fp32


class FNetMixer(nn.Module):
    """y = Re(FFT_seq(FFT_hidden(x))): ViX's `fft(fft(x, dim=-1), dim=-2).real` inside the pre-norm residual."""

    has_qk = False
    # what vitlab-eval analyse=attention says instead of drawing maps: Re(F_N X F_D) mixes channels too, so no one
    # (N, N) matrix acting on every channel alike stands for it
    no_attention_matrix = (
        "FNet mixes tokens with a 2-D Fourier transform over tokens and channels, without an attention matrix"
    )

    def __init__(self, geo: TokenGeometry | None = None) -> None:
        super().__init__()

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("FNet mixing takes no attention mask")
        # torch.fft has no bf16/fp16 kernels on every device: transform in fp32, return in the input dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            (x32,) = at_least_fp32(x)
            return torch.fft.fft2(x32, dim=(-2, -1)).real.to(x.dtype)
