"""Pre-trained weights go into the composed model: loaded tensors stay bit-identical, a slot's own init never
touches them, exports of composed models load back strictly, the report counts what it says, and a slot
that would replace loaded tensors is refused with the paragraph (or allowed by model.replace_pretrained)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file, save_file

from conftest import compose_cfg
from vitlab.cli.train import export_backbone
from vitlab.errors import find_config_error

SIZES = [  # vit_32 at 16 px: 4x4 patches of 4 px, dim 32, 2 blocks
    "data.img_size=16",
    "model.backbone.patch_size=4",
    "model.backbone.embed_dim=32",
    "model.backbone.depth=2",
    "model.backbone.num_heads=2",
]
EIT = ["model/mixer=eit", "model/stem=eit", "model.stem.kernel_size=3", "model.stem.stride=1", "model.stem.pool_size=4"]
COMPOSED = {
    "eit": EIT,
    "hybrid": ["model/stem=conv"],
    "nystrom": ["~model/stem", "model/mixer=nystrom", "model.mixer.kernel.num_landmarks=4"],
    "linformer": ["~model/stem", "model/mixer=linformer", "model.mixer.kernel.k=8"],
}


def build(overrides: list[str], classes: int = 10) -> torch.nn.Module:
    return instantiate(compose_cfg([*SIZES, *overrides]).model, num_classes=classes)


def stock_file(tmp_path: Path, classes: int = 10) -> tuple[Path, dict[str, torch.Tensor]]:
    """A stock timm ViT of the same architecture, saved as timm keys (what `file:` weights usually are)."""
    torch.manual_seed(3)
    vit = timm.create_model("vit_base_patch32_224", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                            mlp_ratio=2.0, num_classes=classes)  # fmt: skip
    path = tmp_path / "stock.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path, load_file(str(path))


def test_the_readme_transfer_command_keeps_every_loaded_tensor(tmp_path: Path) -> None:
    """`model/step_size=scalar model/head=memory_ode` on pre-trained weights (the README's transfer row): the
    default stem (auto) keeps the loaded patch embedding; every tensor of the file but the head is loaded."""
    path, tensors = stock_file(tmp_path)
    model = build([f"model.backbone.weights=file:{path}", "model/step_size=scalar", "model/head=memory_ode"])
    report, state = model.weights_report, model.backbone.state_dict()
    assert "patch_embed.proj.weight" in state  # timm's patch embedding, not a fresh conv stem
    for key, value in tensors.items():
        if not key.startswith("head."):
            assert torch.equal(state[key], value), key
    heads = {"head.weight", "head.bias"}
    assert report.loaded == sorted(set(tensors) - heads) and set(report.dropped) == heads
    backbone_new = [k for k in report.new if not k.startswith("model.head.")]
    assert backbone_new == sorted(set(state) - set(tensors))  # the step sizes
    assert backbone_new == [f"blocks.{b}.ls{i}.h_param" for b in (0, 1) for i in (1, 2)]  # the four step sizes
    assert sorted(k for k in report.new if k.startswith("model.head.")) == [
        f"model.head.{k}" for k in sorted(model.head.state_dict())
    ]  # the memory-ODE head slot: new, trained from its own init
    assert not any(p.requires_grad for n, p in model.backbone.named_parameters() if n in report.loaded)


def test_the_eit_mixer_initialises_before_loading_so_loaded_weights_survive(tmp_path: Path) -> None:
    source = build(EIT)
    export_backbone(source, tmp_path / "eit.safetensors")
    model = build([*EIT, f"model.backbone.weights=file:{tmp_path / 'eit.safetensors'}"])
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key  # official_init did not touch them


@pytest.mark.parametrize("name", sorted(COMPOSED))
def test_an_export_of_a_composed_model_loads_back_strictly(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build(COMPOSED[name]).eval()
    export_backbone(source, tmp_path / "w.safetensors")
    model = build([*COMPOSED[name], f"model.backbone.weights=file:{tmp_path / 'w.safetensors'}"]).eval()
    report = model.weights_report
    assert report.new == [] and report.dropped == {} and len(report.loaded) == len(source.backbone.state_dict())
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(model(x), source(x))


def test_a_slot_replacing_loaded_tensors_is_refused_unless_allowed(tmp_path: Path) -> None:
    path, _ = stock_file(tmp_path)
    with pytest.raises(Exception) as refused:  # Hydra's instantiate wraps it
        build([f"model.backbone.weights=file:{path}", "model/stem=conv"])
    message = str(find_config_error(refused.value))
    for part in ("model/stem", "patch_embed.proj.weight", "~model/stem", "model.replace_pretrained=[patch_embed]"):
        assert part in message, message
    model = build([f"model.backbone.weights=file:{path}", "model/stem=conv", "model.replace_pretrained=[patch_embed]"])
    report = model.weights_report
    assert {"patch_embed.proj.weight", "patch_embed.proj.bias"} <= set(report.dropped)
    assert "model/stem" in report.dropped["patch_embed.proj.weight"]
    assert any(k.startswith("patch_embed.") for k in report.new)  # the conv stem, trained from its own init
    with pytest.raises(Exception) as refused:
        build([f"model.backbone.weights=file:{path}", "~model/stem", "model/mixer=eit"])
    assert "model/mixer slot would replace" in str(find_config_error(refused.value))
    assert "blocks.0.attn.qkv.weight" in str(find_config_error(refused.value))


def test_without_weights_the_default_model_keeps_its_conv_stem() -> None:
    model = build([])
    assert model.weights_report is None and "patch_embed.body.0.weight" in model.backbone.state_dict()


def test_the_default_hybrid_model_loads_its_own_export_and_keeps_its_conv_stem(tmp_path: Path) -> None:
    """model/stem=auto skips the conv stem only for weights that bring timm's patch embedding."""
    torch.manual_seed(0)
    source = build([]).eval()
    export_backbone(source, tmp_path / "hybrid.safetensors")
    model = build([f"model.backbone.weights=file:{tmp_path / 'hybrid.safetensors'}"]).eval()
    assert "patch_embed.body.0.weight" in model.backbone.state_dict() and model.weights_report.new == []
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), source(x))


def test_a_vitlab_checkpoint_fills_the_same_head_slot_and_slot_tensors_stay_trainable(tmp_path: Path) -> None:
    args = ["~model/stem", "model/step_size=channel", "model/head=memory_ode"]
    torch.manual_seed(0)
    source = build(args).eval()
    state = {f"model.{k}": v for k, v in source.state_dict().items()}  # what vitlab-train's checkpoints hold
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "run.ckpt")
    model = build([*args, f"model.backbone.weights=file:{tmp_path / 'run.ckpt'}"]).eval()
    report = model.weights_report
    assert report.new == [] and report.dropped == {} and any(k.startswith("model.head.") for k in report.loaded)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), source(x))
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{b}.ls{i}.h_param" for b in (0, 1) for i in (1, 2)}  # loaded, yet the slot's own
