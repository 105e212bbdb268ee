"""The README's main job, end to end in CI: ``textinv demo --quick`` goes through the same code
path as the full demo (real inversion, real export, a real server, the real client)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from textinv.cli import main


def test_quick_demo_runs_every_stage_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    for stage in ("invert", "export", "serve", "register", "generate", "evaluate"):
        assert f"| {stage} |" in report
    assert (out / "concept" / "learned_embeds.safetensors").is_file()
    assert (out / "engines" / "manifest.json").is_file()
    fidelity = json.loads((out / "fidelity.json").read_text())
    assert [row["name"] for row in fidelity["rows"]][:2] == ["init word", "learned concept"]
    grid = Image.open(out / "grid.png")
    assert grid.width > 0 and grid.height > grid.width / 4  # a row of training images, then more
