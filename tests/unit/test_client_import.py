"""The thin client must import without torch (apps depend on it cheaply)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_client_imports_without_torch() -> None:
    code = (
        "import sys, textinv_client, textinv_client.cli\n"
        "heavy = sorted({'torch', 'diffusers', 'transformers', 'numpy'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
