"""Classification heads for the `model/head` slot: `head(geo, num_classes) -> nn.Module` on (B, N, C) tokens."""
