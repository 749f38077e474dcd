"""`module.compile=true`: the whole model is compiled in place and trains; compiled = eager numerically.

CPU inductor generates C++ and needs a C compiler (`cc`/`gcc`); without one the inductor test is skipped and
the `aot_eager` test (graph capture + AOT autograd, no code generation) still checks the model compiles.
Inductor's first compilation of even a one-block ViT takes ~25 s on 2 shared cores, hence `slow`.
Speed (img/s with and without) is measured by `vitlab-bench compile` (`make bench`), never here.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from conftest import TINY, compose_cfg
from vitlab.training.module import ClassificationModule

ONE_BLOCK = [*TINY, "model.backbone.depth=1", "~model/stem"]
HAS_C_COMPILER = any(shutil.which(cc) for cc in ("cc", "gcc", "clang"))


def tiny_module(compile: bool) -> ClassificationModule:
    torch.manual_seed(0)
    model = instantiate(compose_cfg(ONE_BLOCK).model, num_classes=10)
    return ClassificationModule(model, num_classes=10, optim={"opt": "adamw", "lr": 1e-3}, compile=compile)


def test_compile_wraps_the_whole_model_in_place() -> None:
    """The Classifier calls `backbone.forward_features`, so compiling the backbone alone compiled nothing."""
    module = tiny_module(compile=True)
    keys = list(module.state_dict())
    module.configure_model()
    module.configure_model()  # Lightning calls it again for trainer.test: still one wrapper
    assert module.model._compiled_call_impl is not None
    assert list(module.state_dict()) == keys and not any("_orig_mod" in k for k in keys)
    assert tiny_module(compile=False).model._compiled_call_impl is None


def test_model_compiles_with_aot_eager_and_matches_eager() -> None:
    torch._dynamo.reset()
    module = tiny_module(compile=False)
    compiled = tiny_module(compile=False).model
    compiled.load_state_dict(module.model.state_dict())
    compiled.compile(backend="aot_eager")
    x = torch.randn(4, 3, 16, 16)
    out_eager, out_compiled = module.model(x), compiled(x)
    torch.testing.assert_close(out_compiled, out_eager, rtol=1e-5, atol=1e-5)
    out_eager.sum().backward()
    out_compiled.sum().backward()
    for (name, a), b in zip(module.model.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_C_COMPILER, reason="CPU inductor needs a C compiler (cc/gcc/clang); none on PATH")
def test_module_compile_true_trains_with_cpu_inductor(tmp_path) -> None:
    from vitlab.training.components import build_datamodule, build_module, build_trainer

    torch._dynamo.reset()
    cfg = compose_cfg([*ONE_BLOCK, "module.compile=true", f"paths.output_dir={tmp_path}", "~logger"])
    with open_dict(cfg):
        cfg.trainer.max_steps = 3
        cfg.trainer.limit_val_batches = 0
        cfg.trainer.num_sanity_val_steps = 0
        cfg.callbacks = None
        del cfg["hydra"]  # composed for the CLI; nothing here runs inside a Hydra job
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule.num_classes)
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 3 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert module.model._compiled_call_impl is not None
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(module.model(x), module.model.forward(x), rtol=1e-4, atol=1e-4)  # compiled, eager
