"""Adapters: functions `(vit) -> vit` that change a built timm ViT at one seam (see `models/build.py`)."""
