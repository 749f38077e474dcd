"""A write that fails (a full disk, a quota, a read-only or failing file system) ends the run with one paragraph,
`status: failed` with the reason, no half-written file under a final name, and a run that `resume=` finishes.

The disk is filled by `FullDisk`: `open` in `vitlab.runs.files` (every writer of vitlab goes through it) returns,
for the chosen files, a handle that writes half of what it is given and then raises `OSError(ENOSPC)`, as a
file system that runs out of space in the middle of a write does. One test fills a real tmpfs (root only).
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import open_dict

import vitlab.cli.train as train_cli
import vitlab.runs.files as files
from conftest import TINY
from vitlab.cli.in_place import apply_attempt, open_attempt
from vitlab.cli.runner import run_task
from vitlab.compose import compose_config
from vitlab.errors import WriteFailed, find_write_failure
from vitlab.runs.files import append_whole, write_bytes
from vitlab.training.atomic_checkpoint_io import AtomicCheckpointIO

EVERY_EPOCH = ("trainer.max_epochs=3", "callbacks.model_checkpoint.save_top_k=-1")  # epoch_001.ckpt is written
QUICK = [
    *TINY,
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "scheduler.warmup_epochs=0",
]


class _HalfWriter:
    """A file handle whose writes put half of the bytes on disk, then fail as a full disk does."""

    def __init__(self, handle: Any, error: int) -> None:
        self._handle, self._error = handle, error

    def write(self, data: Any) -> int:
        self._handle.write(data[: max(1, len(data) // 2)])
        self._handle.flush()
        raise OSError(self._error, os.strerror(self._error))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _HalfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


class FullDisk:
    """Writes through `vitlab.runs.files` to a file whose name `matches` fail half-way with `error`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, matches: Callable[[Path], bool], error: int = errno.ENOSPC):
        self.matches, self.error, self.hits = matches, error, []
        monkeypatch.setattr(files, "open", self._open, raising=False)

    def _open(self, path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115  (returned to the caller's with)
        if ("w" in mode or "a" in mode) and self.matches(Path(path)):
            self.hits.append(Path(path).name)
            return _HalfWriter(handle, self.error)
        return handle


def _cfg(log_dir: Path, *extra: str) -> Any:
    cfg = compose_config("train", [*QUICK, f"paths.log_dir={log_dir}", *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = str(log_dir / "run")
    return cfg


def _attempt(cfg: Any) -> dict[str, Any]:
    """One attempt in the run directory, as `vitlab-train` (and `resume=<run dir>`) makes it: a new run, or the
    same run continued from its last.ckpt."""
    attempt = open_attempt(Path(cfg.paths.output_dir), [])
    apply_attempt(cfg, attempt)
    return run_task(cfg, train_cli.train, attempt)


def _fails_with_one_paragraph(cfg: Any, capsys: pytest.CaptureFixture[str], attempt: bool = True) -> tuple[str, str]:
    """(the one error paragraph, all of stderr) of a run that fails: exit code 2, no traceback."""
    with pytest.raises(SystemExit) as stop:
        _attempt(cfg) if attempt else run_task(cfg, train_cli.train)
    err = capsys.readouterr().err
    assert stop.value.code == 2, (stop.value.code, err[-3000:])
    assert "Traceback" not in err and err.count("vitlab: error: ") == 1, err[-3000:]
    return " ".join(err.split("vitlab: error: ", 1)[1].split("\n\n", 1)[0].split()), err


def _assert_nothing_half_written(run_dir: Path) -> None:
    assert not sorted(run_dir.rglob("*.tmp")), sorted(run_dir.rglob("*.tmp"))
    for ckpt in run_dir.rglob("*.ckpt"):  # every checkpoint under a final name is whole
        torch.load(ckpt, map_location="cpu", weights_only=True)
    for record in run_dir.glob("*.json"):
        json.loads(record.read_text())


def _last_attempt(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text())["attempts"][-1]


@pytest.mark.slow  # trains end to end (in-process)
def test_a_full_disk_at_a_best_checkpoint_is_one_paragraph_and_resume_finishes_the_run(
    tmp_path, monkeypatch, capsys
) -> None:
    """Before: two OSError tracebacks, an empty results.json.tmp, run.json's attempt without an end, and a
    truncated epoch_001.ckpt under its final name."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = tmp_path / "run"
    disk = FullDisk(monkeypatch, lambda p: p.name.startswith("epoch_001"))
    paragraph, _ = _fails_with_one_paragraph(_cfg(tmp_path, *EVERY_EPOCH), capsys)
    assert disk.hits, "the injected failure was never reached"
    assert f"could not write {run_dir / 'checkpoints' / 'epoch_001.ckpt'}: no space left on the device (ENOSPC)" in (
        paragraph
    ), paragraph
    assert f"`vitlab-train resume={run_dir}`" in paragraph, paragraph
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "failed" and "epoch_001.ckpt: no space left" in record["error"], record
    assert "traceback" not in record
    _assert_nothing_half_written(run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    attempt = _last_attempt(run_dir)
    assert attempt["status"] == "failed" and attempt.get("ended"), attempt

    monkeypatch.setattr(files, "open", builtins.open)  # space is back
    resumed = _attempt(_cfg(tmp_path, *EVERY_EPOCH))
    assert resumed["status"] == "ok" and resumed["epochs"] == 3 and resumed["resumed"] == 1, resumed
    assert _last_attempt(run_dir)["resumed_from"]["epoch"] == 0
    _assert_nothing_half_written(run_dir)


@pytest.mark.slow  # trains end to end (in-process)
def test_a_failed_last_checkpoint_keeps_the_previous_one_and_names_last_ckpt(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = tmp_path / "run"
    saves = []

    def second_last_save(path: Path) -> bool:  # last.ckpt is written through last.ckpt.tmp (then renamed)
        saves.append(path.name) if path.name.startswith("last.ckpt") else None
        return path.name.startswith("last.ckpt") and len(saves) == 2

    FullDisk(monkeypatch, second_last_save, errno.EDQUOT)
    paragraph, _ = _fails_with_one_paragraph(_cfg(tmp_path, "trainer.max_epochs=2"), capsys)
    assert f"could not write {run_dir / 'checkpoints' / 'last.ckpt'}: the disk quota is exceeded (EDQUOT)" in (
        paragraph
    ), paragraph
    _assert_nothing_half_written(run_dir)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 0  # the previous complete checkpoint
    assert json.loads((run_dir / "results.json").read_text())["status"] == "failed"


@pytest.mark.slow  # trains end to end (in-process)
def test_a_result_that_cannot_be_written_is_failed_and_printed_not_lost(tmp_path, monkeypatch, capsys) -> None:
    """Training went well but results.json cannot be written: the run is not recorded ok anywhere, run.json says
    failed, and the record (with its test accuracy) is on stderr. Once space is back, resume= tests it again."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = tmp_path / "run"
    FullDisk(monkeypatch, lambda p: p.name.startswith("results.json"), errno.ENOSPC)
    paragraph, err = _fails_with_one_paragraph(_cfg(tmp_path), capsys)
    assert f"could not write {run_dir / 'results.json'}: no space left on the device" in paragraph, paragraph
    assert not (run_dir / "results.json").exists()
    _assert_nothing_half_written(run_dir)
    assert _last_attempt(run_dir)["status"] == "failed"
    (line,) = [ln for ln in err.splitlines() if "the run's record is here instead" in ln]
    printed = json.loads(line.split("here instead: ", 1)[1])
    assert printed["status"] == "failed" and printed["epochs"] == 1 and printed["test/acc"] is not None, printed

    monkeypatch.setattr(files, "open", builtins.open)
    resumed = _attempt(_cfg(tmp_path))
    assert resumed["status"] == "ok" and json.loads((run_dir / "results.json").read_text())["status"] == "ok"


def test_a_read_only_run_directory_at_start_fails_before_training(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    FullDisk(monkeypatch, lambda p: p.name.startswith(("config_resolved", "results", "run.json")), errno.EROFS)
    paragraph, err = _fails_with_one_paragraph(_cfg(tmp_path), capsys, attempt=False)  # as vitlab-eval runs
    assert "config_resolved.yaml: the file system is read-only (EROFS)" in paragraph, paragraph
    assert "run the command again" in paragraph and "the run's record is here instead" in err, err
    assert not list((tmp_path / "run").iterdir())  # nothing written, nothing half-written


def test_an_append_to_the_csv_log_is_whole_or_cut_back(tmp_path, monkeypatch) -> None:
    log = tmp_path / "metrics.csv"
    log.write_text("step,loss\n0,1.0\n")
    append_whole(log, "1,0.9\n")
    FullDisk(monkeypatch, lambda p: p.name == "metrics.csv")
    with pytest.raises(WriteFailed, match=r"metrics.csv: no space left on the device \(ENOSPC\)"):
        append_whole(log, "2,0.8\n3,0.7\n")
    assert log.read_text() == "step,loss\n0,1.0\n1,0.9\n"  # the half row is gone


def test_the_csv_logger_loses_no_flushed_row_on_a_full_disk(tmp_path, monkeypatch) -> None:
    from vitlab.training.csv_logger import ResumableCSVLogger

    logger = ResumableCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    logger.log_metrics({"loss": 0.9}, step=1)
    logger.save()
    before = (tmp_path / "csv" / "metrics.csv").read_text()
    FullDisk(monkeypatch, lambda p: p.name.startswith("metrics.csv"))
    logger.log_metrics({"loss": 0.8}, step=2)  # an append
    with pytest.raises(WriteFailed):
        logger.save()
    logger.experiment.metrics = []
    logger.log_metrics({"loss": 0.8, "acc": 0.5}, step=2)  # a new column: a rewrite
    with pytest.raises(WriteFailed):
        logger.save()
    assert (tmp_path / "csv" / "metrics.csv").read_text() == before
    assert not list((tmp_path / "csv").glob("*.tmp"))


def test_checkpoints_exports_and_tables_leave_no_truncated_file(tmp_path, monkeypatch) -> None:
    """Each writer of a kind: a failure leaves no file under its final name and no .tmp; a second write replaces
    the first whole."""
    from vitlab.configs import config_dir
    from vitlab.reproduce import find_table, load_table, write_all

    FullDisk(monkeypatch, lambda p: p.name.startswith("bad") and not p.name.startswith("bad.md"), errno.EIO)
    with pytest.raises(WriteFailed, match=r"bad.ckpt: an input/output error"):
        AtomicCheckpointIO().save_checkpoint({"w": torch.ones(1000)}, tmp_path / "ckpt" / "bad.ckpt")
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, tmp_path / "ckpt" / "good.ckpt")
    assert torch.load(tmp_path / "ckpt" / "good.ckpt", weights_only=True)["w"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(WriteFailed, match=r"bad\.safetensors"):
        train_cli.export_backbone(torch.nn.Linear(4, 2), tmp_path / "bad.safetensors")
    with pytest.raises(WriteFailed, match=r"bad\.csv: an input/output error .*\(EIO\)"):
        write_all([], load_table(find_table(Path(config_dir()), "vix", "mini_digits")), tmp_path / "tables", stem="bad")
    write_bytes(tmp_path / "ok.bin", b"x" * 10)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["bad.md", "good.ckpt", "ok.bin"]


def test_storage_errnos_anywhere_in_the_chain_are_a_write_failure() -> None:
    """A logger (TensorBoard, W&B) or Lightning's clean-up fails after the write that stopped the run: the
    earliest failure is the one reported; an OSError that is not about storage is not one."""
    first = WriteFailed("/run/checkpoints/epoch_001.ckpt", OSError(errno.ENOSPC, "No space left on device"))
    try:
        try:
            raise first
        except WriteFailed as exc:
            raise OSError(errno.ENOSPC, "No space left on device", "/run/tensorboard/events") from exc
    except OSError as late:
        assert find_write_failure(late) is first
    bare = RuntimeError("flush failed")
    bare.__cause__ = OSError(errno.EROFS, "Read-only file system", "/run/csv/metrics.csv")
    found = find_write_failure(bare)
    assert found is not None and str(found).startswith("could not write /run/csv/metrics.csv: the file system is read")
    assert find_write_failure(OSError(errno.ENOENT, "No such file", "/data/x.png")) is None


@pytest.mark.slow  # a real file system, filled to its last pages (root only: mounts a small tmpfs)
def test_a_real_full_tmpfs_fails_the_run_cleanly_and_resume_continues(tmp_path, monkeypatch, capsys) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {mounted.stderr.decode().strip()}")
    try:
        monkeypatch.setenv("WANDB_MODE", "disabled")
        filler, save, filled = disk / "filler", AtomicCheckpointIO.save_checkpoint, []

        def fill_then_save(self: AtomicCheckpointIO, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
            if Path(path).name.startswith("epoch_001") and not filled:  # once; leave 16 KiB, so a JSON record fits
                stat = os.statvfs(disk)
                filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 16 * 1024))
                filled.append(filler)
            save(self, checkpoint, path, storage_options)

        monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", fill_then_save)
        paragraph, _ = _fails_with_one_paragraph(_cfg(disk, *EVERY_EPOCH), capsys)
        run_dir = disk / "run"
        assert "epoch_001.ckpt: no space left on the device (ENOSPC)" in paragraph, paragraph
        assert json.loads((run_dir / "results.json").read_text())["status"] == "failed"
        _assert_nothing_half_written(run_dir)
        assert _last_attempt(run_dir)["status"] == "failed"
        filler.unlink()  # space is back
        resumed = _attempt(_cfg(disk, *EVERY_EPOCH))
        assert resumed["status"] == "ok" and resumed["epochs"] == 3 and resumed["resumed"] == 1, resumed
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
