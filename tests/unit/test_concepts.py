"""Concept files: every format we read, what we write, and everything we refuse."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from textinv.concepts import (
    Concept,
    ConceptFormat,
    ConceptMetadata,
    check_token,
    load_concept,
    parse_concept,
    save_concept,
)
from textinv.errors import ConceptFileError, InvalidInputError

WIDTH = 32


def make_concept(token: str = "<cat-toy>", k: int = 2, seed: int = 0) -> Concept:
    vectors = torch.randn(k, WIDTH, generator=torch.Generator().manual_seed(seed))
    return Concept(token, vectors, ConceptMetadata(base_model_hash="ab" * 32, steps=500))


def test_diffusers_file_round_trips_with_metadata(tmp_path: Path) -> None:
    concept = make_concept()
    path = save_concept(concept, tmp_path / "learned_embeds.safetensors")
    loaded = load_concept(path, expected_width=WIDTH)
    assert loaded.token == "<cat-toy>" and loaded.source_format is ConceptFormat.DIFFUSERS
    assert torch.equal(loaded.vectors, concept.vectors)
    assert loaded.metadata == concept.metadata


def test_our_file_loads_unchanged_in_diffusers(tmp_path: Path, tiny_model_dir: Path) -> None:
    concept = make_concept()
    path = save_concept(concept, tmp_path / "learned_embeds.safetensors")
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipeline.load_textual_inversion(path)
    ids = pipeline.tokenizer.convert_tokens_to_ids(["<cat-toy>", "<cat-toy>_1"])
    table = pipeline.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[ids], concept.vectors)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a1111_round_trip(tmp_path: Path, suffix: str) -> None:
    concept = make_concept("<style>", k=3)
    path = save_concept(concept, tmp_path / f"style{suffix}", ConceptFormat.A1111)
    loaded = load_concept(path)
    assert loaded.token == "<style>" and loaded.source_format is ConceptFormat.A1111
    assert torch.equal(loaded.vectors, concept.vectors)
    assert loaded.metadata.steps == 500


def test_a1111_pickle_as_automatic1111_writes_it(tmp_path: Path) -> None:
    vectors = torch.randn(4, WIDTH)
    state = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.nn.Parameter(vectors)},
        "name": "myword",
        "step": 1200,
        "sd_checkpoint": "925997e9",
        "sd_checkpoint_name": "v1-5-pruned",
    }
    torch.save(state, tmp_path / "myword.pt")
    loaded = load_concept(tmp_path / "myword.pt")
    assert loaded.token == "myword" and loaded.num_vectors == 4
    assert loaded.metadata.steps == 1200 and loaded.metadata.base_model_hash == "925997e9"


def test_kohya_takes_its_token_from_the_file_name(tmp_path: Path) -> None:
    save_file({"emb_params": torch.randn(2, WIDTH)}, tmp_path / "kohya-thing.safetensors")
    loaded = load_concept(tmp_path / "kohya-thing.safetensors")
    assert loaded.token == "kohya-thing" and loaded.source_format is ConceptFormat.KOHYA


def test_sdxl_pair_is_read_and_kept(tmp_path: Path) -> None:
    save_file(
        {"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, tmp_path / "xl.safetensors"
    )
    loaded = load_concept(tmp_path / "xl.safetensors")
    assert loaded.source_format is ConceptFormat.SDXL
    assert (
        loaded.width == 768 and loaded.vectors_2 is not None and loaded.vectors_2.shape == (2, 1280)
    )


def test_single_vector_saved_as_1d_is_accepted(tmp_path: Path) -> None:
    torch.save({"<one>": torch.randn(WIDTH)}, tmp_path / "one.bin")
    assert load_concept(tmp_path / "one.bin").vectors.shape == (1, WIDTH)


def test_fp16_vectors_are_read_as_float32(tmp_path: Path) -> None:
    save_file({"<half>": torch.randn(2, WIDTH).half()}, tmp_path / "half.safetensors")
    assert load_concept(tmp_path / "half.safetensors").vectors.dtype == torch.float32


class _RunsACommand:
    """Unpickling this would run ``touch`` through os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    pickle.dump({"<evil>": _RunsACommand(marker)}, buffer)
    (tmp_path / "evil.pt").write_bytes(buffer.getvalue())
    torch.save(
        {"string_to_param": {"*": _RunsACommand(marker)}, "name": "x"}, tmp_path / "evil2.pt"
    )
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(ConceptFileError, match=name):
            load_concept(tmp_path / name)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"<x>": torch.tensor([[float("nan")] * WIDTH])}, "non-finite"),
        ({"<x>": torch.tensor([[float("inf")] * WIDTH])}, "non-finite"),
        ({"<x>": torch.randn(2, 16)}, "width 16"),
        ({"<x>": torch.zeros(0, WIDTH)}, "zero vectors"),
        ({"<x>": torch.zeros(2, WIDTH)}, "all zeros"),
        ({"<x>": torch.ones(2, WIDTH, dtype=torch.int32)}, "floating point"),
        ({"<x>": torch.randn(2, 2, WIDTH)}, r"\[K, D\]"),
        ({"a": torch.randn(1, WIDTH), "b": torch.randn(1, WIDTH)}, "not a known concept format"),
        ({"bad token": torch.randn(1, WIDTH)}, "whitespace"),
        ({"<" + "x" * 70 + ">": torch.randn(1, WIDTH)}, "1 to 64"),
    ],
)
def test_bad_files_are_refused_naming_the_file(tmp_path: Path, tensors, match: str) -> None:
    path = tmp_path / "bad.safetensors"
    save_file(tensors, path)
    with pytest.raises(ConceptFileError, match=match) as error:
        load_concept(path, expected_width=WIDTH)
    assert "bad.safetensors" in str(error.value)


@pytest.mark.parametrize(
    "data", [b"", b"garbage bytes that are not a file", b"\x08" + b"\0" * 7 + b"{oops"]
)
def test_unreadable_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ConceptFileError, match="upload.bin"):
        parse_concept(data, "upload.bin")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConceptFileError, match="absent.safetensors"):
        load_concept(tmp_path / "absent.safetensors")


def test_token_colliding_with_vocabulary_is_refused(tiny_model) -> None:
    vocabulary = tiny_model.tokenizer.get_vocab()
    with pytest.raises(InvalidInputError, match="collides"):
        check_token("cat", vocabulary)
    with pytest.raises(InvalidInputError, match="collides"):
        check_token("<|endoftext|>", vocabulary)
    check_token("<cat-toy>", vocabulary, num_vectors=4)


def test_rename_on_load(tmp_path: Path) -> None:
    path = save_concept(make_concept(), tmp_path / "c.safetensors")
    assert load_concept(path, token="<renamed>").token == "<renamed>"
