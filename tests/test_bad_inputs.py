"""Every bad input a user meets exits non-zero with one paragraph — the key, the value, what is allowed or what
to do — without a Python traceback, and loses nothing. In-process for each case (the validation functions and
Hydra's compose API); one `vitlab-train`/`vitlab-eval` process per class of input at the end."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from conftest import TINY, compose_cfg, run_cli
from helpers import fake_layouts
from helpers.config_values import with_value as _with
from vitlab.cli.checkpoint import read_checkpoint
from vitlab.cli.hydra_callbacks import CheckRunDirectory
from vitlab.cli.unknown_keys import unknown_key_error
from vitlab.cli.validate import RULES, check_config
from vitlab.data.corrupt import skipped_files
from vitlab.data.imagefolder import ImageFolderDataModule
from vitlab.errors import ConfigError
from vitlab.models.backbone import create_backbone
from vitlab.models.weights import read_state_dict

# --- types and ranges of every numeric and boolean key ------------------------------------------------------


def test_every_rule_accepts_the_shipped_defaults() -> None:
    check_config(compose_cfg(["optim=sgd", "data.train_per_class=5"]))


@pytest.mark.parametrize("key", sorted(RULES))
def test_a_value_of_the_wrong_type_names_the_key(key: str) -> None:
    wrong = 1.5 if RULES[key].kind is bool else "abc"
    with pytest.raises(ConfigError) as refused:
        check_config(_with(key, wrong))
    assert str(refused.value) == f"{key}={wrong!r} is not allowed: it must be {RULES[key].allowed()}."


@pytest.mark.parametrize("key", sorted(k for k, r in RULES.items() if r.low is not None))
def test_a_value_out_of_range_names_the_key_and_the_range(key: str) -> None:
    rule = RULES[key]
    below = rule.low - (1 if rule.kind is int else 0.5)
    with pytest.raises(ConfigError) as refused:
        check_config(_with(key, below))
    assert str(refused.value).startswith(f"{key}={below!r} is not allowed: it must be")


@pytest.mark.parametrize(
    ("key", "value"), [("trainer.precision", "fp8"), ("trainer.devices", 0), ("trainer.devices", "x")]
)
def test_trainer_choices_are_checked(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_config(_with(key, value))


# --- keys a target does not take (what Hydra suggests after a typo: +data.<key>=...) -------------------------


@pytest.mark.parametrize(
    ("override", "node", "message"),
    [
        ("+data.batchsize=32", "data", "data.batchsize is not an option of data .* Did you mean data.batch_size"),
        ("+model.stem.width=3", "model", "model.stem.width is not an option .* Did you mean model.stem.widths"),
    ],
)
def test_an_unknown_key_names_the_options(override: str, node: str, message: str) -> None:
    cfg = compose_cfg([override])
    with pytest.raises(Exception) as raised:
        instantiate(cfg[node], **({"num_classes": 3} if node == "model" else {}))
    assert re.search(message, str(unknown_key_error(raised.value, cfg)))


# --- files and folders ---------------------------------------------------------------------------------------


def test_a_corrupt_image_names_the_file_or_is_skipped_and_counted(tmp_path: Path) -> None:
    fake_layouts.image_folder(tmp_path, ("cat", "dog"), 3, ("train", "val", "test"), size=8)
    bad = tmp_path / "test" / "dog" / "1.png"
    bad.write_bytes(b"\x89PNG not really")
    dm = ImageFolderDataModule(root=str(tmp_path), img_size=8, num_workers=0)
    dm.setup()  # fast: nothing is decoded at setup
    with pytest.raises(ConfigError, match=rf"data: {bad} is not a readable image .* data.skip_corrupt=true"):
        [dm.test_set[i] for i in range(len(dm.test_set))]
    dm = ImageFolderDataModule(root=str(tmp_path), img_size=8, num_workers=0, skip_corrupt=True)
    dm.setup()
    assert len([dm.test_set[i] for i in range(len(dm.test_set))]) == 6
    assert skipped_files(dm.train_set, dm.val_set, dm.test_set) == 1  # this data module's count, from zero


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda root: (root / "test" / "dog").rename(root / "test" / "dogs"),
            r"test lacks \['dog'\] and has \['dogs'\]",
        ),
        (lambda root: [p.unlink() for p in (root / "test" / "dog").iterdir()], r"test lacks \['dog'\]"),
        (lambda root: [p.unlink() for p in (root / "train" / "dog").iterdir()], r"train: .*no valid file.*dog"),
    ],
    ids=["renamed-class", "class-missing-in-test", "empty-class-folder"],
)
def test_class_folders_that_do_not_match_are_named(tmp_path: Path, change, message: str) -> None:
    fake_layouts.image_folder(tmp_path, ("cat", "dog"), 3, size=8)
    change(tmp_path)
    for empty in [p for p in tmp_path.rglob("*") if p.is_dir() and not any(p.iterdir())]:
        if empty.parent.name == "test":
            empty.rmdir()
    with pytest.raises(ConfigError, match=message):
        ImageFolderDataModule(root=str(tmp_path), img_size=8, num_workers=0).setup()


class Model(torch.nn.Module):  # a class pickled into the file: only unpickling code could read it
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_files_with_pickled_code_are_refused_without_suggesting_to_unpickle_them(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(Model(), path)
    for read in (read_checkpoint, read_state_dict):
        with pytest.raises(ConfigError) as refused:
            read(path)
        assert "pickled Python objects" in str(refused.value) and "weights_only=False" not in str(refused.value)


def test_hub_weights_offline_fail_at_once_with_the_way_out(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"hub:vit_tiny_patch16_224.augreg_in21k could not be loaded .* file:<path>"):
        create_backbone("vit_tiny_patch16_224", 10, weights="hub:vit_tiny_patch16_224.augreg_in21k")


# --- run directories, export paths, devices, vitlab-eval -------------------------------------------------------


def test_run_directories_must_be_writable_and_never_a_finished_run(tmp_path: Path, capsys) -> None:
    """Each refusal exits 2 with one paragraph on stderr that names the key and its value and the ways out."""
    callback = CheckRunDirectory()

    def refusal(run_dir: Path) -> str:
        with pytest.raises(SystemExit) as stop:
            callback.on_run_start(OmegaConf.create({"hydra": {"run": {"dir": str(run_dir)}}}))
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2, stop.value.code
        assert err.startswith("vitlab: error: ") and "\n\n" not in err and "Traceback" not in err, err
        assert f"hydra.run.dir={run_dir} " in " ".join(err.split()), err
        return err

    (tmp_path / "a_file").write_text("x")
    err = refusal(tmp_path / "a_file" / "run")
    assert "cannot be created or written" in err and "paths.log_dir" in err, err
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text(json.dumps({"status": "ok"}))
    err = " ".join(refusal(tmp_path / "done").split())
    assert "holds a finished run (results.json says ok)" in err, err
    assert "another hydra.run.dir" in err and "ckpt_path=<its checkpoints/last.ckpt>" in err, err  # the ways out
    assert json.loads((tmp_path / "done" / "results.json").read_text()) == {"status": "ok"}  # left as it was
    callback.on_run_start(OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path / "new" / "run")}}}))
    assert capsys.readouterr().err == ""


def test_an_unwritable_export_path_is_refused_before_training(tmp_path: Path) -> None:
    from vitlab.cli.train import _export_path

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="cannot be created or written"):
        _export_path(OmegaConf.create({"export_weights": str(tmp_path / "a_file" / "w.safetensors")}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_trainer_without_a_gpu_says_so() -> None:
    from vitlab.training.components import check_accelerator

    with pytest.raises(
        ConfigError, match=r"trainer.accelerator=gpu but this machine has no usable CUDA GPU.*trainer=cpu"
    ):
        check_accelerator(compose_cfg(["trainer=gpu"]))


def test_vitlab_eval_without_a_checkpoint_says_what_to_give() -> None:
    from vitlab.cli.eval import run_config

    with pytest.raises(ConfigError, match="vitlab-eval needs ckpt_path="):
        run_config(compose_cfg([], config_name="eval"))


# --- one process per class: exit code, one paragraph, the key, nothing overwritten ---------------------------


def assert_paragraph(run, *fragments: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    for fragment in fragments:
        assert fragment in run.stderr, run.stderr[-3000:]


@pytest.mark.slow  # one vitlab-train process per class of error
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["data.img_size=abc"], ["data.img_size='abc' is not allowed: it must be an integer >= 1"]),
        (["trainer.max_epochs=-3"], ["trainer.max_epochs=-3 is not allowed"]),
        (["+data.batchsize=32"], ["data.batchsize is not an option", "data.batch_size"]),
        (["trainer=gpu"], ["trainer.accelerator=gpu but this machine has no usable CUDA GPU"]),
        (["tags=dev"], ["tags='dev' is not allowed: it must be a list of strings"]),
        (["optim.opt=adamww"], ["optim.opt='adamww' is not an option.", "Did you mean optim.opt=adamw?"]),
    ],
    ids=["type", "range", "unknown-key", "device", "scalar-for-list", "misspelt-name"],
)
def test_the_cli_prints_one_paragraph_and_records_the_failure(tmp_path: Path, args: list[str], fragments) -> None:
    if "trainer=gpu" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    tiny = [o for o in TINY if not o.startswith("trainer.accelerator")] if "trainer=gpu" in args else TINY
    run = run_cli("train", [*tiny, *args], tmp_path)
    assert_paragraph(run, *fragments)
    (result,) = run.results()
    assert result["status"] == "failed" and fragments[0] in result["error"]


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_as_failed(tmp_path: Path) -> None:
    run = run_cli("train", [*TINY, "optim.lr=1e30", "trainer.max_epochs=2"], tmp_path)
    assert_paragraph(run, "train/loss became", "optim.lr")
    (result,) = run.results()
    assert result["status"] == "failed" and "train/loss became" in result["error"]


def test_a_finished_run_directory_is_refused_before_hydra_writes_into_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "done"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("original: true\n")
    (run_dir / "results.json").write_text(json.dumps({"status": "ok", "test/acc": 0.9}))
    stamp = os.stat(run_dir / ".hydra" / "config.yaml").st_mtime_ns
    run = run_cli("train", [*TINY, f"hydra.run.dir={run_dir}"], tmp_path)
    assert_paragraph(run, "holds a finished run")
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "original: true\n"
    assert os.stat(run_dir / ".hydra" / "config.yaml").st_mtime_ns == stamp
    assert json.loads((run_dir / "results.json").read_text()) == {"status": "ok", "test/acc": 0.9}


@pytest.mark.slow
def test_vitlab_eval_without_ckpt_path_is_one_paragraph(tmp_path: Path) -> None:
    run = run_cli("eval", [], tmp_path)
    assert_paragraph(run, "vitlab-eval needs ckpt_path=")


def test_a_module_option_that_does_not_exist_names_the_options(tmp_path: Path) -> None:
    from vitlab.training.components import build_module

    cfg = compose_cfg([*TINY, "+module.label_smothing=0.1"])
    with open_dict(cfg):
        del cfg["hydra"]  # outside a Hydra run: no run directory to resolve
        cfg.paths.output_dir = str(tmp_path)
    with pytest.raises(TypeError) as raised:
        build_module(cfg, 10)
    message = str(unknown_key_error(raised.value, cfg))
    assert "module.label_smothing is not an option of module" in message and "module.label_smoothing" in message


def test_a_finished_directory_of_another_experiment_is_not_mistaken_for_this_one(tmp_path: Path) -> None:
    from vitlab.cli.in_place import RunFinished, open_attempt
    from vitlab.runs.state import RunState

    RunState(overrides=["optim.lr=0.001"]).write(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"status": "ok"}))
    with pytest.raises(ConfigError, match="holds another experiment") as refused:
        open_attempt(tmp_path, ["optim.lr=0.5"])  # a sweep re-run in its directory with other values
    assert not isinstance(refused.value, RunFinished)
    with pytest.raises(RunFinished):
        open_attempt(tmp_path, ["optim.lr=1e-3"])
