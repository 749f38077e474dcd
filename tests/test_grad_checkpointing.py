"""`model.grad_checkpointing` (vitlab.models.grad_checkpointing): for every model composition, composed through the
Hydra configs as vitlab-train composes it, one training step with every block checkpointed gives the loss and
every parameter gradient of the same step without checkpointing — bit for bit (torch.equal), in float64, in
training mode with dropout and drop-path on, with timm's drop-path (global generator) and with vitlab's seeded
drop-path (per-sample seeds set) — and every block really is recomputed in the backward pass."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from timm.layers import set_reentrant_ckpt

from conftest import compose_cfg
from vitlab.errors import ConfigError, find_config_error
from vitlab.models.classifier import Classifier
from vitlab.models.grad_checkpointing import enable_grad_checkpointing
from vitlab.models.seeded_drop_path import sample_seeds

# dim 32, 2 blocks of 2 heads, 32 px (patch 4: 64 tokens), and every dropout of the backbone on
TINY = [
    "tiny=model",
    "data.img_size=32",
    "model.backbone.drop_path_rate=0.3",
    "model.backbone.proj_drop_rate=0.2",
    "model.backbone.attn_drop_rate=0.2",
]
BATCH, CLASSES = 6, 5
SEEDS = [11 + 1009 * i for i in range(BATCH)]

COMPOSITIONS = {
    "stock": ["~model/stem"],
    "conv_stem": [],  # the default: model/stem=auto, the conv stem from scratch
    **{f"mixer={m}": [f"model/mixer={m}"] for m in ("softmax", "performer", "linformer", "nystrom")},
    "mixer=fnet": ["model/mixer=fnet"],
    "mixer=mlp_mixer": ["model/mixer=mlp_mixer"],
    **{f"mixer=eit/{k}": ["model/mixer=eit", f"model/mixer/kernel={k}"] for k in ("softmax", "performer", "nystrom")},
    "mixer=eit/linformer": ["model/mixer=eit", "model/mixer/kernel=linformer"],
    "mixer=performer/batch": ["model/mixer=performer", "model.mixer.kernel.stabiliser=batch"],
    **{f"step_size={k}": [f"model/step_size={k}", "model.freeze=none"] for k in ("scalar", "channel", "dynamic")},
    "step_size=dynamic/frozen": ["model/step_size=dynamic"],  # model.freeze=auto: the backbone is frozen
    **{f"pos_embed={p}": [f"model/pos_embed={p}"] for p in ("learned", "none", "rope1d", "rope2d")},
    "head=linear": ["model/head=linear", "model.head.drop_rate=0.2"],
    "head=memory_ode": ["model/head=memory_ode", "model.head.drop_rate=0.2"],
    "peft=full": ["model/peft=full"],
    "peft=bitfit": ["model/peft=bitfit"],
    "peft=lora": ["model/peft=lora", "model.peft.dropout=0.2"],
    "peft=lora_qv": ["model/peft=lora_qv", "model.peft.dropout=0.2"],
    "peft=ssf": ["model/peft=ssf"],
    "peft=adaptformer": ["model/peft=adaptformer", "model.peft.dropout=0.2"],
    "peft=vpt_deep": ["model/peft=vpt_deep", "model.peft.dropout=0.2", "model.peft.num_tokens=3"],
}
# the EIT preset itself (EIT stem, decreasing convolution, no position embedding, official init), shrunk
EIT_PRESET = [
    "model=eit_mini",
    "data.img_size=32",
    "model.backbone.embed_dim=40",
    "model.backbone.depth=2",
    "model.backbone.num_heads=2",
    "model.backbone.drop_path_rate=0.3",
    "model.backbone.proj_drop_rate=0.2",
    "model.backbone.attn_drop_rate=0.2",
]


def build(overrides: list[str], checkpointing: bool) -> Classifier:
    cfg = compose_cfg([*overrides, f"model.grad_checkpointing={str(checkpointing).lower()}"])
    torch.manual_seed(0)
    return instantiate(cfg.model, num_classes=CLASSES).double().train()


def training_step(model: Classifier, seeded: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[int]]:
    """Loss, gradients and each block's number of calls of one step; the RNG seeded the same way every time."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, 32, 32, generator=gen, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    calls = [0] * len(model.backbone.blocks)
    handles = [
        block.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, block in enumerate(model.backbone.blocks)
    ]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1234)
    with sample_seeds(SEEDS) if seeded else nullcontext():
        loss = F.cross_entropy(model(x), y)
        loss.backward()  # the recompute happens here: inside the seeded step, as under StepSeeding
    for handle in handles:
        handle.remove()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, calls


def assert_checkpointing_changes_nothing(overrides: list[str], seeded: bool) -> None:
    plain, checkpointed = build(overrides, False), build(overrides, True)
    checkpointed.load_state_dict(plain.state_dict())  # the same weights and buffers (Performer's features)
    loss, grads, calls = training_step(plain, seeded)
    loss_ckpt, grads_ckpt, calls_ckpt = training_step(checkpointed, seeded)
    depth = len(plain.backbone.blocks)
    # without: one call per block; with: the forward and the recompute in backward
    assert calls == [1] * depth and calls_ckpt == [2] * depth, (calls, calls_ckpt)
    assert torch.equal(loss, loss_ckpt), (loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys() and grads
    for name, grad in grads.items():
        assert grad is not None and grads_ckpt[name] is not None, name
        assert torch.equal(grad, grads_ckpt[name]), (name, (grad - grads_ckpt[name]).abs().max())
    # a block's state between two of its calls is released by the recompute too (no stale activation held)
    for module in checkpointed.modules():
        assert getattr(module, "_context", None) is None and getattr(module, "residual_input", None) is None
    # dropout and drop-path were live: the blocks' output depends on the draw
    x = torch.randn(BATCH, 3, 32, 32, dtype=torch.float64)
    features = []
    for torch_seed, seeds in ((1, SEEDS), (2, [s + 1 for s in SEEDS])):
        torch.manual_seed(torch_seed)
        with sample_seeds(seeds) if seeded else nullcontext(), torch.no_grad():
            features.append(plain.backbone.forward_features(x))
    assert not torch.equal(*features)


@pytest.mark.parametrize("seeded", [False, True], ids=["timm_drop_path", "seeded_drop_path"])
@pytest.mark.parametrize("name", list(COMPOSITIONS))
def test_checkpointing_gives_the_same_loss_and_gradients(name: str, seeded: bool) -> None:
    assert_checkpointing_changes_nothing([*COMPOSITIONS[name], *TINY], seeded)


@pytest.mark.parametrize("seeded", [False, True], ids=["timm_drop_path", "seeded_drop_path"])
def test_the_eit_preset_checkpoints_to_the_same_gradients(seeded: bool) -> None:
    assert_checkpointing_changes_nothing(EIT_PRESET, seeded)


def test_off_by_default_and_a_non_bool_is_refused() -> None:
    model = instantiate(compose_cfg(TINY).model, num_classes=CLASSES)
    assert compose_cfg(TINY).model.grad_checkpointing is False and not model.backbone.grad_checkpointing
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match=r"model\.grad_checkpointing=.* is not a bool"):
            enable_grad_checkpointing(model, bad)  # type: ignore[arg-type]


def refusal(overrides: list[str]) -> str:
    with pytest.raises(Exception) as info:
        build(overrides, True)
    error = find_config_error(info.value)
    assert error is not None, info.value
    return str(error)


def test_timm_reentrant_checkpointing_is_refused() -> None:
    """TIMM_REENTRANT_CKPT=1: behind a frozen stem no block would get a gradient; refused, not silently wrong."""
    set_reentrant_ckpt(True)
    try:
        assert "TIMM_REENTRANT_CKPT" in refusal(["model/peft=lora", *TINY])
    finally:
        set_reentrant_ckpt(False)
    assert build(["model/peft=lora", *TINY], True).backbone.grad_checkpointing


def test_a_model_that_never_backpropagates_into_a_block_is_refused() -> None:
    """A linear probe trains the head only: checkpointing would change nothing, so the key is refused."""
    assert "nothing to checkpoint" in refusal(["model/peft=linear_probe", *TINY])
    # frozen blocks behind a trainable stem still backpropagate through the blocks: allowed
    model = build(["model/peft=linear_probe", *TINY], False)
    model.backbone.patch_embed.requires_grad_(True)
    assert enable_grad_checkpointing(model, True).backbone.grad_checkpointing


def test_a_run_resumes_with_checkpointing_switched_on_but_not_with_another_architecture(tmp_path) -> None:
    """`model.grad_checkpointing` changes memory, not the model: a checkpoint saved without it resumes with it
    (e.g. after running out of memory), and one saved before the key existed too; another width is refused."""
    from omegaconf import OmegaConf

    from vitlab.cli.train import check_resume

    saved = compose_cfg(["tiny=model"])
    config = OmegaConf.to_container(saved, resolve=False)
    config["model"] = OmegaConf.to_container(saved.model, resolve=True)
    before_the_key = {**config, "model": {k: v for k, v in config["model"].items() if k != "grad_checkpointing"}}
    for name, stored in (("off", config), ("older", before_the_key)):
        ckpt = tmp_path / f"{name}.ckpt"
        torch.save({"state_dict": {}, "hyper_parameters": {"config": stored}}, ckpt)
        check_resume(compose_cfg(["tiny=model", "model.grad_checkpointing=true", f"ckpt_path={ckpt}"]))
        with pytest.raises(ConfigError, match="another model configuration"):
            check_resume(compose_cfg(["tiny=model", "model.backbone.embed_dim=64", f"ckpt_path={ckpt}"]))
