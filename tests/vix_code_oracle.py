"""An independent float64 oracle of the ViX code's CIFAR-10 models (pranavphoenix/VisionXformer, `Models/*.py`).

Written from the code's equations, step by step in the code's own order, on a vitlab model's tensors (read by
name, every one of them used): a test can then say that a preset computes what the code computes. Nothing
here imports vitlab's mixers; docs/papers/vix-code-parity.md lists the equations and where they come from.

    x = [cls; Embed(img)] (+ P)                         Embed: Linear(3→D) per pixel, or 3 convs 3×3 (hybrid)
    x = x + Mix(LN(x));  x = x + W₂ GELU(W₁ LN(x))      ×depth, LayerNorm eps 1e-5 (nn.LayerNorm's default)
    logits = Head(LN(x₀))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LN_EPS = 1e-5  # nn.LayerNorm's default: every PreNorm and the head in the code
HEADS, HEAD_DIM = 4, 32


@dataclass(frozen=True)
class CodeModel:
    """One script of the code: its embedding, position encoding and token mixer."""

    stem: str  # linear | conv
    position: str  # learned | rope
    mixer: str  # softmax | nystrom | performer | linformer | fnet
    one_kv_head: bool = False  # Linformer: True only in ViL.py


def _models() -> dict[str, CodeModel]:
    models = {}
    for mixer, name in (("softmax", "vit"), ("nystrom", "vin"), ("performer", "vip"), ("linformer", "vil")):
        for stem, prefix in (("linear", ""), ("conv", "hybrid_")):
            for position, suffix in (("learned", ""), ("rope", "_rope")):
                one_kv = mixer == "linformer" and stem == "linear" and position == "learned"
                models[f"{prefix}{name}{suffix}"] = CodeModel(stem, position, mixer, one_kv)
    models["fnet"] = CodeModel("linear", "learned", "fnet")
    models["hybrid_fnet"] = CodeModel("conv", "learned", "fnet")
    return models


CODE_MODELS = _models()  # preset name (configs/experiment/vix/cifar10/<name>.yaml) -> the code's model


class Tensors:
    """A model's state dict, read by name; `unused()` names what the oracle never read."""

    def __init__(self, state: dict[str, Tensor], detach: bool = True) -> None:
        """detach=False keeps the given (float64) leaf tensors, so that their gradients can be compared."""
        self.state = {k: v.detach().to(torch.float64) if detach else v for k, v in state.items()}
        self.read: set[str] = set()

    def __call__(self, name: str) -> Tensor:
        self.read.add(name)
        return self.state[name]

    def unused(self) -> set[str]:
        return set(self.state) - self.read


def layer_norm(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased, as nn.LayerNorm
    return (x - mean) / torch.sqrt(var + LN_EPS) * w + b


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    return x @ w.T + (b if b is not None else 0)


def gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))  # nn.GELU(): the exact form


def heads(t: Tensor) -> Tensor:
    """'b n (h d) -> b h n d'."""
    b, n, _ = t.shape
    return t.reshape(b, n, -1, HEAD_DIM).transpose(1, 2)


def merge(t: Tensor) -> Tensor:
    """'b h n d -> b n (h d)'."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def rotation_table(length: int, dim: int = HEAD_DIM) -> Tensor:
    """The code's FixedPositionalEmbedding buffer: [sin | cos] of position × 1/10000^(2i/d), built in float32."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    angles = torch.einsum("i,j->ij", torch.arange(length, dtype=torch.float), inv_freq)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


def rotate(t: Tensor, table: Tensor) -> Tensor:
    """apply_rotary_pos_emb on one tensor: t·cos + rotate_every_two(t)·sin, each frequency used twice."""
    half = table.shape[-1] // 2
    sin, cos = (part.to(t.dtype).repeat_interleave(2, dim=-1) for part in (table[:, :half], table[:, half:]))
    pairs = t.reshape(*t.shape[:-1], -1, 2)
    turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).reshape(t.shape)
    return t * cos + turned * sin


def softmax_attention(w: Tensors, p: str, x: Tensor, table: Tensor | None) -> Tensor:
    """ViT.py: to_qkv (no bias), dots = q kᵀ · d^-1/2, softmax, · v, to_out."""
    q, k, v = (heads(t) for t in linear(x, w(p + "qkv.weight")).chunk(3, dim=-1))
    if table is not None:
        q, k = rotate(q, table[: x.shape[1]]), rotate(k, table[: x.shape[1]])
    attn = torch.softmax(q @ k.transpose(-1, -2) * HEAD_DIM**-0.5, dim=-1)
    return linear(merge(attn @ v), w(p + "proj.weight"), w(p + "proj.bias"))


def code_pinv(x: Tensor, iters: int = 6) -> Tensor:
    """moore_penrose_iter_pinv: Z₀ = Xᵀ / (max row sum · max column sum over the whole batch)."""
    z = x.transpose(-1, -2) / (x.abs().sum(dim=-1).max() * x.abs().sum(dim=-2).max())
    eye = torch.eye(x.shape[-1], dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - (xz @ (15 * eye - (xz @ (7 * eye - xz)))))
    return z


def nystrom_attention(w: Tensors, p: str, x: Tensor, table: Tensor | None, m: int = 64) -> Tensor:
    """ViN.py's NystromAttention: zero rows in front up to a multiple of m, landmarks = segment sums / l, the
    three softmaxes unmasked, (A₁ pinv(A₂)) (A₃ V) + depthwise conv(V), to_out, the last n rows kept."""
    n = x.shape[1]
    if n % m:
        x = F.pad(x, (0, 0, m - n % m, 0))
    q, k, v = (heads(t) for t in linear(x, w(p + "qkv.weight")).chunk(3, dim=-1))
    if table is not None:  # after padding: the table's first n + pad rows
        q, k = rotate(q, table[: x.shape[1]]), rotate(k, table[: x.shape[1]])
    q = q * HEAD_DIM**-0.5
    seg = math.ceil(n / m)
    q_land = q.reshape(*q.shape[:2], m, seg, HEAD_DIM).sum(dim=-2) / seg
    k_land = k.reshape(*k.shape[:2], m, seg, HEAD_DIM).sum(dim=-2) / seg
    attn1 = torch.softmax(q @ k_land.transpose(-1, -2), dim=-1)
    attn2 = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1)
    attn3 = torch.softmax(q_land @ k.transpose(-1, -2), dim=-1)
    out = (attn1 @ code_pinv(attn2)) @ (attn3 @ v)
    conv_w = w(p + "kernel.res_conv.weight")  # Conv2d(h, h, (33, 1), padding (16, 0), groups h) over (n, d)
    out = out + F.conv2d(v, conv_w, padding=(conv_w.shape[2] // 2, 0), groups=HEADS)
    return linear(merge(out), w(p + "proj.weight"), w(p + "proj.bias"))[:, -n:]


def favor_features(data: Tensor, projection: Tensor, is_query: bool, eps: float = 1e-4) -> Tensor:
    """softmax_kernel of the code: ratio·(exp(x̂ω − ‖x̂‖²/2 − max) + ε), x̂ = d^-1/4 x; the max is per query
    row, and over the whole tensor (every sample and head) for keys."""
    normalizer, ratio = data.shape[-1] ** -0.25, projection.shape[0] ** -0.5
    dash = (normalizer * data) @ projection.T
    diag = (data**2).sum(dim=-1, keepdim=True) / 2.0 * normalizer**2
    top = dash.max(dim=-1, keepdim=True).values if is_query else dash.max()
    return ratio * (torch.exp(dash - diag - top) + eps)


def performer_attention(w: Tensors, p: str, x: Tensor, table: Tensor | None) -> Tensor:
    """ViP.py: to_q/to_k/to_v with bias, FAVOR+ linear attention out = φ(Q)(φ(K)ᵀV) / φ(Q)Σφ(K), to_out."""
    wq, wk, wv = w(p + "qkv.weight").chunk(3)
    bq, bk, bv = w(p + "qkv.bias").chunk(3)
    q, k, v = heads(linear(x, wq, bq)), heads(linear(x, wk, bk)), heads(linear(x, wv, bv))
    if table is not None:
        q, k = rotate(q, table[: x.shape[1]]), rotate(k, table[: x.shape[1]])
    projection = w(p + "kernel.projection_matrix")
    q, k = favor_features(q, projection, True), favor_features(k, projection, False)
    d_inv = 1.0 / (q @ k.sum(dim=-2)[..., None])
    out = (q @ (k.transpose(-1, -2) @ v)) * d_inv
    return linear(merge(out), w(p + "proj.weight"), w(p + "proj.bias"))


def linformer_attention(w: Tensors, p: str, x: Tensor, table: Tensor | None, one_kv_head: bool) -> Tensor:
    """ViL.py's LinformerSelfAttention (share_kv): values are the keys (before any rotation); keys and values
    projected along the sequence by E (n × k); heads of 32; softmax(q Kᵀ · d^-1/2) V; to_out."""
    b, n, _ = x.shape
    kv_dim = HEAD_DIM if one_kv_head else HEADS * HEAD_DIM
    wq, wk = w(p + "qkv.weight").split([HEADS * HEAD_DIM, kv_dim])
    queries, keys = linear(x, wq), linear(x, wk)
    values = keys
    if table is not None:
        queries, keys = merge(rotate(heads(queries), table[:n])), merge(rotate(heads(keys), table[:n]))
    e = w(p + "kernel.proj_k")
    keys, values = torch.einsum("bnd,nk->bkd", keys, e), torch.einsum("bnd,nk->bkd", values, e)
    queries = queries.reshape(b, n, HEADS, -1).transpose(1, 2)
    keys, values = (
        t.reshape(b, e.shape[1], -1, HEAD_DIM).transpose(1, 2).expand(-1, HEADS, -1, -1) for t in (keys, values)
    )
    attn = torch.softmax(queries @ keys.transpose(-1, -2) * HEAD_DIM**-0.5, dim=-1)
    out = (attn @ values).transpose(1, 2).reshape(b, n, -1)
    return linear(out, w(p + "proj.weight"), w(p + "proj.bias"))


def embed(w: Tensors, img: Tensor, spec: CodeModel) -> Tensor:
    """Rearrange('b c h w -> b (h w) c') + Linear(3, D) at patch 1, or the three 3×3 convolutions first."""
    if spec.stem == "conv":
        x = img
        for i in (0, 2, 4):
            x = F.conv2d(
                x, w(f"backbone.patch_embed.body.{i}.weight"), w(f"backbone.patch_embed.body.{i}.bias"), padding=1
            )
        return x.flatten(2).transpose(1, 2)
    tokens = img.permute(0, 2, 3, 1).reshape(img.shape[0], -1, img.shape[1])
    return linear(tokens, w("backbone.patch_embed.proj.weight")[:, :, 0, 0], w("backbone.patch_embed.proj.bias"))


def mlp_residual(w: Tensors, p: str, x: Tensor) -> Tensor:
    """The blocks' PreNorm feed-forward residual: x + W₂ GELU(W₁ LN(x) + b₁) + b₂."""
    h = layer_norm(x, w(p + "norm2.weight"), w(p + "norm2.bias"))
    return (
        linear(
            gelu(linear(h, w(p + "mlp.fc1.weight"), w(p + "mlp.fc1.bias"))),
            w(p + "mlp.fc2.weight"),
            w(p + "mlp.fc2.bias"),
        )
        + x
    )


def code_logits(w: Tensors, img: Tensor, spec: CodeModel, depth: int = 4) -> Tensor:
    """The code's model (eval mode: every dropout off) on `img`, in float64."""
    img = img.to(torch.float64)
    x = embed(w, img, spec)
    x = torch.cat((w("backbone.cls_token").expand(x.shape[0], -1, -1), x), dim=1)
    table = None
    if spec.position == "learned":
        x = x + w("backbone.pos_embed")[:, : x.shape[1]]
    else:  # max_seq_len 1025, or 1088 for Nyström (rotation after padding)
        table = rotation_table(1088 if spec.mixer == "nystrom" else x.shape[1])
    for i in range(depth):
        p = f"backbone.blocks.{i}."
        h = layer_norm(x, w(p + "norm1.weight"), w(p + "norm1.bias"))
        a = p + "attn."
        if spec.mixer == "softmax":
            mixed = softmax_attention(w, a, h, table)
        elif spec.mixer == "nystrom":
            mixed = nystrom_attention(w, a, h, table)
        elif spec.mixer == "performer":
            mixed = performer_attention(w, a, h, table)
        elif spec.mixer == "linformer":
            mixed = linformer_attention(w, a, h, table, spec.one_kv_head)
        else:  # FNetBlock
            mixed = torch.fft.fft(torch.fft.fft(h, dim=-1), dim=-2).real
        x = mixed + x
        x = mlp_residual(w, p, x)
    cls = layer_norm(x[:, 0], w("backbone.norm.weight"), w("backbone.norm.bias"))
    return linear(cls, w("backbone.head.weight"), w("backbone.head.bias"))


def mixer_logits(w: Tensors, img: Tensor, conv: bool, depth: int = 4) -> Tensor:
    """MLPMixer.py / HybridMLPMixer.py (Tiny ImageNet): patches 2×2 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'
    + Linear(12, D), or convolutions 3→32 (stride 2) →64→D; per block PreNormResidual token mixing
    (Conv1d k=1 over the 1024 tokens: W₂ GELU(W₁ X + b₁) + b₂) and channel mixing; LayerNorm, token mean, Linear."""
    img = img.to(torch.float64)
    if conv:
        x = img
        for i, stride in ((0, 2), (2, 1), (4, 1)):
            x = F.conv2d(
                x,
                w(f"backbone.patch_embed.body.{i}.weight"),
                w(f"backbone.patch_embed.body.{i}.bias"),
                stride=stride,
                padding=1,
            )
        x = x.flatten(2).transpose(1, 2)
    else:
        b, c, hh, ww = img.shape
        patches = img.reshape(b, c, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, 4 * c)
        conv_w = w("backbone.patch_embed.proj.weight")  # (D, c, p1, p2): the code's Linear on (p1 p2 c)
        x = linear(
            patches, conv_w.permute(0, 2, 3, 1).reshape(conv_w.shape[0], -1), w("backbone.patch_embed.proj.bias")
        )
    for i in range(depth):
        p = f"backbone.blocks.{i}."
        h = layer_norm(x, w(p + "norm1.weight"), w(p + "norm1.bias"))
        hidden = gelu(torch.einsum("jn,bnc->bjc", w(p + "attn.fc1.weight"), h) + w(p + "attn.fc1.bias")[:, None])
        x = torch.einsum("nj,bjc->bnc", w(p + "attn.fc2.weight"), hidden) + w(p + "attn.fc2.bias")[:, None] + x
        x = mlp_residual(w, p, x)
    pooled = layer_norm(x, w("backbone.norm.weight"), w("backbone.norm.bias")).mean(dim=1)
    return linear(pooled, w("backbone.head.weight"), w("backbone.head.bias"))
