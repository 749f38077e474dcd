"""Docs that run: every `vitlab-*` command line of README.md, docs/**/*.md and examples/**/*.md composes, every
repository path and link anchor they name exists, and docs/extending.md's source tree is what
scripts/layout_tree.py prints.

A command line is a line of a code block that runs `vitlab-train|eval|bench|reproduce` (with `\\` continuations
joined and `# comments` cut), an inline code span that starts with one of them followed by arguments (a bare
`vitlab-train` in prose names the script), or `make train|reproduce|bench ARGS="..."`. Each is composed in
process as that console script would compose it for `--cfg job` (argv handling included: `resume=`, the bench
name, the table of `vitlab-reproduce`), resolved, and checked by `vitlab.cli.validate`; nothing trains. A test
id names the doc line, so a renamed key or option fails with the line to fix.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import vitlab.cli.resolvers  # noqa: F401  (the ${vitlab.*} resolvers, as every console script registers them)
from vitlab.compose import compose_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "examples").rglob("*.md"))]
SCRIPTS = ("vitlab-train", "vitlab-eval", "vitlab-bench", "vitlab-reproduce")
MAKE_TARGETS = {"train": ("vitlab-train",), "reproduce": ("vitlab-reproduce",), "bench": ("vitlab-bench", "attention")}

# Placeholders of the docs and what a command line gets in their place (an unknown one fails the test: add it here).
RUN_DIR = "outputs/runs/2026-11-30/10-00-00_train"
PLACEHOLDERS = {
    "<date>": "2026-11-30",
    "<time>": "10-00-00",
    "<overrides>": "",  # "any overrides": none
    "<file.ckpt>": f"{RUN_DIR}/checkpoints/last.ckpt",
    "<a checkpoint>": f"{RUN_DIR}/checkpoints/last.ckpt",
    "<row dir>": "outputs/reproduce/vix/mini_digits/mini/vit/digits",
    "outputs/runs/...": RUN_DIR,  # "a run directory"
    " ... ": " ",  # "and more overrides"
    # docs/configs.md runs it from examples/my_project (`cd my_project`)
    "--config-dir configs": f"--config-dir {ROOT / 'examples' / 'my_project' / 'configs'}",
}
PACKED = "<packed dir>"  # a packed set (`vitlab-data pack`): digits, packed once per test process


@functools.cache
def packed_digits() -> str:
    import atexit
    import shutil
    import tempfile

    from vitlab.data.digits import DigitsDataModule
    from vitlab.data.shards.pack import pack

    out = Path(tempfile.mkdtemp(prefix="vitlab-docs-")) / "packed"
    atexit.register(shutil.rmtree, out.parent, True)
    source = OmegaConf.to_container(compose_config("train", ["data=digits"]).data, resolve=True)
    pack(DigitsDataModule(), str(out), source=source, progress=False)  # type: ignore[arg-type]
    return str(out)


# Lines that name a script without being a command line; keep this short, each with its reason.
SKIPPED: dict[str, str] = {}

SCRIPT_RE = re.compile(r"(?:^|(?<=\s))(" + "|".join(SCRIPTS) + r")(?=\s|$)")
MAKE_RE = re.compile(r"\bmake (train|reproduce|bench) ARGS=(\"[^\"]*\"|'[^']*'|\S+)")
SPAN_RE = re.compile(r"(`+)(.+?)\1")


@dataclass(frozen=True)
class DocCommand:
    where: str  # "<doc>:<line>"
    text: str  # the command line as written (continuations joined)

    def argv(self) -> tuple[str, list[str]]:
        """(console script, its arguments) after the placeholders are filled in."""
        text = f" {self.text} "
        if PACKED in text:  # data=shards reads its manifest when it composes: a real packed set
            text = text.replace(PACKED, packed_digits())
        for placeholder, value in PLACEHOLDERS.items():
            text = text.replace(placeholder, value)
        unknown = re.findall(r"<[^<>]*>", text)
        assert not unknown, f"{self.where}: unknown placeholder {unknown}: add it to PLACEHOLDERS in {__file__}"
        make = MAKE_RE.search(text)
        if make:
            return MAKE_TARGETS[make[1]][0], [*MAKE_TARGETS[make[1]][1:], *shlex.split(shlex.split(make[2])[0])]
        script, *args = shlex.split(text)
        return script, args


def _cut_comment(text: str) -> str:
    return re.split(r"(?:^|\s)#", text, maxsplit=1)[0].strip()


def doc_commands() -> list[DocCommand]:
    """Every command line of the docs, in file and line order."""
    found = []
    for path in DOCS:
        rel = path.relative_to(ROOT).as_posix()
        lines = path.read_text().splitlines()
        in_block, i = False, 0
        while i < len(lines):
            line, start = lines[i], i + 1
            if line.startswith("<!-- layout: generated"):  # module docstrings (scripts/layout_tree.py), not commands
                i = next(j for j in range(i, len(lines)) if lines[j].startswith("<!-- layout: end"))
                continue
            if line.lstrip().startswith("```"):
                in_block = not in_block
                i += 1
                continue
            if in_block:
                while line.rstrip().endswith("\\") and i + 1 < len(lines):  # a continued shell line
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                line = _cut_comment(line.strip().removeprefix("$ "))
                texts = [line[m.start() :] for m in SCRIPT_RE.finditer(line)][:1]
                texts += [m[0] for m in MAKE_RE.finditer(line)]
            else:
                spans = [m[2].strip() for m in SPAN_RE.finditer(line)]
                texts = [s for s in spans if SCRIPT_RE.match(s) and " " in s]  # a bare name is the script's name
                texts += [m[0] for s in spans for m in MAKE_RE.finditer(s)]
            found += [DocCommand(f"{rel}:{start}", t) for t in texts if t not in SKIPPED]
            i += 1
    return found


COMMANDS = doc_commands()


def resolved_job(config_name: str, overrides: list[str]) -> dict:
    """The config `--cfg job --resolve` prints: composed with Hydra's node (so `${hydra:...}` resolves as in a
    run that starts now), every interpolation of the job's keys resolved."""
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_config(config_name, overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    OmegaConf.set_readonly(cfg.hydra, False)
    if OmegaConf.is_missing(cfg.hydra.job, "num"):
        cfg.hydra.job.num = 0
    cfg.hydra.runtime.output_dir = os.path.abspath(cfg.hydra.run.dir)
    return {str(k): OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in cfg if k != "hydra"}  # fmt: skip


def hydra_jobs(argv: list[str]) -> tuple[list[list[str]], object]:
    """Hydra's own parsing of a console script's argv: the overrides of every job it would run (a multirun's
    sweep expanded), with `--config-dir` as a search path; and the parsed flags."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = get_args_parser().parse_args(argv)  # an unknown flag fails here as it fails in Hydra
    search = [f"hydra.searchpath=[file://{os.path.abspath(args.config_dir)}]"] if args.config_dir else []
    overrides = [*args.overrides, *search]
    if not args.multirun:
        return [overrides], args
    parsed = OverridesParser.create().parse_overrides(overrides)
    (jobs,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    # every value of every swept key once (not every combination: composing is ~0.3 s a job)
    swept = [o for o in parsed if o.is_sweep_override()]
    width = max((len(list(o.sweep_string_iterator())) for o in swept), default=1)
    keep = []
    for i in range(width):
        values = {o.get_key_element(): list(o.sweep_string_iterator()) for o in swept}
        want = {f"{key}={vals[i % len(vals)]}" for key, vals in values.items()}
        keep.append(next(job for job in jobs if want <= set(job)))
    return keep, args


@functools.cache
def compose_command(script: str, argv: tuple[str, ...]) -> str:
    """Compose `script argv` as the console script would; raises what it would raise. Returns a summary."""
    from vitlab.cli.validate import check_config
    from vitlab.extras import check_argv

    argv_list = list(argv)
    check_argv(argv_list)
    if script == "vitlab-reproduce":
        return compose_reproduce(argv_list)
    if script == "vitlab-bench" and argv_list and not argv_list[0].startswith("-") and "=" not in argv_list[0]:
        argv_list[0] = f"bench={argv_list[0]}"  # vitlab.cli.bench.main's sugar
    config_name = script.removeprefix("vitlab-")
    if script == "vitlab-train":
        from vitlab.cli.launcher_check import check_launcher
        from vitlab.cli.resume import expand_resume_argv

        check_launcher("train", argv_list)
        argv_list = expand_resume_argv(argv_list)
    jobs, args = hydra_jobs(argv_list)
    if args.cfg == "hydra" and args.resolve:
        from vitlab.cli.show_hydra import composed_overrides, resolved_hydra_yaml

        resolved_hydra_yaml(config_name, composed_overrides(argv_list))
    for overrides in jobs:
        job = resolved_job(config_name, overrides)
        check_config(OmegaConf.create(job))
        if script == "vitlab-bench":
            from vitlab.cli.bench import BENCHES

            assert job["bench"] in BENCHES, f"bench={job['bench']} is not one of {BENCHES}"
        if script == "vitlab-eval":
            assert job.get("ckpt_path"), "vitlab-eval needs ckpt_path="
    return f"{config_name}: {len(jobs)} job(s)"


def compose_reproduce(argv: list[str]) -> str:
    """`vitlab-reproduce`: its own arguments, the table at that scale, the config it composes first (the
    table's first run with the pass-through overrides), and the first row's first run."""
    from vitlab.cli.reproduce import base_config, parse_args, print_tables, resolve

    if not argv:
        print_tables()  # lists every table: each definition loads
        return "tables listed"
    opts = parse_args(argv)
    spec = resolve(opts)
    base_config(spec, opts)
    jobs = spec.jobs(opts.scale, opts.extra)
    if jobs:  # every row of every table is composed by tests/test_reproduce_tables.py
        resolved_job("train", list(jobs[0].overrides))
    return f"{spec.key} at scale={opts.scale}: {len(jobs)} jobs"


def test_docs_have_commands():
    """The extraction finds the command lines (a broken pattern would otherwise pass every test by finding none)."""
    scripts = {c.argv()[0] for c in COMMANDS}
    assert scripts == set(SCRIPTS), scripts
    assert len(COMMANDS) >= 80, len(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_doc_command_composes(command: DocCommand, tmp_path, monkeypatch):
    """Compose one command line of the docs as `--cfg job` would (see the module docstring)."""
    from vitlab.runs.state import RunState

    monkeypatch.chdir(tmp_path)  # relative run directories (resume=, resume=auto) are looked up here
    RunState(overrides=["seed=1"]).write(tmp_path / RUN_DIR)  # an interrupted run for resume=<run dir>
    from hydra.core.hydra_config import HydraConfig

    script, argv = command.argv()
    before = HydraConfig.instance().cfg
    try:
        compose_command(script, tuple(argv))
    except (Exception, SystemExit) as exc:  # SystemExit: Hydra's argument parser refused the command line
        pytest.fail(f"{command.where}: `{command.text}` does not compose: {type(exc).__name__}: {exc}")
    finally:
        HydraConfig.instance().cfg = before  # no Hydra app state left for the tests that run after these


# Repository paths named in the docs: inline code that starts with one of these folders, and links to local files.
REPO_PATH_RE = re.compile(r"(?<![\w./-])((?:src|docs|configs|scripts|tests|examples|sweeps)/[^\s`'\"();]*)")
# Files the docs tell the user to create (they are not in the repository), with the reason.
USER_FILES = {"configs/local/default.yaml": "your machine's config, copied from slurm_example.yaml (git-ignored)"}
LINK_RE = re.compile(r"\[[^\]]*\]\(([^()\s]+)\)")


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) outside code blocks."""
    out, in_block = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
        elif not in_block:
            out.append((number, line))
    return out


def _expand_braces(text: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", text)
    if not match:
        return [text]
    return [
        x for part in match[1].split(",") for x in _expand_braces(text[: match.start()] + part + text[match.end() :])
    ]


def _exists(relative: str, base: Path) -> bool:
    """Whether a path of the docs names something in the repository; `<placeholders>`, `*` and `{a,b}` must
    match at least one file."""
    relative = re.sub(r"(#.*|:\d+(-\d+)?)$", "", relative.rstrip(",")).rstrip(".:")
    if relative in USER_FILES:
        return True
    pattern = re.sub(r"<[^<>]*>", "*", relative).replace("...", "*")
    for candidate in _expand_braces(pattern):
        if any(ch in candidate for ch in "*?["):
            if not any(base.glob(candidate.lstrip("/"))):
                return False
        elif not (base / candidate).exists():
            return False
    return True


def doc_paths() -> list[tuple[str, str, Path]]:
    """(doc line, path as written, the folder it is relative to) for every repository path and local link."""
    found = []
    for doc in DOCS:
        rel = doc.relative_to(ROOT).as_posix()
        for number, line in _prose_lines(doc):
            for span in SPAN_RE.finditer(line):
                found += [(f"{rel}:{number}", m[1], ROOT) for m in REPO_PATH_RE.finditer(span[2])]
            for link in LINK_RE.finditer(line):
                target = link[1]
                if not re.match(r"[a-z]+:|#", target):
                    found.append((f"{rel}:{number}", target.split("#")[0], doc.parent))
    return found


def test_every_repository_path_in_the_docs_exists():
    paths = doc_paths()
    assert len(paths) > 100, len(paths)
    missing = [f"{where}: {path}" for where, path, base in paths if not _exists(path, base)]
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    seen: dict[str, int] = {}
    for _, line in _prose_lines(doc):
        if re.match(r"#{1,6} ", line):
            anchor = github_anchor(line.lstrip("#"))
            seen[anchor] = seen.get(anchor, -1) + 1
            if seen[anchor]:
                seen[f"{anchor}-{seen[anchor]}"] = 0
    return set(seen)


def test_every_link_anchor_in_the_docs_exists():
    broken = []
    for doc in DOCS:
        rel = doc.relative_to(ROOT).as_posix()
        for number, line in _prose_lines(doc):
            for link in LINK_RE.finditer(line):
                target, _, anchor = link[1].partition("#")
                if not anchor or re.match(r"[a-z]+:", target):
                    continue
                page = (doc.parent / target).resolve() if target else doc
                if page.suffix == ".md" and page.exists() and anchor not in anchors(page):
                    broken.append(f"{rel}:{number}: {link[1]}")
    assert not broken, "links to headings that do not exist:\n" + "\n".join(broken)


def test_layout_tree_in_extending_md_is_the_code():
    """docs/extending.md shows the tree scripts/layout_tree.py prints today."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("layout_tree", ROOT / "scripts" / "layout_tree.py")
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    assert layout.documented(), f"{layout.DOC}: the layout markers are missing"
    assert layout.documented() == layout.block(), (
        "docs/extending.md's source tree is out of date: run `python scripts/layout_tree.py --write`"
    )


def test_every_docs_section_cited_by_the_code_exists():
    """Code and configs cite their sources as `docs/<page>.md#<section>`: renaming a heading must not orphan one."""
    cited = re.compile(r"docs/[\w/.-]+\.md(?:#[\w-]+)?")
    files = [
        *ROOT.glob("src/**/*.py"),
        *ROOT.glob("configs/**/*.yaml"),
        *ROOT.glob("scripts/*.py"),
        *ROOT.glob("scripts/*.sh"),
        *ROOT.glob("tests/**/*.py"),
    ]
    broken, count = [], 0
    for path in [*files, ROOT / "Makefile", ROOT / "pyproject.toml"]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in cited.finditer(line):
                count += 1
                page, _, anchor = match[0].partition("#")
                if not (ROOT / page).is_file() or (anchor and anchor not in anchors(ROOT / page)):
                    broken.append(f"{path.relative_to(ROOT)}:{number}: {match[0]}")
    assert count > 50, count
    assert not broken, "docs pages or sections cited in the code that do not exist:\n" + "\n".join(broken)
