"""Every bad input a user meets exits non-zero with one paragraph — the key, the value, what is allowed or what
to do — without a Python traceback, and loses nothing. In-process for each case (the validation functions and
Hydra's compose API); at the end, one process runs a case of each class through `vitlab-train`/`vitlab-eval`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from conftest import ROOT, TINY, compose_cfg
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


# --- the CLI, a case per class: exit code, one paragraph, the key, nothing overwritten ----------------------


CLI_CASES = {  # id: (command, overrides, fragments of the paragraph; the first is also in results.json)
    "type": ("train", ["data.img_size=abc"], ["data.img_size='abc' is not allowed: it must be an integer >= 1"]),
    "range": ("train", ["trainer.max_epochs=-3"], ["trainer.max_epochs=-3 is not allowed"]),
    "unknown-key": ("train", ["+data.batchsize=32"], ["data.batchsize is not an option", "data.batch_size"]),
    "device": ("train", ["trainer=gpu"], ["trainer.accelerator=gpu but this machine has no usable CUDA GPU"]),
    "scalar-for-list": ("train", ["tags=dev"], ["tags='dev' is not allowed: it must be a list of strings"]),
    "misspelt-name": (
        "train",
        ["optim.opt=adamww"],
        ["optim.opt='adamww' is not an option.", "Did you mean optim.opt=adamw?"],
    ),
    "non-finite-loss": ("train", ["optim.lr=1e30", "trainer.max_epochs=2"], ["train/loss became", "optim.lr"]),
    "finished-run-dir": ("train", [], ["holds a finished run"]),
    "eval-without-ckpt": ("eval", [], ["vitlab-eval needs ckpt_path="]),
}

# every case is the CLI's `main` with its own argv, one after the other in one process: what each prints, its
# exit status and its results.json are its own (tests/test_global_state.py: no state outlives a command), and
# the suite pays one Python start instead of one per case
CASE_RUNNER = """
import importlib, json, sys
for name, command, argv in json.loads(sys.argv[1]):
    print(f"=== start {name}", file=sys.stderr, flush=True)
    sys.argv = [f"vitlab-{command}", *argv]
    try:
        importlib.import_module(f"vitlab.cli.{command}").main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    print(f"=== exit {name} {code}", file=sys.stderr, flush=True)
"""


def run_cases(cases: dict[str, tuple[str, list[str]]], tmp_path: Path) -> dict[str, tuple[int, str]]:
    """Each case's (exit status, stderr), its outputs under tmp_path/<id>."""
    plan = [(name, command, [*argv, f"paths.log_dir={tmp_path / name}"]) for name, (command, argv) in cases.items()]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run(
        [sys.executable, "-c", CASE_RUNNER, json.dumps(plan)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    outcomes = {}
    for name in cases:
        found = re.search(rf"=== start {re.escape(name)}\n(.*?)=== exit {re.escape(name)} (-?\d+)\n", done.stderr, re.S)
        assert found, f"case {name} did not end (exit {done.returncode}):\n{done.stderr[-3000:]}"
        outcomes[name] = (int(found.group(2)), found.group(1))
    return outcomes


@pytest.mark.slow  # one vitlab process for all the classes of error
def test_the_cli_prints_one_paragraph_and_records_the_failure(tmp_path: Path) -> None:
    """Per class: exit 2, the paragraph without a traceback, the failure in the run's results.json (none for a
    refused directory); a finished run directory is refused before Hydra writes into it."""
    done = tmp_path / "done"
    (done / ".hydra").mkdir(parents=True)
    (done / ".hydra" / "config.yaml").write_text("original: true\n")
    (done / "results.json").write_text(json.dumps({"status": "ok", "test/acc": 0.9}))
    stamp = os.stat(done / ".hydra" / "config.yaml").st_mtime_ns
    cases = {}
    for name, (command, args, _) in CLI_CASES.items():
        if name == "device" and torch.cuda.is_available():
            continue  # this machine has a GPU
        tiny = [o for o in TINY if not o.startswith("trainer.accelerator")] if name == "device" else TINY
        extra = [f"hydra.run.dir={done}"] if name == "finished-run-dir" else []
        cases[name] = (command, [] if command == "eval" else [*tiny, *args, *extra])
    outcomes = run_cases(cases, tmp_path)
    for name, (code, err) in outcomes.items():
        fragments = CLI_CASES[name][2]
        assert code == 2 and "Traceback" not in err, f"{name}: exit {code}\n{err[-3000:]}"
        for fragment in fragments:
            assert fragment in err, f"{name}: no {fragment!r} in\n{err[-3000:]}"
        results = [json.loads(p.read_text()) for p in (tmp_path / name).rglob("results.json")]
        if name == "finished-run-dir":
            assert results == [], (name, results)
            continue
        (result,) = results
        assert result["status"] == "failed" and fragments[0] in result["error"], (name, result)
    assert (done / ".hydra" / "config.yaml").read_text() == "original: true\n"
    assert os.stat(done / ".hydra" / "config.yaml").st_mtime_ns == stamp
    assert json.loads((done / "results.json").read_text()) == {"status": "ok", "test/acc": 0.9}


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
