"""`vitlab-report` (docs/report.md): what a run holds is on the page and what it lacks is left out, the page is
self-contained, two runs are compared, bad input exits 2 with one paragraph, and a real run's page opens in a
headless Chromium with no console error and every image decoded."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers.train_in_process import train_in_process
from vitlab.cli.report import main
from vitlab.report.build import build_report, curve_series
from vitlab.report.run_files import read_metrics

pytest.importorskip("matplotlib")


class _Page(HTMLParser):
    """Every element's attributes, section ids and image sources of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.attrs: list[tuple[str, str, str | None]] = []
        self.sections: list[str] = []
        self.images: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attrs += [(tag, k, v) for k, v in attrs]
        found = dict(attrs)
        if tag == "section":
            self.sections.append(str(found["id"]))
        if tag == "img":
            self.images.append(str(found["src"]))


def _png(path: Path, colour: str) -> bytes:
    from vitlab.plots.figures import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [0, 1], color=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path)
    return path.read_bytes()


def _fake_run(root: Path, lr: float = 0.001, full: bool = True) -> Path:
    """A run directory as the commands write it (files only: no training), with every optional part when `full`."""
    run = root / f"run_lr{lr}"
    (run / ".hydra").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"created": "2026-12-04T20:00:00+0000", "overrides": [f"optim.lr={lr}"],
        "attempts": [{"git_sha": "abc123", "git_dirty": False, "ended": "2026-12-04T20:01:00+0000"}]}))  # fmt: skip
    results = {"status": "ok", "test/acc": 0.75 + lr, "val/acc": 0.5, "params/total": 1234, "cost/peak_mem_mb": 99.5}
    results |= {"test/acc_top5": None}  # not measured (5 classes or fewer): left out of the page
    if full:
        results |= {"test/ece": 0.031, "test/nll": 0.42, "probe/knn_acc": 0.61, "fewshot/5shot_acc_mean": 0.44}
        results |= {"weights/source": "file:w.safetensors", "weights/loaded": 2, "dynamics/h_mean": 0.97}
        results |= {"attention/mixer": "nystrom", "attention/tv_to_softmax": [0.125, 0.375], "attention/figures": []}
    (run / "results.json").write_text(json.dumps(results))
    (run / "config_resolved.yaml").write_text(f"optim:\n  lr: {lr}\n  opt: adamw\npaths:\n  output_dir: {run}\n")
    if not full:
        return run
    (run / "weights_report.json").write_text(
        json.dumps(
            {"source": "file:w.safetensors", "loaded": ["a.weight", "b.bias"], "new": ["head.fc"], "dropped": {}}
        )
    )
    (run / "metrics").mkdir()
    (run / "metrics" / "test.json").write_text(json.dumps({"num_classes": 3, "class_names": ["cat", "dog", "eel"],
        "per_class_accuracy": [0.9, 0.25, None], "class_support": [10, 8, 0], "scalars": {"acc": 0.75}}))  # fmt: skip
    (run / "csv").mkdir()
    with (run / "csv" / "metrics.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "lr-AdamW/pg1", "lr-AdamW/pg2", "step", "train/loss_epoch", "val/acc", "test/acc"])
        writer.writerows([["", 1e-4, 1e-4, 0, "", "", ""], [0, "", "", 4, 2.3, "", ""], [0, "", "", 4, "", 0.4, ""]])
        writer.writerows([["", 5e-4, 5e-4, 5, "", "", ""], [1, "", "", 9, 2.1, 0.5, ""], [1, "", "", 9, "", "", 0.75]])
    for name, colour in [("confusion_matrix", "red"), ("reliability", "green"), ("attention_rollout", "blue"),
                         ("ode_step_sizes", "black"), ("loss_landscape", "orange")]:  # fmt: skip
        _png(run / "figures" / f"{name}.png", colour)
    (run / "figures" / "half.png").write_bytes(_png(run / "figures" / "half.png", "grey")[:300])  # being written
    return run


def test_the_page_shows_every_part_of_the_run_inline_and_nothing_external(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    path = build_report(run)
    assert path == run / "report.html"
    text = path.read_text()
    page = _Page(text)
    expected = ["run", "config", "curves", "cost", "weights", "results", "per-class", "probes", "calibration"]
    assert page.sections == [*expected, "attention", "ode", "figures", "skipped"]
    # every whole figure of the run is on the page once, byte for byte; the half-written one is not
    figures = {p.stem: p.read_bytes() for p in (run / "figures").glob("*.png") if p.stem != "half"}
    inlined = [base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in page.images]
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert len(inlined) == len(figures) + 1  # + the curves, drawn from metrics.csv
    assert all(inlined.count(data) == 1 for data in figures.values())
    assert "half.png" in text
    # self-contained: no attribute points anywhere but into the page or at inline data
    links = [
        (tag, k, v) for tag, k, v in page.attrs if k in ("src", "href") and not (v or "").startswith(("data:", "#"))
    ]
    assert not links and not re.search(r"https?://", text)
    for shown in ("0.751", "1,234", "99.5", "0.031", "0.42", "0.61", "0.44", "abc123", "a.weight", "head.fc", "0.97"):
        assert shown in text, shown
    assert re.search(r"<td>dog</td><td class=\"num\">0.25</td><td class=\"num\">8</td>", text)  # per class
    assert "<td>nystrom</td>" in text and "<th>tv_to_softmax</th>" in text  # attention: one block a row
    assert re.search(r'<td class="num">1</td><td class="num">0.375</td></tr>', text)


def test_a_run_with_only_its_results_gets_only_those_sections(tmp_path: Path) -> None:
    text = build_report(_fake_run(tmp_path, full=False)).read_text()
    assert _Page(text).sections == ["run", "config", "cost", "results"] and "<img" not in text
    assert "test/acc" in text and "test/acc_top5" not in text


def test_two_runs_side_by_side_with_the_config_diff_and_differences(tmp_path: Path) -> None:
    a, b = _fake_run(tmp_path, lr=0.001), _fake_run(tmp_path, lr=0.01, full=False)
    text = build_report(a, b, out=tmp_path / "out" / "cmp.html").read_text()
    assert not (a / "report.html").exists()
    diff = re.search(r'<pre class="diff">(.*?)</pre>', text, re.S)[1]
    changed = [line for _, line in re.findall(r'<span class="(add|del)">(.*?)</span>', diff)]
    # only lr differs: each run's own folder (paths.output_dir) reads <run dir> on both sides
    assert changed == ["--- run_lr0.001", "+++ run_lr0.01", "-  lr: 0.001", "+  lr: 0.01"]
    row = re.search(r"<td>test/acc</td>(.*?)</tr>", text)[1]
    assert re.findall(r">([-\d.]+)<", row) == ["0.751", "0.76", "0.009"]  # a, b, b − a
    assert "run_lr0.01: no ode_step_sizes.png" in text  # a figure one run lacks says so


def test_curves_are_the_metrics_csv_columns_against_the_step(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    series = curve_series(read_metrics(run))
    assert list(series) == ["loss", "accuracy", "learning rate"]
    assert series["loss"] == {"train/loss_epoch": ([4.0, 9.0], [2.3, 2.1])}
    assert series["accuracy"] == {"val/acc": ([4.0, 9.0], [0.4, 0.5])}  # test/acc is one point: not a curve
    assert series["learning rate"] == {"lr-AdamW/pg1": ([0.0, 5.0], [1e-4, 5e-4])}  # pg2 is the same curve


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "runs" / "x").mkdir(parents=True) or p / "runs", "is not a run directory"),
        (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is a file, not a run directory"),
    ],
)
def test_bad_folders_exit_2_with_one_paragraph(tmp_path: Path, capsys, make, says: str) -> None:
    target = make(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(target)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and says in err and str(target) in err
    assert err.startswith("\nvitlab-report: error: ") and err.strip().count("\n") == 0


def test_without_matplotlib_it_exits_2_naming_the_pip_command(tmp_path: Path, capsys, monkeypatch) -> None:
    run = _fake_run(tmp_path, full=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails as if not installed
    with pytest.raises(SystemExit) as exit_info:
        main([str(run)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "vitlab-report needs" in err and "pip install 'vitlab[plots]'" in err
    assert not (run / "report.html").exists()


def _browser():
    """A headless Chromium driven by Selenium, or a skip saying what is missing (CI installs both: .ci/run)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    binary, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,2000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


DECODED = "return [...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0 && i.naturalHeight > 0])"


@pytest.mark.slow  # trains two tiny runs in-process (seconds) and starts a browser
def test_a_real_runs_page_opens_in_headless_chromium_with_no_error_and_every_image_decoded(tmp_path: Path) -> None:
    browser = _browser()
    try:
        fast = ["tiny=smoke", "trainer.max_epochs=2", "trainer.enable_progress_bar=false"]
        ode = tmp_path / "ode"
        train_in_process(ode, [*fast, "model/step_size=scalar", "model/head=memory_ode"])
        plain = tmp_path / "plain"
        train_in_process(plain, fast)
        assert {"ode_step_sizes.png", "ode_memory_trajectory.png"} <= {p.name for p in (ode / "figures").glob("*")}
        for page in (build_report(ode), build_report(ode, plain, out=tmp_path / "both.html")):
            expected = _Page(page.read_text()).images
            assert len(expected) >= 3  # the curves and the two ODE pictures at least
            browser.get(page.as_uri())
            decoded = browser.execute_script(DECODED)
            assert len(decoded) == len(expected) and all(ok for _, ok in decoded), decoded
            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
    finally:
        browser.quit()
