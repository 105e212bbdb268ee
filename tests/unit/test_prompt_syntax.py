"""Automatic1111's prompt syntax: the parser, the emphasis arithmetic, and the chunked layout."""

from __future__ import annotations

import pytest
import torch

from textinv.errors import InvalidInputError, UnknownConceptError
from textinv.prompt_syntax import embedding_names, parse_emphasis, resolve_embedding_names
from textinv.prompts import CHUNK_TOKENS, MAX_LENGTH, PromptEncoder, apply_emphasis
from textinv_client.choices import PromptSyntax

A1111 = PromptSyntax.A1111


# Each case's weights worked out by hand from Automatic1111's rules (×1.1 per round bracket,
# ÷1.1 per square one, an explicit weight instead of 1.1, open brackets run to the end).
@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a (cat) dog", [[("a ", 1.0), ("cat", 1.1), (" dog", 1.0)]]),
        ("((cat))", [[("cat", 1.1 * 1.1)]]),
        ("[cat]", [[("cat", 1 / 1.1)]]),
        ("(cat:1.3) dog", [[("cat", 1.3), (" dog", 1.0)]]),
        ("(a [b] c:1.5)", [[("a ", 1.5), ("b", 1.5 / 1.1), (" c", 1.5)]]),
        (r"\(literal\) \[x\]", [[("(literal) [x]", 1.0)]]),
        ("(unclosed cat", [[("unclosed cat", 1.1)]]),
        ("x ) y ]", [[("x ) y ]", 1.0)]]),
        ("a BREAK b", [[("a", 1.0)], [("b", 1.0)]]),
        ("(a BREAK b)", [[("a", 1.1)], [("b", 1.1)]]),
        ("plain text", [[("plain text", 1.0)]]),
    ],
)
def test_parse_emphasis_matches_automatic1111(prompt: str, expected: list) -> None:
    got = parse_emphasis(prompt)
    assert [[text for text, _ in group] for group in got] == [
        [text for text, _ in group] for group in expected
    ]
    for got_group, want_group in zip(got, expected, strict=True):
        for (_, weight), (_, want) in zip(got_group, want_group, strict=True):
            assert weight == pytest.approx(want)


@pytest.mark.parametrize("prompt", ["(cat:1000000000)", "(cat:999)", "(" * 60 + "cat"])
def test_huge_weights_are_refused_naming_the_prompt(prompt: str) -> None:
    with pytest.raises(InvalidInputError, match="prompt: the weight of 'cat'"):
        parse_emphasis(prompt)


def test_apply_emphasis_against_a_hand_computed_case() -> None:
    # One chunk, width 2: every token's state is [1, 1] but token 1's, which is [2, 4] and
    # weighs 2. Mean before: (76·2 + 6) / 154 = 158/154. Weighted, token 1 is [4, 8], so the
    # mean is (152 + 12) / 154 = 164/154, and everything is then scaled by 158/164.
    hidden = torch.ones(1, MAX_LENGTH, 2, dtype=torch.float64)
    hidden[0, 1] = torch.tensor([2.0, 4.0])
    weights = torch.ones(1, MAX_LENGTH, dtype=torch.float64)
    weights[0, 1] = 2.0
    out = apply_emphasis(hidden, weights)
    ratio = 158 / 164
    assert out[0, 1].tolist() == pytest.approx([4 * ratio, 8 * ratio])
    assert out[0, 0].tolist() == pytest.approx([ratio, ratio])
    assert out.mean().item() == pytest.approx(hidden.mean().item())
    assert apply_emphasis(hidden, None) is hidden


def test_embedding_names_resolve_to_registered_tokens() -> None:
    tokens = {"<cat-toy>": "<cat-toy>", "easynegative": "EasyNegative"}
    find = tokens.get
    assert resolve_embedding_names("a embedding:cat-toy, x", lambda t: find(t.lower())) == (
        "a  <cat-toy> , x"
    )
    resolved = resolve_embedding_names(
        "embedding:EasyNegative.safetensors", lambda t: find(t.lower())
    )
    assert resolved.strip() == "EasyNegative"
    with pytest.raises(UnknownConceptError, match="embedding:missing"):
        resolve_embedding_names("embedding:missing", lambda t: find(t.lower()))
    assert embedding_names("(embedding:a:1.2) embedding:b.pt") == ["a", "b.pt"]


@pytest.fixture(scope="module")
def encoder(tiny_model) -> PromptEncoder:
    return PromptEncoder(tiny_model.tokenizer, tiny_model.token_embedding)


@pytest.fixture(scope="module")
def concepts(tiny_model) -> dict[str, torch.Tensor]:
    return {
        "<cat-toy>": torch.randn(
            3, tiny_model.text_width, generator=torch.Generator().manual_seed(3)
        )
    }


def test_a_prompt_without_syntax_embeds_as_plain(encoder, concepts) -> None:
    prompts = ["a photo of <cat-toy> on the beach", "a red cat"]
    plain = encoder.embed(prompts, concepts)
    a1111 = encoder.embed(prompts, concepts, A1111)
    assert torch.equal(plain.inputs_embeds, a1111.inputs_embeds)
    assert torch.equal(plain.eos_positions, a1111.eos_positions)
    assert a1111.weights is None


def test_weights_land_on_the_tokens_and_on_concept_vectors(encoder, concepts) -> None:
    embeddings = encoder.embed(["a (red:1.5) (<cat-toy>:1.2)"], concepts, A1111)
    assert embeddings.weights is not None
    ids = encoder.tokenizer("a red", add_special_tokens=False).input_ids
    red_position = 1 + len(ids) - 1  # after the start token and "a"
    weights = embeddings.weights[0]
    assert weights[red_position] == pytest.approx(1.5)
    concept = slice(red_position + 1, red_position + 4)
    assert weights[concept].tolist() == pytest.approx([1.2] * 3)
    assert torch.equal(embeddings.inputs_embeds[0, concept], concepts["<cat-toy>"])
    assert weights[0] == 1.0 and weights[red_position + 4 :].eq(1.0).all()


def test_long_prompts_are_chunked_and_halves_padded_to_one_count(encoder, concepts) -> None:
    words = "red " * 100  # each "red" is one token here: 100 tokens, two chunks
    embeddings = encoder.embed(["red", words], concepts, A1111)
    assert embeddings.chunks == 2
    assert embeddings.inputs_embeds.shape == (2, 2 * MAX_LENGTH, encoder.width)
    # Each chunk opens with the start token and closes with its own end token.
    eos = embeddings.eos_positions.view(2, 2).tolist()
    assert eos == [[2, 1], [CHUNK_TOKENS + 1, 100 - CHUNK_TOKENS + 1]]
    starts = embeddings.inputs_embeds[:, [0, MAX_LENGTH]]
    assert torch.equal(starts, encoder.table[encoder.bos_id].expand_as(starts))
    assert not embeddings.warnings


def test_break_starts_a_chunk_and_a_concept_never_straddles_two(encoder, concepts) -> None:
    broken = encoder.embed(["a cat BREAK a dog"], concepts, A1111)
    assert broken.chunks == 2 and broken.eos_positions.tolist() == [3, 3]
    # 74 tokens, then a 3-vector concept: it does not fit in the first chunk, so it opens the next.
    straddling = encoder.embed(["red " * 74 + "<cat-toy>"], concepts, A1111)
    assert straddling.eos_positions.tolist() == [75, 4]
    second = straddling.inputs_embeds[0, MAX_LENGTH + 1 : MAX_LENGTH + 4]
    assert torch.equal(second, concepts["<cat-toy>"])


def test_text_past_the_chunk_budget_is_dropped_with_a_warning(encoder, concepts) -> None:
    embeddings = encoder.embed(["red " * 80], concepts, A1111, max_chunks=1)
    assert embeddings.chunks == 1
    (warning,) = embeddings.warnings
    assert "5 token(s) were dropped" in warning
    three = encoder.embed(["red " * 300], concepts, A1111)
    assert three.chunks == 3
    assert "the 225-token budget (3 chunks of 75)" in three.warnings[0]


def test_a_chunk_whose_mean_is_zero_keeps_its_weighted_states() -> None:
    # Layer-normed states without bias average to ~0: the restoring ratio would be noise / noise.
    hidden = torch.tensor([1.0, -1.0]).repeat(MAX_LENGTH, 1)[None]  # [1, 77, 2], mean exactly 0
    hidden = hidden + 1e-9 * torch.randn(hidden.shape, generator=torch.Generator().manual_seed(0))
    weights = torch.ones(1, MAX_LENGTH)
    weights[0, 5] = 1.4
    out = apply_emphasis(hidden, weights)
    assert out[0, 5].tolist() == pytest.approx([1.4, -1.4])
    assert out[0, 4].tolist() == pytest.approx([1.0, -1.0])
