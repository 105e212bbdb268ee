"""The design's layout rules: what may import what, and rooms small enough to read.

DESIGN.md: nothing in ``textinv/`` imports the export, server or client packages, apart from the
one place where the ``textinv`` command is composed (``textinv/cli/``); ``textinv_export`` never
imports ``textinv_server``; the thin client imports nothing heavy. Every package may use the
client distribution's two torch-free vocabularies, ``textinv_client.choices`` (the closed choices)
and ``textinv_client.flags`` (command-line flags derived from config fields), so that a choice is
spelled once on both sides of the wire.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The client's modules that every package may import: the shared, torch-free vocabulary.
SHARED = {"textinv_client.choices", "textinv_client.flags"}
# package folder → top-level packages it must never import (DESIGN.md: layout).
FORBIDDEN = {
    "textinv": {"textinv_export", "textinv_server", "textinv_client"},
    "export/textinv_export": {"textinv_server", "textinv_client"},
    "client/textinv_client": {
        "torch",
        "textinv",
        "textinv_export",
        "textinv_server",
        "diffusers",
        "transformers",
        "numpy",
    },
}
# Where the one `textinv` command is composed, with the demo and the benchmarks that compose
# every stage: the only place in textinv/ that imports the other packages.
COMPOSER = ROOT / "textinv" / "cli"
# Rooms small enough to read (issue 11): lines per file and per function, generated code aside.
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
SOURCE_FOLDERS = ("textinv", "export", "server", "client", "scripts")


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name that ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def breaches(path: Path, forbidden: set[str]) -> list[str]:
    return sorted(
        module
        for module in imported_modules(path)
        if module.split(".")[0] in forbidden and module not in SHARED
    )


def source_files() -> list[Path]:
    return sorted(
        path
        for folder in SOURCE_FOLDERS
        for path in (ROOT / folder).rglob("*.py")
        if "_pb2" not in path.name and not {"build", "dist"} & set(path.parts)
    )


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_folders_import_only_what_the_design_allows(folder: str) -> None:
    found = {
        str(path.relative_to(ROOT)): breaches(path, FORBIDDEN[folder])
        for path in (ROOT / folder).rglob("*.py")
        if not path.is_relative_to(COMPOSER)
    }
    assert {path: names for path, names in found.items() if names} == {}


def test_the_rule_sees_a_breach(tmp_path: Path) -> None:
    # Guards the check above against a parser that silently finds nothing.
    module = tmp_path / "m.py"
    module.write_text(
        "import torch\nfrom textinv_client.choices import Precision\n"
        "def f():\n    from textinv_server.app import serve\n"
    )
    assert breaches(module, FORBIDDEN["textinv"]) == ["textinv_server.app"]
    assert breaches(module, FORBIDDEN["client/textinv_client"]) == ["textinv_server.app", "torch"]


def test_no_file_is_longer_than_the_limit() -> None:
    long_files = {
        str(path.relative_to(ROOT)): lines
        for path in source_files()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES
    }
    assert long_files == {}


def test_no_function_is_longer_than_the_limit() -> None:
    long_functions = {}
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions[f"{path.relative_to(ROOT)}:{node.name}"] = lines
    assert long_functions == {}
