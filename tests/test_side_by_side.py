"""`run_side_by_side`: at most `width` children at a time, in order, each with its thread cap; an interrupt
reaches every running child and starts no new one. And `vitlab-reproduce parallel=` parsing. The children
are tiny Python processes (no torch), so this file takes a few seconds."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from vitlab.cli.reproduce import Options, parse_args, threads_per_launch
from vitlab.errors import ConfigError
from vitlab.reproduce.launch import Interrupted, Launch, run_side_by_side

CHILD = """
import json, os, sys, time
out, seconds = sys.argv[1], float(sys.argv[2])
began = time.time()
time.sleep(seconds)
json.dump({"began": began, "ended": time.time(), "threads": os.environ.get("OMP_NUM_THREADS")}, open(out, "w"))
"""


class Sleeper(Launch):
    """A launch whose child sleeps `seconds` and records when it ran and the thread cap it was given."""

    def __init__(self, out: Path, seconds: float, threads: int | None = None) -> None:
        super().__init__([str(out), str(seconds)], out.with_suffix(".log"), threads)

    def command(self) -> list[str]:
        return [sys.executable, "-c", CHILD, *self.args]


def test_at_most_width_run_at_once_in_order_with_their_thread_cap(tmp_path: Path) -> None:
    launches = [Sleeper(tmp_path / f"{i}.json", 0.6, threads=1) for i in range(5)]
    events: list[tuple[str, int]] = []
    results = run_side_by_side(
        launches, 2, started=lambda i: events.append(("start", i)), finished=lambda i, c, s: events.append(("end", i))
    )
    assert [code for code, _ in results] == [0] * 5 and all(s >= 0.6 for _, s in results)
    spans = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(5)]
    assert all(s["threads"] == "1" for s in spans)
    for t in sorted(s["began"] + 0.01 for s in spans):  # how many ran at each start
        assert sum(s["began"] <= t < s["ended"] for s in spans) <= 2
    assert sum(spans[1]["began"] < s["ended"] and s["began"] < spans[1]["ended"] for s in spans) >= 2  # overlap
    assert [i for kind, i in events if kind == "start"] == [0, 1, 2, 3, 4]
    assert sorted(i for kind, i in events if kind == "end") == [0, 1, 2, 3, 4]


def test_without_a_cap_the_child_inherits_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    ((code, _),) = run_side_by_side([Sleeper(tmp_path / "a.json", 0.0)], 1)
    assert code == 0 and json.loads((tmp_path / "a.json").read_text())["threads"] is None


def test_an_interrupt_reaches_every_running_child_and_starts_no_new_one(tmp_path: Path) -> None:
    launches = [Sleeper(tmp_path / f"{i}.json", 30) for i in range(4)]
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    began = time.time()
    with pytest.raises(Interrupted) as caught:
        run_side_by_side(launches, 2)
    timer.cancel()
    assert caught.value.signum == signal.SIGTERM and caught.value.code == -signal.SIGTERM
    assert time.time() - began < 20  # the sleeping children died of the signal, they were not waited out
    assert not any((tmp_path / f"{i}.json").exists() for i in range(4))
    assert [p.exists() for p in (tmp_path / f"{i}.log" for i in range(4))] == [True, True, False, False]
    assert signal.getsignal(signal.SIGTERM) == before  # the forwarding handler is gone again


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ""])
def test_parallel_must_be_a_positive_whole_number(value: str) -> None:
    with pytest.raises(ConfigError, match=r"parallel=.*at least 1"):
        parse_args(["paper=vix", "table=mini_digits", f"parallel={value}"])


def test_parallel_and_stream_do_not_mix() -> None:
    with pytest.raises(ConfigError, match=r"stream=true.*parallel=2"):
        parse_args(["paper=vix", "table=mini_digits", "parallel=2", "stream=true"])


def test_each_local_run_gets_its_share_of_the_cores(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert threads_per_launch(Options(parallel=1)) is None  # one at a time: the child's own default
    assert threads_per_launch(Options(parallel=2)) == 4
    assert threads_per_launch(Options(parallel=16)) == 1
    assert threads_per_launch(Options(parallel=2, extra=["hydra/launcher=submitit_slurm"])) is None  # a cluster
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_launch(Options(parallel=2)) is None  # the user's choice stands
