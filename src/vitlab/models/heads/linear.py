"""A linear classifier on pooled tokens: timm's own head, as an explicit slot option."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from vitlab.errors import ConfigError
from vitlab.models.geometry import TokenGeometry

Pool = Literal["token", "avg"]


def pool_tokens(x: Tensor, pool: Pool, num_prefix_tokens: int) -> Tensor:
    """(B, N, C) -> (B, C): the class token, or the mean of the patch tokens (prefix tokens excluded)."""
    if pool == "token":
        return x[:, 0]
    return x[:, num_prefix_tokens:].mean(dim=1)


class LinearHead(nn.Module):
    """Pool, dropout, linear. With the same weights it equals timm's `forward_head` (no `fc_norm`)."""

    def __init__(self, geo: TokenGeometry, num_classes: int, pool: Pool = "token", drop_rate: float = 0.0):
        super().__init__()
        if pool == "token" and geo.num_prefix_tokens == 0:
            raise ConfigError("model.head.pool='token' needs a class token; this backbone has none. Use 'avg'.")
        self.pool, self.num_prefix_tokens, self.num_classes = pool, geo.num_prefix_tokens, num_classes
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(geo.dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(pool_tokens(x, self.pool, self.num_prefix_tokens)))

    @torch.no_grad()
    def copy_from_timm(self, timm_head: nn.Linear) -> None:
        """Take a timm head's weights (used by tests and by transfer from a stock checkpoint)."""
        self.fc.load_state_dict(timm_head.state_dict())
