"""Models: a stock timm ViT backbone, adapters attached at its seams, and a classification head."""
