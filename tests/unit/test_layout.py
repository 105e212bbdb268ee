"""The design's dependency rules between the top-level folders, checked on every import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# package folder → packages it must never import (DESIGN.md: layout).
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
# The one module that composes every package's subcommands.
COMPOSER = ROOT / "textinv" / "cli.py"


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_folders_import_only_what_the_design_allows(folder: str) -> None:
    breaches = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[folder])
        for path in (ROOT / folder).rglob("*.py")
        if path != COMPOSER
    }
    assert {path: names for path, names in breaches.items() if names} == {}
