"""The `model/peft` slot: parameter-efficient fine-tuning baselines (docs/papers/ode.md#peft-baselines).

Each method is a function `(Classifier, **options) -> Classifier` bound by Hydra (`_partial_: true`) and
applied by `build_classifier` *after* `model.freeze`, so it only unfreezes or adds what it trains; the head
always trains. Parameter counts on ViT-B/16 (head excluded, as PEFT tables report):

    linear_probe 0 · full 85.8M · bitfit 102,912 · lora (r=8, fused qkv) 294,912 · lora_qv (r=8) 294,912
    adaptformer (bottleneck 8) 156,768 · ssf 205,824 · vpt_deep (10 tokens) 92,160

Methods that add tensors (LoRA, AdaptFormer, SSF, VPT) hook the stock timm modules instead of replacing
them, so the pre-trained tensors keep their names and `weights=file:` checkpoints still load. All but VPT
start as the identity (the model's output equals the pre-trained model's).
"""
