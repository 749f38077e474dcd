"""Token stems for the `model/stem` slot: drop-in replacements for timm's `patch_embed`."""
