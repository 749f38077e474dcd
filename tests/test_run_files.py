"""vitlab.runs.files: the one JSON writer (one NaN policy, atomic) and the one results.json reader."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from vitlab.runs.files import RESULTS_FILE, read_json, read_results, results_status, write_json


def test_write_json_is_strict_json_with_non_finite_floats_as_null_at_any_depth(tmp_path) -> None:
    path = tmp_path / "results.json"
    write_json(
        path,
        {
            "loss": float("nan"),
            "acc": torch.tensor(0.5),
            "top": np.float32(0.25),
            "nested": {"inf": math.inf, "rows": [1.0, -math.inf, {"x": float("nan")}]},
        },
    )
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    # json.loads with parse_constant raising: the file holds no non-standard token at all
    data = json.loads(text, parse_constant=lambda token: (_ for _ in ()).throw(ValueError(token)))
    assert data == {"loss": None, "acc": 0.5, "top": 0.25, "nested": {"inf": None, "rows": [1.0, None, {"x": None}]}}
    assert not path.with_name("results.json.tmp").exists()


def test_write_json_replaces_the_old_file_whole(tmp_path) -> None:
    path = tmp_path / "run.json"
    write_json(path, {"a": 1, "long": "x" * 1000})
    write_json(path, {"a": 2})
    assert read_json(path) == {"a": 2}


def test_read_results_says_unreadable_for_a_half_written_file_and_none_for_a_missing_one(tmp_path) -> None:
    assert read_results(tmp_path) is None and results_status(tmp_path) is None
    (tmp_path / RESULTS_FILE).write_text('{"status": "o')
    record = read_results(tmp_path)
    assert record is not None and record["status"] == "unreadable" and "unreadable results.json" in record["error"]
    assert results_status(tmp_path) == "unreadable"
    (tmp_path / RESULTS_FILE).write_text("[1, 2]")
    assert results_status(tmp_path) == "unreadable"
    write_json(tmp_path / RESULTS_FILE, {"status": "ok", "test/acc": 0.9})
    assert results_status(tmp_path) == "ok" and read_results(tmp_path)["test/acc"] == 0.9
