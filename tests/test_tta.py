"""Test-time augmentation (`eval.tta`, docs/evaluation.md): which views, how many forward passes, the average of
their logits, and the refusal of anything else."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import compose_cfg
from vitlab.analysis.tta import CROP_FRACTION, TTA_MODES, five_crops, tta_logits, view_count, views
from vitlab.cli.validate import check_config
from vitlab.cli.validate_names import CHOICES
from vitlab.errors import ConfigError
from vitlab.training.test_report import eval_options


class Linear(nn.Module):
    """logits = W vec(x): a model with a known answer under any view."""

    def __init__(self, k: int = 5, shape: tuple[int, int, int] = (3, 8, 8)) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            torch.randn(k, shape[0] * shape[1] * shape[2], generator=torch.Generator().manual_seed(0))
        )
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.flatten(1) @ self.weight.T


def test_flip_averages_the_logits_of_the_image_and_its_mirror() -> None:
    model, x = Linear(), torch.randn(4, 3, 8, 8)
    expected = (x.flatten(1) @ model.weight.T + x.flip(-1).flatten(1) @ model.weight.T) / 2
    torch.testing.assert_close(tta_logits(model, x, "flip"), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(tta_logits(model, x, "none"), expected, atol=1e-3)  # the flip changed something


def test_flip_of_a_mirror_symmetric_image_is_no_tta() -> None:
    model, a = Linear(), torch.randn(4, 3, 8, 8)
    symmetric = (a + a.flip(-1)) / 2
    torch.testing.assert_close(
        tta_logits(model, symmetric, "flip"), tta_logits(model, symmetric, "none"), atol=1e-5, rtol=0
    )


def test_flip_of_a_flip_invariant_model_is_no_tta() -> None:
    """Global average pooling then a linear layer cannot tell an image from its mirror."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 6))
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(tta_logits(model, x, "flip"), model(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("mode", "count"), [("none", 1), ("flip", 2), ("multicrop", 5)])
def test_forward_passes_per_batch_are_the_documented_views(mode: str, count: int) -> None:
    model, x = Linear(), torch.randn(2, 3, 8, 8)
    out = tta_logits(model, x, mode)
    assert model.calls == count == view_count(mode) == len(views(x, mode))
    assert out.shape == (2, 5)
    expected = torch.stack([model.weight @ v.flatten(1).T for v in views(x, mode)]).mean(0).T
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)  # the mean of the views' logits


def test_multicrop_takes_the_centre_and_the_four_corners_at_the_input_size() -> None:
    """An image of four constant quadrants: a corner crop of half the side holds one quadrant only, so after the
    resize back it is that constant; the centre crop holds all four quadrants equally."""
    x = torch.zeros(1, 1, 8, 8)
    x[..., :4, :4], x[..., :4, 4:], x[..., 4:, :4], x[..., 4:, 4:] = 1.0, 2.0, 3.0, 4.0
    centre, top_left, top_right, bottom_left, bottom_right = five_crops(x, fraction=0.5)
    for crop, value in [(top_left, 1.0), (top_right, 2.0), (bottom_left, 3.0), (bottom_right, 4.0)]:
        assert crop.shape == x.shape
        torch.testing.assert_close(crop, torch.full_like(x, value))
    assert centre.shape == x.shape and centre.mean().item() == pytest.approx(2.5, abs=1e-6)
    corners = centre[0, 0, [0, 0, -1, -1], [0, -1, 0, -1]]  # the centre crop's corners lie in the four quadrants
    torch.testing.assert_close(corners, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    big = torch.randn(2, 3, 224, 224)
    assert all(c.shape == big.shape for c in five_crops(big))  # 196 px crops, resized back to 224
    assert CROP_FRACTION == 0.875


@pytest.mark.parametrize("mode", ["bogus", "Flip", "", None, 1])
def test_anything_else_is_refused_naming_the_key_and_the_options(mode: object) -> None:
    with pytest.raises(ConfigError, match=r"eval\.tta=.* is not an option\. Allowed: none, flip, multicrop"):
        views(torch.zeros(1, 3, 4, 4), mode)  # type: ignore[arg-type]


def test_the_config_check_refuses_an_unknown_mode_before_anything_is_built() -> None:
    assert CHOICES["eval.tta"] == TTA_MODES  # the validator's copy (it must not import torch) is the same list
    for command in ("train", "eval"):
        with pytest.raises(ConfigError, match=r"eval\.tta='flipp' is not an option\. Allowed: none, flip, multicrop\. "
                                              r"Did you mean eval\.tta=flip\?"):  # fmt: skip
            check_config(compose_cfg(["eval.tta=flipp"], config_name=command))
        assert eval_options(compose_cfg(["eval.tta=multicrop"], config_name=command)) == ("multicrop", True)


def test_the_module_refuses_an_unknown_mode_and_uses_a_known_one() -> None:
    from vitlab.training.module import ClassificationModule

    module = ClassificationModule(Linear(), 5, optim={"opt": "sgd", "lr": 0.1})
    assert module.tta == "none"
    with pytest.raises(ConfigError, match=r"eval\.tta"):
        module.tta = "mirror"
    module.tta = "flip"
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    module.on_test_epoch_start()
    module.test_step((x, y), 0)
    torch.testing.assert_close(module._test_logits[0], tta_logits(module.model, x, "flip"), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("overrides", "given"),
    [
        (["analyse=attention", "eval.tta=flip"], "analyse=attention and eval.tta=flip"),
        (["probe=fewshot", "eval.tta=multicrop"], "probe=fewshot and eval.tta=multicrop"),
        (["analyse=attention", "probe=fewshot"], "analyse=attention and probe=fewshot"),
    ],
)
def test_vitlab_eval_refuses_tta_with_an_analysis_and_two_analyses_at_once(overrides: list[str], given: str) -> None:
    """analyse= and probe= replace the test: a test option with them, or both together, would be ignored."""
    from vitlab.cli.eval import evaluate

    cfg = compose_cfg(["ckpt_path=no_such.ckpt", *overrides], config_name="eval")
    with pytest.raises(ConfigError, match=rf"^vitlab-eval was given {given}: ") as refused:
        evaluate(cfg, {})  # before the checkpoint is read: no such file is needed
    assert "\n" not in str(refused.value)
