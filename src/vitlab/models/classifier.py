"""`Classifier`: a timm ViT backbone plus a head; the one model object training sees."""

from __future__ import annotations

from collections.abc import Iterator

from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn


class Classifier(nn.Module):
    """A ViT backbone and its classification head.

    With `head=None` the backbone keeps timm's own head (`forward_features` + `forward_head`), so a stock
    timm model and its checkpoints behave exactly as in timm. With a head module, the backbone was built
    with `num_classes=0` and the head receives the normalised token sequence (B, N, C).
    """

    def __init__(self, backbone: VisionTransformer, head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.backbone.forward_features(x)  # (B, N, C)
        if self.head is None:
            return self.backbone.forward_head(tokens)
        return self.head(tokens)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the classifier head (what PEFT tables leave out of their counts)."""
        head = self.head if self.head is not None else self.backbone.get_classifier()
        return head.parameters()

    def no_weight_decay(self) -> set[str]:
        """Names exempt from weight decay, collected from every submodule that declares some
        (timm's `pos_embed`/`cls_token`; adapters such as step sizes add theirs)."""
        names: set[str] = set()
        for prefix, module in self.named_modules():
            if module is self or not callable(getattr(module, "no_weight_decay", None)):
                continue
            names |= {f"{prefix}.{n}" for n in module.no_weight_decay()}
        return names
