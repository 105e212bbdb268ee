"""``textinv concept inspect|convert`` and ``--version`` through the real entry point."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from textinv import __version__
from textinv.cli import main
from textinv.concepts import Concept, ConceptFormat, load_concept, save_concept


@pytest.fixture
def concept_file(tmp_path: Path) -> Path:
    return save_concept(
        Concept("<cat-toy>", torch.randn(2, 32)), tmp_path / "learned_embeds.safetensors"
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_inspect_json(concept_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["concept", "inspect", str(concept_file), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["token"] == "<cat-toy>" and facts["num_vectors"] == 2 and facts["width"] == 32
    assert facts["format"] == "diffusers" and facts["format_version"] == 1


def test_inspect_text(concept_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["concept", "inspect", str(concept_file)]) == 0
    assert "<cat-toy>" in capsys.readouterr().out


def test_convert_to_a1111_and_back(concept_file: Path, tmp_path: Path) -> None:
    assert (
        main(["concept", "convert", str(concept_file), str(tmp_path / "c.pt"), "--to", "a1111"])
        == 0
    )
    a1111 = load_concept(tmp_path / "c.pt")
    assert a1111.source_format is ConceptFormat.A1111
    out = tmp_path / "back.safetensors"
    assert main(["concept", "convert", str(tmp_path / "c.pt"), str(out), "--to", "diffusers"]) == 0
    assert torch.equal(load_concept(out).vectors, load_concept(concept_file).vectors)


def test_bad_file_prints_one_line_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a concept")
    assert main(["concept", "inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.pt" in err and "Traceback" not in err


def test_inspect_refuses_a_strided_pt_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "expanded.pt"
    torch.save({"<x>": torch.zeros(1).expand(1_000_000, 768)}, bad)
    assert bad.stat().st_size < 4000
    assert main(["concept", "inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "strided or expanded" in err and "Traceback" not in err


def test_inspect_refuses_a_huge_safetensors_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "huge.safetensors"
    bad.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    assert main(["concept", "inspect", str(bad)]) == 2
    assert "header claims" in capsys.readouterr().err


def test_inspect_names_a_kohya_file_after_its_stem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_file({"emb_params": torch.randn(2, 32)}, tmp_path / "EasyNegative.safetensors")
    assert main(["concept", "inspect", str(tmp_path / "EasyNegative.safetensors"), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["token"] == "EasyNegative" and facts["format"] == "kohya"
