"""Data modules: every one exposes `num_classes`, `img_size` and train/val/test loaders of (image, label)."""
