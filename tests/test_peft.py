"""PEFT baselines (model/peft): parameter counts, identity at init, formulas, and frozen tensors staying frozen."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from conftest import ROOT
from vitlab.data.vtab_tasks import REFERENCE_ROWS
from vitlab.errors import ConfigError
from vitlab.models.adapters.step_size import install_step_sizes
from vitlab.models.backbone import create_backbone
from vitlab.models.build import build_classifier
from vitlab.models.classifier import Classifier
from vitlab.models.mixers.install import install_mixer
from vitlab.models.mixers.performer import PerformerKernel
from vitlab.models.summary import param_counts
from vitlab.training.optim import build_optimizer

VIT_B = functools.partial(create_backbone, name="vit_base_patch16_224", img_size=224)
TINY = functools.partial(
    create_backbone, name="vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2
)
# the shipped defaults: every test builds the methods from configs/model/peft/*.yaml, as `model/peft=<name>` does
SHIPPED = {path.stem: OmegaConf.load(path) for path in sorted((ROOT / "configs" / "model" / "peft").glob("*.yaml"))}
METHODS = {name: instantiate(cfg) for name, cfg in SHIPPED.items()}
R, BOTTLENECK, PROMPTS = SHIPPED["lora"].r, SHIPPED["adaptformer"].bottleneck, SHIPPED["vpt_deep"].num_tokens
PERFORMER = functools.partial(install_mixer, kernel=functools.partial(PerformerKernel, nb_features=8))
IDENTITY_AT_INIT = [m for m in METHODS if m != "vpt_deep"]
# ViT-B/16 (D = 768, L = 12, MLP 3072): the formulas behind the counts in docs/papers/ode.md#peft-baselines
D, L, MLP = 768, 12, 3072


def formula_counts(d: int, layers: int, mlp: int) -> dict[str, int]:
    """Trainable backbone parameters of each method for a ViT of width d, depth `layers`, MLP width `mlp`."""
    biases = 3 * d + d + mlp + d + 2 * d  # qkv, proj, fc1, fc2, norm1/2 biases of one block
    return {
        "linear_probe": 0,
        "bitfit": layers * biases + 2 * d,  # + patch embed and final norm biases
        "lora": layers * R * (d + 3 * d),  # A (r x D) and B (3D x r) on the fused qkv
        "lora_qv": layers * 2 * SHIPPED["lora_qv"].r * (d + d),
        "adaptformer": layers * (d * BOTTLENECK + BOTTLENECK + BOTTLENECK * d + d),
        "ssf": layers * 2 * biases + 2 * 2 * d,
        "vpt_deep": layers * PROMPTS * d,
    }


VIT_B_COUNTS = formula_counts(D, L, MLP)


VTAB_TABLE_ROWS = yaml.safe_load((ROOT / "configs" / "paper" / "ode" / "vtab1k.yaml").read_text())["rows"]


def published_counts() -> dict[str, tuple[float, float]]:
    """method -> (trainable parameters without the head in millions as the VTAB-1k table's source prints them,
    half a unit of the last printed digit): the reference rows (V-PETL Bench) and BitFit's "0.10M"."""
    published = {}
    for row in VTAB_TABLE_ROWS:
        method = next((o.split("=", 1)[1] for o in row["overrides"] if o.startswith("model/peft=")), None)
        if method is None:
            continue
        if "reference" in row:
            millions = REFERENCE_ROWS[row["reference"].split("/", 1)[1]].params_m
            published[method] = (millions, 0.5 * 10.0 ** -len(repr(millions).split(".")[1]))
        elif "params_paper" in row:
            published[method] = (row["params_paper"] / 1e6, 0.005)  # printed "0.10M"
    return published


PUBLISHED = published_counts()
PUBLISHED["lora_qv"] = PUBLISHED["lora"]  # not a table row: the same count as LoRA on the fused qkv (2 x r x 2D)


def tiny(method: str | None, seed: int = 0, **kw) -> Classifier:
    torch.manual_seed(seed)
    return build_classifier(TINY, num_classes=5, peft=METHODS[method] if method else None, **kw)


@pytest.mark.parametrize("method", list(VIT_B_COUNTS))
def test_vit_b_trainable_counts_match_the_formulas(method: str) -> None:
    model = build_classifier(VIT_B, num_classes=10, peft=METHODS[method])
    counts = param_counts(model)
    if method == "vpt_deep":  # ours: 10 prompt tokens per block; the reference row (0.56M) is not that setting
        note = next(row["note"] for row in VTAB_TABLE_ROWS if "model/peft=vpt_deep" in row["overrides"])
        assert f"({counts['params/trainable_no_head']:,} parameters)" in note, note
    else:  # the published count, at the precision it is printed with
        published, half_digit = PUBLISHED[method]
        got = counts["params/trainable_no_head"] / 1e6
        assert abs(got - published) <= half_digit, f"{method}: {got:.4f}M trainable, the tables print {published}M"
    assert counts["params/trainable_no_head"] == VIT_B_COUNTS[method]
    assert counts["params/trainable"] == VIT_B_COUNTS[method] + D * 10 + 10


def test_vit_b_full_fine_tuning_trains_everything() -> None:
    counts = param_counts(build_classifier(VIT_B, num_classes=10, peft=METHODS["full"]))
    assert counts["params/trainable"] == counts["params/total"] == 85_806_346  # 85.8M in the tables
    published, half_digit = PUBLISHED["full"]
    assert abs(counts["params/trainable_no_head"] / 1e6 - published) <= half_digit


@pytest.mark.parametrize("method", IDENTITY_AT_INIT)
def test_identity_at_init_after_the_models_own_initialisation(method: str) -> None:
    stock, tuned = tiny(None).eval(), tiny(method).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(tuned(x), stock(x))


def test_vpt_is_not_the_identity_but_keeps_the_token_count() -> None:
    stock, tuned = tiny(None).eval(), tiny("vpt_deep").eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        tokens, stock_tokens = tuned.backbone.forward_features(x), stock.backbone.forward_features(x)
    assert tokens.shape == stock_tokens.shape and not torch.allclose(tokens, stock_tokens)


@pytest.mark.parametrize("method", list(METHODS))
def test_optimiser_steps_train_the_method_and_leave_frozen_tensors_bit_identical(method: str) -> None:
    model = tiny(method).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, {"opt": "adamw", "lr": 1e-2, "weight_decay": 0.05})
    for _ in range(2):  # two steps: a zero-initialised factor (LoRA B, the adapter's up) first moves its partner
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
        optimizer.step()
    for name, p in model.named_parameters():
        if p.requires_grad:  # every trained tensor is wired into the output
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            assert not torch.equal(p, before[name]), name
        else:
            assert p.grad is None and torch.equal(p, before[name]), name


def test_lora_is_the_low_rank_update_of_the_fused_qkv() -> None:
    model = tiny("lora")
    qkv = model.backbone.blocks[0].attn.qkv
    a, b = qkv.lora_A["default"].weight, qkv.lora_B["default"].weight  # (r, D), (3D, r)
    nn.init.normal_(b)
    x = torch.randn(2, 7, 32)
    base = qkv.base_layer
    expected = base(x) + (8 / 8) * x @ a.T @ b.T
    assert torch.allclose(qkv(x), expected, atol=1e-5)


def test_lora_qv_updates_queries_and_values_but_not_keys() -> None:
    model = tiny("lora_qv")
    qkv = model.backbone.blocks[0].attn.qkv
    low_rank = qkv.lora_qv
    for up in (low_rank.q_up, low_rank.v_up):
        nn.init.normal_(up.weight)
    x = torch.randn(2, 7, 32)
    out, base = qkv(x), nn.functional.linear(x, qkv.weight, qkv.bias)
    dq = low_rank.q_up(low_rank.q_down(x))
    dv = low_rank.v_up(low_rank.v_down(x))
    assert torch.allclose(out[..., :32], base[..., :32] + dq, atol=1e-6)
    assert torch.equal(out[..., 32:64], base[..., 32:64])
    assert torch.allclose(out[..., 64:], base[..., 64:] + dv, atol=1e-6)


def test_adaptformer_adds_a_scaled_parallel_bottleneck_to_the_mlp_branch() -> None:
    model = tiny("adaptformer").eval()
    block = model.backbone.blocks[1]
    nn.init.normal_(block.adaptmlp.up.weight)
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        half = x + block.attn(block.norm1(x))
        adapter = 0.1 * block.adaptmlp.up(torch.relu(block.adaptmlp.down(half)))
        assert torch.allclose(block(x), half + block.mlp(block.norm2(half)) + adapter, atol=1e-6)


def test_ssf_scale_and_shift_merge_into_the_frozen_linear_weights() -> None:
    model = tiny("ssf").eval()
    qkv = model.backbone.blocks[0].attn.qkv
    nn.init.normal_(qkv.ssf.scale, 1.0, 0.5)
    nn.init.normal_(qkv.ssf.shift)
    x = torch.randn(2, 7, 32)
    merged = nn.functional.linear(x, qkv.ssf.scale[:, None] * qkv.weight, qkv.ssf.scale * qkv.bias + qkv.ssf.shift)
    assert torch.allclose(qkv(x), merged, atol=1e-5)  # SSF's re-parameterisation: no inference cost


def test_vpt_deep_matches_a_manual_forward_with_replaced_prompts() -> None:
    stock, tuned = tiny(None).eval(), tiny("vpt_deep").eval()
    vit, prompts = stock.backbone, [block.vpt.prompts for block in tuned.backbone.blocks]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        t = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        for layer, block in enumerate(vit.blocks):
            rest = t[:, 1:] if layer == 0 else t[:, 11:]
            t = block(torch.cat([t[:, :1], prompts[layer].expand(2, -1, -1), rest], dim=1))
        expected = vit.norm(torch.cat([t[:, :1], t[:, 11:]], dim=1))
        assert torch.allclose(tuned.backbone.forward_features(x), expected, atol=1e-6)


def test_a_vpt_state_saved_as_one_prompt_tensor_loads_into_the_per_block_prompts() -> None:
    """Checkpoints written while VPT kept every block's prompts in one (L, P, D) tensor still load, row by row."""
    saved, fresh = tiny("vpt_deep", seed=1), tiny("vpt_deep", seed=2)
    state = saved.state_dict()
    depth = len(saved.backbone.blocks)
    rows = [state.pop(f"backbone.blocks.{layer}.vpt.prompts") for layer in range(depth)]
    state["backbone.vpt_prompts.prompts"] = torch.stack(rows)  # the layout before the split
    fresh.load_state_dict(state)  # strict: every key placed, none left over
    assert all(torch.equal(b.vpt.prompts, r) for b, r in zip(fresh.backbone.blocks, rows, strict=True))


def test_lora_keeps_step_sizes_and_the_head_trainable() -> None:
    torch.manual_seed(0)
    model = build_classifier(
        TINY, num_classes=5, step_size=functools.partial(install_step_sizes, kind="scalar"), peft=METHODS["lora"]
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert sum(".ls" in n for n in trainable) == 2 * 3 and any(n.startswith("backbone.head") for n in trainable)
    assert all(".ls" in n or "lora_" in n or n.startswith("backbone.head") for n in trainable)


def test_linear_probe_freezes_what_a_slot_added() -> None:
    torch.manual_seed(0)
    model = build_classifier(
        TINY, num_classes=5, step_size=functools.partial(install_step_sizes), peft=METHODS["linear_probe"]
    )
    assert param_counts(model)["params/trainable_no_head"] == 0


@pytest.mark.parametrize("method", ["lora", "lora_qv", "ssf", "vpt_deep"])
def test_methods_that_hook_the_attention_refuse_a_vitlab_mixer(method: str) -> None:
    mixer = PERFORMER
    with pytest.raises(ConfigError, match=f"model/peft={method} needs"):
        build_classifier(TINY, num_classes=5, mixer=mixer, peft=METHODS[method])


@pytest.mark.parametrize("method", ["bitfit", "adaptformer"])
def test_methods_that_leave_the_attention_alone_compose_with_a_mixer(method: str) -> None:
    """With a Performer mixer: the mixer stays in every block, at init the model computes exactly what the mixer
    model without the method computes, the method's tensors are the formula's count at these sizes, and a step
    on them alone (the head held still) changes the output."""
    torch.manual_seed(0)
    plain = build_classifier(TINY, num_classes=5, mixer=PERFORMER).eval()
    torch.manual_seed(0)
    model = build_classifier(TINY, num_classes=5, mixer=PERFORMER, peft=METHODS[method]).eval()
    assert all(isinstance(block.attn.kernel, PerformerKernel) for block in model.backbone.blocks)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    assert param_counts(model)["params/trainable_no_head"] == formula_counts(32, 3, 4 * 32)[method]
    tuned = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.head")]
    opt = torch.optim.SGD(tuned, lr=1.0)
    torch.nn.functional.cross_entropy(model(x), torch.arange(4)).backward()
    opt.step()
    with torch.no_grad():
        change = (model(x) - plain(x)).abs().max().item()
    assert change > 1e-3 * plain(x).abs().max().item(), f"{method}: one step moved the logits by {change:.2e}"


def test_state_dict_round_trip_keeps_the_adapters() -> None:
    for method in ("lora", "lora_qv", "adaptformer", "ssf", "vpt_deep"):
        source, target = tiny(method, seed=0), tiny(method, seed=1)
        for p in source.parameters():
            p.data.add_(0.01)
        target.load_state_dict(copy.deepcopy(source.state_dict()))
        x = torch.randn(2, 3, 16, 16)
        with torch.no_grad():
            assert torch.equal(source.eval()(x), target.eval()(x)), method
