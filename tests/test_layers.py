"""The layers of pyproject.toml's import contract hold for dotted strings too (`lint-imports` sees imports only).

A string such as "vitlab.cli.train" handed to `python -m`, `hydra.utils.get_object` or a `_target_` override
loads that module as surely as an import does. No module of src/ names a module of a layer above its own.
"""

from __future__ import annotations

import ast
import re

import tomllib

from conftest import ROOT

SRC = ROOT / "src" / "vitlab"
DOTTED = re.compile(r"\bvitlab\.([a-z_]+)\b")


def _layers() -> dict[str, int]:
    """top-level module -> its layer's index (0 = the top)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in config if c["type"] == "layers"]
    return {name.strip(): i for i, layer in enumerate(layers) for name in re.split(r"[|:]", layer)}


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string constant that is not a docstring (an f-string's literal parts included)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_no_module_names_a_module_of_a_higher_layer_in_a_string() -> None:
    layers = _layers()
    found = []
    for path in sorted(SRC.rglob("*.py")):
        own = path.relative_to(SRC).parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        for line, text in _strings(ast.parse(path.read_text())):
            for target in DOTTED.findall(text):
                if target in layers and layers[target] < layers[own]:
                    found.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not found, "dotted strings that load a higher layer:\n" + "\n".join(found)


def test_the_check_sees_a_string_that_crosses_a_layer() -> None:
    tree = ast.parse('"""vitlab.cli.train in a docstring is prose."""\nCMD = ["-m", "vitlab.cli.train"]\n')
    assert [t for _, text in _strings(tree) for t in DOTTED.findall(text)] == ["cli"]
    assert _layers()["cli"] < _layers()["training"] < _layers()["models"] == _layers()["data"]


def test_the_packaged_configs_import_nothing_of_vitlab() -> None:
    """`vitlab.configs` (the repository's configs/, outside src/) is data: import-linter does not see it."""
    tree = ast.parse((ROOT / "configs" / "__init__.py").read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.split(".")[0] == "vitlab"], imported


def test_console_script_is_this_environments_and_a_missing_one_is_a_clear_error() -> None:
    import sys
    from pathlib import Path

    import pytest

    from vitlab.console import console_script
    from vitlab.errors import ConfigError

    (script,) = console_script("vitlab-train")
    assert Path(script).is_file() and Path(script).parent == Path(sys.executable).parent
    with pytest.raises(ConfigError, match=r"vitlab-nonexistent is not installed for .*pip install -e \."):
        console_script("vitlab-nonexistent")
