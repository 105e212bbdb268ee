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
    # The fidelity table with standard errors, read along the run through the torch backend.
    fidelity = json.loads((out / "fidelity.json").read_text())
    (run,) = fidelity["runs"]
    assert [reading["step"] for reading in run["readings"]] == [15, 30]
    assert fidelity["caption"]["reconstruction"]["n"] == 4
    assert "| toy-stripes | best caption |" in report and "| toy-stripes | learned | 30 |" in report
    assert " ± " in report and "time-to-concept" in report
    assert (out / "time-to-concept.png").stat().st_size > 1000
    grid = Image.open(out / "grid.png")
    assert grid.width > 0 and grid.height > grid.width / 4  # a row of training images, then more
