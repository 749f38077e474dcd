"""One Nyström layer, forward + backward: ours against the nystrom-attention package, in interleaved rounds.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/nystrom_speed.py                # 9 rounds, 4097 tokens
    OMP_NUM_THREADS=1 .venv/bin/python scripts/nystrom_speed.py --profile      # where our layer spends its time

Each round runs both layers once (the order alternates between rounds) on fresh inputs of the same shape,
so drift in the machine's speed hits both alike; the script prints the median and min–max of each and of
the per-round ratio reference / ours. Both layers have the same weights and settings (64 landmarks, 6 pinv
iterations, 33-tap residual convolution); ours is what `model/mixer=nystrom` builds (masked padding), the
package is called as the ViX code calls it (no mask). Results: docs/nystrom-speed.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from nystrom_attention import NystromAttention

from vitlab.models.geometry import TokenGeometry
from vitlab.models.mixers.attention import QKVAttention
from vitlab.models.mixers.nystrom import NystromKernel


def layers(dim: int, heads: int, seq_len: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    geo = TokenGeometry(dim, heads, 1, (seq_len - 1, 1), 1)
    kernel = NystromKernel(geo, heads, dim // heads)
    ours = QKVAttention(dim, heads, kernel)
    ref = NystromAttention(dim, dim_head=dim // heads, heads=heads, num_landmarks=64, pinv_iterations=6)
    ref.to_qkv.weight.data.copy_(ours.qkv.weight.data)
    ref.to_out[0].load_state_dict(ours.proj.state_dict())
    ref.res_conv.load_state_dict(kernel.res_conv.state_dict())
    return ours, ref


def step_ms(layer: torch.nn.Module, shape: tuple[int, int, int]) -> float:
    x = torch.randn(*shape, requires_grad=True)  # fresh input every call
    start = time.perf_counter()
    layer(x).sum().backward()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=4097)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    ours, ref = layers(args.dim, args.heads, args.seq_len)
    shape = (args.batch, args.seq_len, args.dim)
    x = torch.randn(*shape)
    with torch.no_grad():  # not 0 when 64 does not divide n: the package without a mask counts its pads
        print("max |ours - ref| at this length:", (ours(x) - ref(x)).abs().max().item())
    if args.profile:
        step_ms(ours, shape)
        with torch.profiler.profile() as prof:
            step_ms(ours, shape)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        return
    for layer in (ours, ref):  # warm-up
        step_ms(layer, shape)
    times: dict[str, list[float]] = {"ours": [], "ref": []}
    for r in range(args.rounds):
        order = ("ours", "ref") if r % 2 == 0 else ("ref", "ours")
        for name in order:
            times[name].append(step_ms(ours if name == "ours" else ref, shape))
    ratios = [b / a for a, b in zip(times["ours"], times["ref"], strict=True)]
    print(f"threads {torch.get_num_threads()}, {args.rounds} rounds, shape {shape}")
    for name, values in (*times.items(), ("ref / ours", ratios)):
        unit = "x" if name == "ref / ours" else " ms"
        low, mid, high = min(values), statistics.median(values), max(values)
        print(f"{name:>10}: median {mid:.3g}{unit} (min {low:.3g}, max {high:.3g})")


if __name__ == "__main__":
    main()
