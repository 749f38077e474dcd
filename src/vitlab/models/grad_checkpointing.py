"""Activation (gradient) checkpointing of every transformer block: `model.grad_checkpointing=true`.

It switches on timm's own mechanism (`VisionTransformer.set_grad_checkpointing`): `forward_features` then runs
`timm.models.checkpoint_seq(blocks, x)`, one non-reentrant `torch.utils.checkpoint` segment per block. A block
keeps only its input during the forward pass and is run a second time in the backward pass to rebuild its
activations, trading about one extra block forward per step for the memory of the blocks' activations.

What is checkpointed: each `blocks[i]` as called, i.e. with every slot installed in it and every hook on it:
vitlab's mixers (softmax, Performer, Linformer, Nyström, FNet, MLP-Mixer, EIT's decreasing convolution),
RoPE, step sizes, and the PEFT wrappers (LoRA on `qkv`, SSF, AdaptFormer, VPT-Deep's hooks on the blocks),
because `build_classifier` calls this after `peft`. What is not: the stem, the position embedding, the final
norm and the head (a head is not a block; the memory-ODE head keeps its activations, or uses its adjoint).

Why a recompute gives the forward's values (the test `tests/test_grad_checkpointing.py` checks the loss and
every gradient against a run without checkpointing, for every composition):
- Dropout and timm's drop-path: `torch.utils.checkpoint` restores the RNG state of the forward for the
  recompute (`preserve_rng_state`), so the masks are drawn again identically.
- `SeededDropPath` (docs/resume.md) reads the batch's sample seeds at call time, so the recompute in
  backward draws the forward's masks only while the seeds are still set: `StepSeeding` clears them in
  `on_train_batch_end`, after the backward and the optimizer step. A loop of one's own must call
  `backward()` inside `sample_seeds(...)` as well.
- State held between two calls inside a block (the dynamic step size's `_context`, AdaptFormer's
  `residual_input`, both set by a pre-hook on the norm and consumed later in the same block) is set again
  by the recompute before it is read.
- Performer's random features are redrawn in `on_train_batch_start` (`RandomFeatureRedraw`), never between a
  forward and its backward.

Refused (one `ConfigError` each): a value that is not a bool; timm's reentrant checkpointing
(`TIMM_REENTRANT_CKPT=1`), which gives no gradient to a segment whose input does not require one — with a
frozen stem (PEFT, `model.freeze=backbone`) the first block's input, and so every block's parameters; and a
model in which nothing at or before the blocks trains (`model/peft=linear_probe`): the backward pass never
enters a block, no block activation is kept, and the key would change nothing.
timm bypasses checkpointing when blocks are called with an attention mask (`forward_features(x, attn_mask)`);
`Classifier` never passes one.
"""

from __future__ import annotations

from timm.layers import use_reentrant_ckpt
from torch import nn

from vitlab.errors import ConfigError
from vitlab.models.classifier import Classifier
from vitlab.models.seams import AFTER_BLOCKS


def enable_grad_checkpointing(model: Classifier, enabled: bool) -> Classifier:
    """Checkpoint every block of `model.backbone` when `enabled` (`model.grad_checkpointing`); refuse what
    would make its gradients differ from a run without checkpointing."""
    if not isinstance(enabled, bool):
        raise ConfigError(
            f"model.grad_checkpointing={enabled!r} is not a bool. Allowed: true (recompute every block's "
            "activations in the backward pass, less memory for one more block forward per step) or false."
        )
    if not enabled:
        return model
    if use_reentrant_ckpt():
        raise ConfigError(
            "model.grad_checkpointing=true with timm's reentrant checkpointing (the environment variable "
            "TIMM_REENTRANT_CKPT is on): reentrant checkpointing gives no gradient to a block whose input does "
            "not require one, which is every block behind a frozen stem (PEFT, model.freeze=backbone). Unset "
            "TIMM_REENTRANT_CKPT (timm's default, non-reentrant checkpointing) or set model.grad_checkpointing=false."
        )
    backbone = model.backbone
    if not callable(getattr(backbone, "set_grad_checkpointing", None)):
        raise ConfigError(
            f"model.grad_checkpointing=true needs a timm VisionTransformer backbone with set_grad_checkpointing; "
            f"this backbone is a {type(backbone).__name__}. Set model.grad_checkpointing=false."
        )
    if not _trains_through_blocks(backbone):
        raise ConfigError(
            "model.grad_checkpointing=true has nothing to checkpoint: no tensor of the blocks or before them "
            "trains (e.g. model/peft=linear_probe), so the backward pass never enters a block and no block "
            "activation is kept. Set model.grad_checkpointing=false."
        )
    backbone.set_grad_checkpointing(True)
    return model


def _trains_through_blocks(backbone: nn.Module) -> bool:
    """Whether the backward pass goes through the blocks: a trainable tensor in them or before them (stem,
    tokens, position embedding, VPT's prompts), i.e. anywhere in the backbone except after the blocks."""
    return any(p.requires_grad for name, p in backbone.named_parameters() if name.split(".", 1)[0] not in AFTER_BLOCKS)
