"""`vitlab-bench <name> [overrides]`: the benchmarks behind `make bench`.

    vitlab-bench attention                      # one mixer layer vs sequence length -> outputs/bench/attention.*
    vitlab-bench attention attention.device=cuda
    vitlab-bench model model=eit_mini data.img_size=224     # params, MACs (with/without attention), img/s
    vitlab-bench transfer                       # frozen ViT-B/16 step: head only, step sizes, memory-ODE head, full
    vitlab-bench overhead                       # vitlab-train's start-up and per-step cost vs torch alone
    vitlab-bench compile                        # img/s of the default model with and without torch.compile
    vitlab-bench memory                         # peak training memory with/without checkpointing, FLOP/s, MFU
    vitlab-bench memory memory.device=cuda memory.precision=bf16-mixed
    vitlab-bench data                           # training loader img/s per worker: vitlab vs timm vs packed shards

Timings depend on the machine; they are reported with it (CPU model, threads, versions), never asserted in
tests. Competitors are measured in interleaved rounds and compared by per-round ratios (vitlab.bench.rounds).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import vitlab.cli.resolvers  # noqa: F401  (registers ${vitlab.*} resolvers before configs compose)
from vitlab.configs import CONFIG_PATH
from vitlab.errors import ConfigError

log = logging.getLogger("vitlab")
BENCHES = ("attention", "model", "transfer", "overhead", "compile", "memory", "data")


def run_bench(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from vitlab.config_names import upgrade_config

    given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    upgrade_config(cfg, given={o.lstrip("+~").partition("=")[0] for o in given})  # a user's own bench.yaml
    out_dir = Path(cfg.out_dir)
    if cfg.bench == "attention":
        from vitlab.bench.attention import run

        opts = cfg.attention
        keys = ("batch_size", "dim", "heads", "device", "precision", "rounds", "untimed_rounds")
        settings = {k: opts[k] for k in keys}
        if settings["precision"] not in ("fp32", "bf16-mixed") or (
            settings["precision"] != "fp32" and not str(settings["device"]).startswith("cuda")
        ):
            raise ConfigError(
                f"attention.precision={settings['precision']!r} is not allowed with attention.device="
                f"{settings['device']}: fp32, or bf16-mixed (CUDA autocast, where SDPA takes its flash kernel) "
                "with attention.device=cuda."
            )
        run(list(opts.seq_lens), list(opts.entries), settings, out_dir, timeout=int(opts.timeout_s))
        print((out_dir / "attention.md").read_text())
        log.info("wrote %s/attention.md, .json and .png", out_dir)
    elif cfg.bench == "model":
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import instantiate

        from vitlab.bench.model import measure_model, write_report

        model = instantiate(cfg.model, num_classes=int(cfg.num_classes))
        opts = cfg.model_bench
        record = measure_model(
            model,
            int(cfg.data.img_size),
            int(opts.batch_size),
            int(opts.steps),
            int(opts.untimed_steps),
            str(opts.device),
        )
        choices = HydraConfig.get().runtime.choices
        name = choices.get("model", "model")
        md = write_report(record, name, out_dir)
        print(md.read_text())
    elif cfg.bench == "transfer":
        from omegaconf import OmegaConf

        from vitlab.bench.transfer import run as run_transfer

        md = run_transfer(OmegaConf.to_container(cfg.transfer, resolve=True), out_dir)
        print(md.read_text())
    elif cfg.bench == "overhead":
        from vitlab.bench.overhead import run as run_overhead

        print(run_overhead(cfg, out_dir).read_text())
    elif cfg.bench == "compile":
        from vitlab.bench.compile import run as run_compile

        print(run_compile(cfg, out_dir).read_text())
    elif cfg.bench == "memory":
        from omegaconf import OmegaConf

        from vitlab.bench.memory import run as run_memory

        print(run_memory(OmegaConf.to_container(cfg.memory, resolve=True), out_dir).read_text())
    elif cfg.bench == "data":
        from omegaconf import OmegaConf

        from vitlab.bench.data_loading import run as run_data

        print(run_data(OmegaConf.to_container(cfg.data_loading, resolve=True), out_dir).read_text())
    else:
        raise ConfigError(f"bench={cfg.bench!r} is not a benchmark; allowed: {', '.join(BENCHES)}.")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="bench")
def _main(cfg: DictConfig) -> None:
    try:
        run_bench(cfg)
    except ConfigError as exc:
        print(f"vitlab-bench: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    """Allow `vitlab-bench attention ...` as sugar for `vitlab-bench bench=attention ...`; a renamed key's old
    spelling (`attention.batch=4`) is applied as its new one, with one deprecation line (vitlab.config_names)."""
    from vitlab.config_names import upgrade_overrides

    if len(sys.argv) > 1 and not sys.argv[1].startswith("-") and "=" not in sys.argv[1]:
        sys.argv[1] = f"bench={sys.argv[1]}"
    try:
        sys.argv = [sys.argv[0], *upgrade_overrides(sys.argv[1:])]
    except ConfigError as exc:
        print(f"vitlab-bench: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _main()


if __name__ == "__main__":
    main()
