"""The training module: loss, metrics, weight-decay groups and the per-step schedule."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from vitlab.errors import ConfigError
from vitlab.models.backbone import create_backbone
from vitlab.models.build import build_classifier
from vitlab.training.cost import macs_per_image
from vitlab.training.module import ClassificationModule, accuracy_metrics
from vitlab.training.optim import build_optimizer, build_scheduler

SMALL = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


def model():
    return build_classifier(functools.partial(create_backbone, "vit_tiny_patch16_224", **SMALL), num_classes=5)


def test_weight_decay_only_on_weight_matrices_and_never_on_frozen_tensors() -> None:
    m = model()
    m.backbone.blocks[0].requires_grad_(False)
    opt = build_optimizer(m, {"opt": "adamw", "lr": 1e-3, "weight_decay": 0.05})
    names = {id(p): n for n, p in m.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    exempt = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "backbone.pos_embed" in exempt and "backbone.cls_token" in exempt
    assert all(n.endswith(".bias") or "norm" in n or n in ("backbone.pos_embed", "backbone.cls_token") for n in exempt)
    assert all(m.get_parameter(n).ndim >= 2 for n in decayed) and "backbone.head.weight" in decayed
    assert not any(n.startswith("backbone.blocks.0.") for n in decayed | exempt)  # frozen: not in the optimiser
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == trainable


def test_no_trainable_parameters_is_a_clear_error() -> None:
    m = model().requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(m, {"opt": "adamw", "lr": 1e-3})


def test_schedule_warms_up_per_step_then_follows_a_cosine() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, {"sched": "cosine", "warmup_epochs": 2, "warmup_lr": 0.0, "min_lr": 0.0}, 10, 100)
    lrs = []
    for step in range(100):
        sched.step_update(num_updates=step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(0.5) and lrs[19] == pytest.approx(0.95)  # linear warmup
    # after warmup: timm's cosine over the whole run, 0.5 * (1 + cos(pi * t / T))
    assert lrs[60] == pytest.approx(0.5 * (1 + math.cos(math.pi * 60 / 100)))
    assert lrs[99] < 0.01


def test_label_smoothing_loss_equals_the_formula() -> None:
    module = ClassificationModule(model(), 5, optim={"opt": "adamw", "lr": 1e-3}, label_smoothing=0.1)
    logits, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    soft = torch.full((8, 5), 0.1 / 5).scatter_add_(1, y[:, None], torch.full((8, 1), 0.9))
    expected = -(soft * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(module.train_loss(logits, y), expected)


def test_mixup_trains_on_soft_targets_but_scores_hard_labels() -> None:
    mixup = {"mixup_alpha": 0.8, "cutmix_alpha": 0.0, "prob": 1.0, "mode": "batch"}
    module = ClassificationModule(model(), 5, optim={"opt": "adamw", "lr": 1e-3}, mixup=mixup, label_smoothing=0.1)
    assert module.mixup is not None
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    mixed, targets = module.mixup(x.clone(), y)
    assert targets.shape == (4, 5) and torch.allclose(targets.sum(-1), torch.ones(4))
    assert not torch.equal(mixed, x)
    loss = module.training_step((x, y), 0)
    assert loss.isfinite()


def test_accuracy_is_micro_averaged_top_k() -> None:
    metrics = accuracy_metrics(3, "test/")
    logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])
    y = torch.tensor([0, 0, 1, 2])
    out = metrics(logits, y)
    assert out["test/acc"] == pytest.approx(0.5)  # 2 of 4 (macro averaging would give 1/3)
    assert "test/acc_top5" not in out  # 3 classes: top-5 would be 1 by construction, so it is not reported


def test_macs_of_a_linear_layer() -> None:
    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3 * 4 * 4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    assert macs_per_image(Flat(), img_size=4) == 48 * 10


def test_learning_rate_scales_with_the_global_batch() -> None:
    from vitlab.training.optim import scale_lr

    assert scale_lr({"opt": "adamw", "lr": 1e-3, "lr_base_batch": 512}, 1024) == {"opt": "adamw", "lr": 2e-3}
    assert scale_lr({"opt": "adamw", "lr": 1e-3, "lr_base_batch": None}, 1024) == {"opt": "adamw", "lr": 1e-3}
    with pytest.raises(ConfigError, match="lr_base_batch"):
        scale_lr({"lr": 1e-3, "lr_base_batch": 0}, 64)


@pytest.mark.parametrize("mixer", [None, "softmax"])
def test_attention_macs_are_the_two_matrix_products(mixer: str | None) -> None:
    """q kᵀ and softmax·v cost N²·D MACs each per block, for timm's fused attention and vitlab's kernel."""
    from hydra.utils import instantiate

    from conftest import compose_cfg
    from vitlab.training.cost import macs_breakdown

    overrides = ["~model/stem", "data.img_size=16", "model.backbone.depth=2", "model.backbone.embed_dim=32"]
    model = instantiate(compose_cfg(overrides + ([f"model/mixer={mixer}"] if mixer else [])).model, num_classes=10)
    macs = macs_breakdown(model, 16)
    tokens = (16 // 4) ** 2 + 1
    assert macs["macs"] - macs["macs_no_attn"] == 2 * 2 * tokens * tokens * 32
