"""The ODE pictures (docs/papers/ode.md#ode-pictures): the numbers drawn are the model's, the trajectory ends
where the head's forward ends, the PNGs decode, and a missing matplotlib costs one log line, not the run."""

from __future__ import annotations

import functools
import logging
import sys

import pytest
import torch

from vitlab.analysis.ode_dynamics import memory_trajectory, step_sizes
from vitlab.models.adapters.step_size import EulerStep, install_step_sizes
from vitlab.models.backbone import create_backbone
from vitlab.models.build import build_classifier
from vitlab.models.heads.memory_ode import MemoryODEHead
from vitlab.training.ode_figures import STEP_SIZES, TRAJECTORY, OdeFigures

TINY = functools.partial(
    create_backbone, name="vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2
)


def model(kind: str | None = "channel", head: dict | None = None, **step_kw) -> torch.nn.Module:
    torch.manual_seed(0)
    step = None if kind is None else functools.partial(install_step_sizes, kind=kind, **step_kw)
    head_fn = None if head is None else functools.partial(MemoryODEHead, **head)
    return build_classifier(TINY, num_classes=5, step_size=step, head=head_fn)


@pytest.mark.parametrize("kind", ["scalar", "channel"])
def test_step_sizes_drawn_are_the_adapters_parameters_and_start_at_one(kind: str) -> None:
    m = model(kind)
    fresh = step_sizes(m)
    assert len(fresh) == 2 * 3  # two Euler steps per block
    assert [(s.block, s.branch) for s in fresh] == [(b, br) for b in range(3) for br in ("attention", "mlp")]
    assert all((s.values == 1.0).all() and s.values.size == (1 if kind == "scalar" else 32) for s in fresh)
    for p in (p for n, p in m.named_parameters() if n.endswith("h_param")):
        p.data.uniform_(0.2, 2.0)  # as if trained
    modules = dict(m.named_modules())
    for s in step_sizes(m):
        assert isinstance(modules[s.name], EulerStep)
        block = m.backbone.blocks[s.block]
        seam = block.ls1 if s.branch == "attention" else block.ls2
        assert seam is modules[s.name]
        assert torch.equal(torch.from_numpy(s.values).float(), seam.h_param.detach().reshape(-1))


def test_reparameterised_step_sizes_are_read_as_h_not_as_the_raw_parameter() -> None:
    m = model("channel", positive=True, init=0.5)
    found = step_sizes(m)
    assert all((s.values == 0.5).all() and s.init == 0.5 for s in found)  # ρ = 0 at init is h = init
    m.backbone.blocks[1].ls2.h_param.data.fill_(1.0)
    expected = 0.5 * torch.nn.functional.softplus(torch.tensor(1.0)) / torch.nn.functional.softplus(torch.tensor(0.0))
    assert found[3].block == 1 and found[3].branch == "mlp"
    assert step_sizes(m)[3].values == pytest.approx(float(expected))


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_the_trajectory_ends_at_the_forward_state_and_starts_with_the_euler_formula(solver: str) -> None:
    m = model(None, head={"steps": 7, "T": 1.5, "solver": solver}).eval()
    m.head.field.rho.data.uniform_(0.0, 1.0)  # a learned a ∈ [1, 2)
    with torch.no_grad():
        m.head.fc.weight.normal_()  # a non-zero readout, so the logits depend on y(T)
    x, labels = torch.randn(3, 3, 16, 16), torch.tensor([4, 0, 2])
    path = memory_trajectory(m, x, labels)
    with torch.no_grad():
        gamma = m.head.drive(m.backbone.forward_features(x))
        end = m.head.solve(gamma)
        logits = m(x)
    assert path.states.shape == (8, 3, 32) and path.times[0] == 0 and path.times[-1] == pytest.approx(1.5)
    assert (path.states[0] == 0).all()  # y(0) = 0
    assert torch.equal(torch.from_numpy(path.states[-1]).float(), end)  # bit for bit: the forward's y(T)
    assert torch.equal(m.head.fc(torch.from_numpy(path.states[-1]).float()), logits)
    if solver == "euler":  # y(Δt) = Δt·sin²(γ) from y(0) = 0
        assert torch.allclose(torch.from_numpy(path.states[1]).float(), (1.5 / 7) * torch.sin(gamma) ** 2)
    assert (path.inhibition == m.head.inhibition().double().numpy()).all() and (path.labels == [4, 0, 2]).all()
    assert m.training is False


def test_an_adaptive_solver_trajectory_ends_at_the_forward_state_within_tolerance() -> None:
    pytest.importorskip("torchdiffeq")
    m = model(None, head={"solver": "dopri5", "rtol": 1e-7, "atol": 1e-8}).double().train()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    path = memory_trajectory(m, x)
    assert m.training  # the mode is restored
    with torch.no_grad():
        end = m.head.solve(m.head.drive(m.backbone.forward_features(x)))
    assert path.states.shape[0] == 21
    assert torch.allclose(torch.from_numpy(path.states[-1]), end, atol=1e-6)


def _fed(callback: OdeFigures) -> OdeFigures:
    callback.on_test_start(None, None)
    callback.on_test_batch_start(None, None, (torch.randn(6, 3, 16, 16), torch.arange(6) % 5), 0)
    callback.on_test_batch_start(None, None, (torch.zeros(6, 3, 16, 16), torch.zeros(6)), 1)  # only the first counts
    return callback


def test_the_callback_writes_both_pngs_that_decode_and_nothing_for_other_models(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    written = _fed(OdeFigures(str(tmp_path / "ode" / "figures"))).draw(model("scalar", head={}))
    assert set(written) == {STEP_SIZES, TRAJECTORY}
    for name, path in written.items():
        assert path == tmp_path / "ode" / "figures" / f"{name}.png"
        with Image.open(path) as image:
            image.load()  # decodes the whole file
            assert image.format == "PNG" and image.width > 300 and image.height > 200
        assert path.stat().st_size < 300_000
    assert _fed(OdeFigures(str(tmp_path / "plain" / "figures"))).draw(model(None)) == {}
    assert not (tmp_path / "plain").exists()
    only_steps = _fed(OdeFigures(str(tmp_path / "steps" / "figures"))).draw(model("channel"))
    assert set(only_steps) == {STEP_SIZES}


class _Trainer:
    global_rank, loggers, strategy, world_size = 0, [], None, 1


class _Module(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.model = inner


def test_without_matplotlib_the_run_goes_on_and_one_log_line_names_the_extra(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails as if not installed
    callback = _fed(OdeFigures(str(tmp_path)))
    with caplog.at_level(logging.INFO, logger="vitlab"):
        callback.on_test_end(_Trainer(), _Module(model("scalar")))
    lines = [r.getMessage() for r in caplog.records if "vitlab[plots]" in r.getMessage()]
    assert len(lines) == 1 and "pip install 'vitlab[plots]'" in lines[0]
    assert not list(tmp_path.rglob("*.png"))


def test_under_fsdp_with_several_processes_the_figures_are_skipped_in_one_line(tmp_path, caplog) -> None:
    """Outside the wrapped forward an FSDP process holds a shard of each weight: drawing it would be wrong."""
    from pytorch_lightning.strategies import FSDPStrategy

    trainer, module = _Trainer(), _Module(model("scalar"))
    trainer.strategy, trainer.world_size = FSDPStrategy(), 2
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vitlab"):
        _fed(OdeFigures(str(tmp_path))).on_test_end(trainer, module)
    assert [r.getMessage() for r in caplog.records if r.name == "vitlab"] == [
        "ODE figures skipped: under FSDPStrategy each process holds only a shard of the weights"
    ]
    assert not list(tmp_path.rglob("*.png"))


def test_the_figures_go_to_the_runs_loggers_under_ode_keys(tmp_path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    import vitlab.training.ode_figures as ode_figures

    sent = []
    monkeypatch.setattr(ode_figures, "log_images", lambda loggers, images: sent.append((loggers, dict(images))))
    trainer = _Trainer()
    _fed(OdeFigures(str(tmp_path))).on_test_end(trainer, _Module(model("channel", head={})))
    assert len(sent) == 1 and sent[0][0] is trainer.loggers
    assert sent[0][1] == {
        "ode/step_sizes": tmp_path / f"{STEP_SIZES}.png",
        "ode/memory_trajectory": tmp_path / f"{TRAJECTORY}.png",
    }
    assert all(p.is_file() for p in sent[0][1].values())
    trainer.global_rank = 1  # only process 0 draws and sends
    _fed(OdeFigures(str(tmp_path / "rank1"))).on_test_end(trainer, _Module(model("channel", head={})))
    assert len(sent) == 1 and not (tmp_path / "rank1").exists()


@pytest.mark.slow  # trains a tiny step-size + memory-ODE model, then tests it with vitlab-eval (in process)
def test_vitlab_eval_of_an_ode_checkpoint_draws_its_pictures_in_its_own_run_dir(tmp_path) -> None:
    from omegaconf import open_dict

    from helpers.train_in_process import train_in_process
    from vitlab.cli import eval as eval_cli
    from vitlab.cli.runner import run_task
    from vitlab.compose import compose_config

    args = ["tiny=smoke", "test=false", "model/step_size=scalar", "model/head=memory_ode"]
    assert train_in_process(tmp_path / "train", [*args, "trainer.enable_progress_bar=false"])["status"] == "ok"
    assert not (tmp_path / "train" / "figures").exists()  # no test phase: nothing drawn there
    cfg = compose_config("eval", [f"ckpt_path={tmp_path / 'train' / 'checkpoints' / 'last.ckpt'}",
                                  "trainer.enable_progress_bar=false", "eval.figures=false"])  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
    assert run_task(cfg, eval_cli.evaluate)["status"] == "ok"
    assert {p.name for p in (tmp_path / "eval" / "figures").iterdir()} == {f"{STEP_SIZES}.png", f"{TRAJECTORY}.png"}
