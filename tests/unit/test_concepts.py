"""Concept files: every format we read, what we write, and everything we refuse."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import resource
import struct
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save as save_safetensors
from safetensors.torch import save_file

from textinv.concept_io import MAX_HEADER_BYTES
from textinv.concepts import (
    MAX_WIDTH,
    Concept,
    ConceptFormat,
    ConceptMetadata,
    check_token,
    load_concept,
    parse_concept,
    save_concept,
)
from textinv.errors import ConceptFileError, InvalidInputError, UnknownConceptError

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


# ---------------------------------------------------------------------------------------------
# Hostile files: each is refused in bounded time and memory, before anything is copied.


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def _cheap() -> Iterator[None]:
    """The block must take well under a second and must not grow the process's peak memory
    (every claim below is ≥ 3 GB, so a conversion of any of them would show)."""
    before, start = _peak_rss_mib(), time.perf_counter()
    yield
    assert time.perf_counter() - start < 1.0
    assert _peak_rss_mib() - before < 200


def _pt(state: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _safetensors(header: dict | bytes, body: bytes = b"", length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + body


_ONE_ROW = torch.ones(1, WIDTH).numpy().tobytes()


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (torch.zeros(1).expand(1_000_000, 768), "strided or expanded"),
        (torch.ones(1).as_strided((1_000_000, 768), (0, 0)), "strided or expanded"),
        (torch.randn(100, WIDTH)[:2], "exactly their elements"),
        (torch.randn(8, WIDTH).t(), "strided or expanded"),
        (torch.empty(1_000_000, 768, device="meta"), "no data"),
        (torch.randn(2, WIDTH).to_sparse(), "dense"),
        (torch.randn(2, WIDTH, dtype=torch.complex64), "floating point"),
    ],
)
def test_pickled_tensors_that_claim_more_than_they_hold(tensor: torch.Tensor, match: str) -> None:
    data = _pt({"<x>": tensor})
    with _cheap(), pytest.raises(ConceptFileError, match=match) as error:
        parse_concept(data, "tiny.pt")
    assert "tiny.pt" in str(error.value)


def test_quantized_tensor_is_refused() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized tensors
        quantized = torch.quantize_per_tensor(torch.randn(2, WIDTH), 0.1, 0, torch.qint8)
        data = _pt({"<x>": quantized})
        with pytest.raises(ConceptFileError, match="quantized"):
            parse_concept(data, "q.pt")


@pytest.mark.parametrize(
    ("vectors", "match"),
    [
        (torch.randn(17, WIDTH), "17 vectors; the limit is 16"),
        (torch.randn(2, MAX_WIDTH + 1), "width 4097"),
        (torch.randn(1, 0), "width 0"),
    ],
)
def test_rows_and_width_are_bounded(vectors: torch.Tensor, match: str) -> None:
    for data in (_pt({"<x>": vectors}), save_safetensors({"<x>": vectors})):
        with pytest.raises(ConceptFileError, match=match):
            parse_concept(data, "c.bin")


def test_the_callers_row_limit_applies() -> None:
    data = save_safetensors({"<x>": torch.randn(3, WIDTH)})
    with pytest.raises(ConceptFileError, match="3 vectors; the limit is 2"):
        parse_concept(data, "c.safetensors", max_vectors=2)
    assert parse_concept(data, "c.safetensors", max_vectors=3).num_vectors == 3


def test_file_size_is_bounded_before_reading(tmp_path: Path) -> None:
    path = save_concept(make_concept(), tmp_path / "c.safetensors")
    with pytest.raises(ConceptFileError, match="over the limit of 100 bytes"):
        load_concept(path, max_bytes=100)
    with pytest.raises(ConceptFileError, match="over the limit"):
        parse_concept(path.read_bytes(), "c.safetensors", max_bytes=100)


def test_compressed_and_legacy_pickles_are_refused() -> None:
    plain = zipfile.ZipFile(io.BytesIO(_pt({"<x>": torch.randn(1, WIDTH)})))
    deflated = io.BytesIO()
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as out:
        for member in plain.infolist():
            out.writestr(member.filename, plain.read(member))
    with pytest.raises(ConceptFileError, match="compressed"):
        parse_concept(deflated.getvalue(), "bomb.pt")
    legacy = io.BytesIO()
    torch.save({"<x>": torch.randn(1, WIDTH)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ConceptFileError, match="before 1.6"):
        parse_concept(legacy.getvalue(), "old.pt")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_safetensors(b"{}", length=2**62), "claims 4611686018427387904 bytes"),
        (_safetensors(b'{"a": 1}' + b" " * 16, length=100), "claims 100 bytes"),
        (
            _safetensors(b"{" + b" " * (MAX_HEADER_BYTES + 1) + b"}"),
            f"the limit is {MAX_HEADER_BYTES}",
        ),
        (_safetensors(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "not valid JSON"),
        (_safetensors(b'{"<x>": {}, "<x>": {}}'), "repeats key '<x>'"),
        (_safetensors(b'{"__metadata__": {"a": 1}}'), "metadata 'a' must be a string"),
        (
            _safetensors(
                {"<x>": {"dtype": "F32", "shape": [1, WIDTH], "data_offsets": [0, 10**9]}}
            ),
            "outside the file",
        ),
        (
            _safetensors(
                {"<x>": {"dtype": "F32", "shape": [10**6, 768], "data_offsets": [0, 4 * WIDTH]}},
                _ONE_ROW,
            ),
            "does not fill its 128 bytes",
        ),
        (
            _safetensors({"<x>": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 0]}}),
            "unknown dtype 'Q9'",
        ),
        (
            _safetensors({"<x>": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}),
            "shape must be a list",
        ),
        (
            _safetensors(
                {"<x>": {"dtype": "I32", "shape": [1, WIDTH], "data_offsets": [0, 4 * WIDTH]}},
                _ONE_ROW,
            ),
            "floating point, got I32",
        ),
    ],
)
def test_hostile_safetensors_headers(data: bytes, match: str) -> None:
    with _cheap(), pytest.raises(ConceptFileError, match=match) as error:
        parse_concept(data, "upload.safetensors")
    assert "upload.safetensors" in str(error.value) and len(str(error.value)) < 400


@pytest.mark.parametrize("value", ["abc", "²", "1" * 40, "-3", "1.5"])
def test_metadata_that_is_not_a_number_is_named(value: str) -> None:
    data = save_safetensors({"<x>": torch.randn(1, WIDTH)}, metadata={"textinv.steps": value})
    with pytest.raises(ConceptFileError, match=r"metadata textinv\.steps must be a whole number"):
        parse_concept(data, "m.safetensors")


def test_metadata_text_is_bounded() -> None:
    metadata = {"textinv.base_model_hash": "f" * 10_000}
    data = save_safetensors({"<x>": torch.randn(1, WIDTH)}, metadata=metadata)
    with pytest.raises(ConceptFileError, match="base_model_hash") as error:
        parse_concept(data, "m.safetensors")
    assert len(str(error.value)) < 300


@pytest.mark.parametrize(
    ("clip_l", "clip_g", "match"),
    [
        (torch.randn(2, 768), torch.zeros(0), r"clip_g.*width 0"),
        (torch.randn(2, 768), torch.zeros(0, 1280), r"clip_g.*zero vectors"),
        (torch.zeros(0, 768), torch.randn(2, 1280), "zero vectors"),
        (torch.randn(2, 768), torch.randn(3, 1280), r"clip_g.*3 vectors, but clip_l has 2"),
    ],
)
def test_sdxl_pairs_must_agree(clip_l: torch.Tensor, clip_g: torch.Tensor, match: str) -> None:
    for data in (
        save_safetensors({"clip_l": clip_l, "clip_g": clip_g}),
        _pt({"clip_l": clip_l, "clip_g": clip_g}),
    ):
        with pytest.raises(ConceptFileError, match=match):
            parse_concept(data, "xl.safetensors", expected_width=768)


def test_a_very_long_token_is_quoted_short() -> None:
    data = save_safetensors({"<x>": torch.randn(1, WIDTH)})
    for token in ("x" * 1_000_000, "\ufb03" * 60):  # the ligature ffi: NFKC triples it
        with _cheap(), pytest.raises(ConceptFileError, match="1 to 64 characters") as error:
            parse_concept(data, "c.safetensors", token=token)
        assert len(str(error.value)) < 300
    with pytest.raises(ConceptFileError, match="1 to 64 characters") as error:
        parse_concept(save_safetensors({"y" * 100_000: torch.randn(1, WIDTH)}), "c.safetensors")
    assert len(str(error.value)) < 300


@pytest.mark.parametrize("token", ["<a\x00b>", "<a\u202eb>", "<a\u00a0b>", "<a\u2028b>"])
def test_control_and_space_characters_are_refused(token: str) -> None:
    with pytest.raises(InvalidInputError, match="whitespace or control"):
        check_token(token)


def test_huge_num_vectors_is_refused_before_building_names() -> None:
    with _cheap(), pytest.raises(InvalidInputError, match="num_vectors must be 1..16"):
        check_token("<ok>", {"a": 1}, num_vectors=10**12)


def test_tokens_are_nfkc_normalized(tmp_path: Path) -> None:
    assert check_token("＜ｃａｔ＞") == "<cat>"
    data = save_safetensors({"＜ｃａｔ＞": torch.randn(1, WIDTH)})
    assert parse_concept(data, "c.safetensors").token == "<cat>"
    assert parse_concept(data, "c.safetensors", token="<ｄｏｇ>").token == "<dog>"
    assert make_concept().renamed("＜ｘ＞").token == "<x>"


@pytest.mark.parametrize(
    "data",
    [
        save_safetensors({"emb_params": torch.randn(2, WIDTH)}),
        save_safetensors({"string_to_param.*": torch.randn(2, WIDTH)}),
        _pt({"string_to_param": {"*": torch.randn(2, WIDTH)}}),
        _pt(torch.randn(2, WIDTH)),
        _pt({"clip_l": torch.randn(2, WIDTH), "clip_g": torch.randn(2, 64)}),
    ],
)
def test_files_without_a_token_are_named_after_their_stem(data: bytes) -> None:
    assert parse_concept(data, "dir/Easy-Negative.pt").token == "Easy-Negative"


def test_a_stem_that_is_no_token_says_so() -> None:
    data = save_safetensors({"emb_params": torch.randn(2, WIDTH)})
    with pytest.raises(ConceptFileError, match="carries no token"):
        parse_concept(data, "uploaded file")
    assert parse_concept(data, "uploaded file", token="<ok>").token == "<ok>"


def test_a_vocabulary_word_in_another_case_is_refused() -> None:
    # Prompts match tokens case-insensitively; CLIP's vocabulary is lower-case.
    vocabulary = {"photo</w>", "cat</w>"}
    for token in ("Photo", "PHOTO", "photo"):
        with pytest.raises(InvalidInputError, match="vocabulary"):
            check_token(token, vocabulary)
    assert check_token("<photo-of-me>", vocabulary) == "<photo-of-me>"


def test_an_unknown_concept_is_named_by_a_short_prefix() -> None:
    message = str(UnknownConceptError(["<" + "a" * 5000 + ">"] * 7))
    assert len(message) < 600 and "(5002 characters)" in message and "2 more" in message
