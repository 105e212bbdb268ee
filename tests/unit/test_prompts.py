"""Host-side prompt handling against diffusers' load_textual_inversion (the parity that matters)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from tests.unit.generation_reference import diffusers_text_states
from textinv.concept_table import ConceptTable, as_table
from textinv.concepts import Concept, save_concept
from textinv.errors import UnknownConceptError
from textinv.prompts import MAX_LENGTH, PromptEncoder
from textinv.text_encoder import EmbeddingsTextEncoder

PARITY_PROMPTS = [
    "a photo of <cat-toy>",
    "a <cat-toy> on the beach",
    "<cat-toy>",
    "a red <cat-toy> next to a <dog-style> painting",
    "<dog-style><cat-toy> toy",
    "a photo of a cat",
]


@pytest.fixture(scope="module")
def concepts(tiny_model) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    width = tiny_model.text_width
    return {
        "<cat-toy>": torch.randn(2, width, generator=generator),  # a 2-vector concept
        "<dog-style>": torch.randn(1, width, generator=generator),
    }


@pytest.fixture(scope="module")
def reference_pipeline(tiny_model_dir: Path, concepts, tmp_path_factory):
    """diffusers' own pipeline with both concepts loaded through load_textual_inversion."""
    folder = tmp_path_factory.mktemp("concepts")
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    for i, (token, vectors) in enumerate(concepts.items()):
        path = save_concept(Concept(token, vectors), folder / f"c{i}.safetensors")
        pipeline.load_textual_inversion(path)
    return pipeline


@pytest.mark.parametrize("prompt", PARITY_PROMPTS)
def test_last_hidden_state_matches_load_textual_inversion(
    prompt: str, tiny_model, concepts, reference_pipeline
) -> None:
    encoder = PromptEncoder(tiny_model.tokenizer, tiny_model.token_embedding)
    embeddings = encoder.embed([prompt], concepts)
    ours, pooled = EmbeddingsTextEncoder(tiny_model.text_encoder)(
        embeddings.inputs_embeds, embeddings.eos_positions
    )

    reference = diffusers_text_states(reference_pipeline, prompt)

    torch.testing.assert_close(ours, reference.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, reference.pooler_output, atol=1e-5, rtol=0)


def test_batch_of_prompts_matches_one_by_one(tiny_model, concepts) -> None:
    encoder = PromptEncoder(tiny_model.tokenizer, tiny_model.token_embedding)
    batch = encoder.embed(PARITY_PROMPTS, concepts)
    assert batch.inputs_embeds.shape == (len(PARITY_PROMPTS), MAX_LENGTH, tiny_model.text_width)
    for i, prompt in enumerate(PARITY_PROMPTS):
        single = encoder.embed([prompt], concepts)
        assert torch.equal(batch.inputs_embeds[i], single.inputs_embeds[0])


def test_concept_rows_are_spliced_at_their_slots(tiny_model, concepts) -> None:
    encoder = PromptEncoder(tiny_model.tokenizer, tiny_model.token_embedding)
    tokenized = encoder.tokenize("a <cat-toy> dog", {"<cat-toy>": 2})
    assert [(s.position, s.index) for s in tokenized.slots] == [(2, 0), (3, 1)]
    embeds = encoder.embed(["a <cat-toy> dog"], concepts).inputs_embeds[0]
    assert torch.equal(embeds[2], concepts["<cat-toy>"][0])
    assert torch.equal(embeds[3], concepts["<cat-toy>"][1])


def test_unknown_placeholder_is_named(tiny_model, concepts) -> None:
    encoder = PromptEncoder(tiny_model.tokenizer, tiny_model.token_embedding)
    with pytest.raises(UnknownConceptError, match="<cat-tyo>"):
        encoder.embed(["a photo of <cat-tyo> and <cat-toy>"], concepts)


def test_long_prompt_is_truncated_like_diffusers_with_a_warning(tiny_model, concepts) -> None:
    encoder = PromptEncoder(tiny_model.tokenizer, tiny_model.token_embedding)
    prompt = "a photo of " + "red " * 80 + "<cat-toy>"
    result = encoder.tokenize(prompt, {"<cat-toy>": 2})
    assert len(result.input_ids) == MAX_LENGTH
    assert result.eos_positions == (MAX_LENGTH - 1,)
    assert result.slots == ()  # the concept fell past the budget
    assert "<cat-toy>" in result.warnings[0] and "dropped" in result.warnings[0]
    reference = tiny_model.tokenizer(
        "a photo of " + "red " * 80, max_length=MAX_LENGTH, truncation=True, padding="max_length"
    ).input_ids
    assert list(result.input_ids) == reference


def test_short_prompt_has_no_warning_and_pads(tiny_model) -> None:
    encoder = PromptEncoder(tiny_model.tokenizer, tiny_model.token_embedding)
    result = encoder.tokenize("a cat", {})
    assert result.warnings == ()
    reference = tiny_model.tokenizer("a cat", max_length=MAX_LENGTH, padding="max_length").input_ids
    assert list(result.input_ids) == reference


# -- whole words, case and Unicode ----------------------------------------------------------------


def slot_tokens(encoder: PromptEncoder, prompt: str, sizes: dict[str, int]) -> list[str]:
    return [slot.token for slot in encoder.tokenize(prompt, sizes).slots]


def test_a_token_never_matches_inside_another_word(tiny_model) -> None:
    encoder = PromptEncoder(tiny_model.tokenizer, tiny_model.token_embedding)
    hostile = {"tography": torch.zeros(1, tiny_model.text_width)}
    prompt = "a photography of a cat"
    assert slot_tokens(encoder, prompt, {"tography": 1}) == []
    changed = encoder.embed([prompt], hostile).inputs_embeds
    assert torch.equal(changed, encoder.embed([prompt], {}).inputs_embeds)
    assert slot_tokens(encoder, "a tography of a cat", {"tography": 1}) == ["tography"]


@pytest.mark.parametrize(
    ("prompt", "matches"),
    [
        ("<cat-toy>", 1),
        ("a <cat-toy>, on a table", 1),
        ("(<cat-toy>)", 1),
        ("[<cat-toy>]", 1),
        ("{<cat-toy>}!", 1),
        ("a <cat-toy>-like toy", 1),
        ("a <cat-toy>.", 1),
        ("a <CAT-Toy> dog", 1),  # case-insensitive
        ("a ＜ｃａｔ－ｔｏｙ＞ dog", 1),  # full-width forms: NFKC spells the token
        ("a<cat-toy>", 0),  # a letter touches its start
        ("<cat-toy>s", 0),  # ... or its end
        ("<cat-toy>_1", 0),
        ("2<cat-toy>", 0),
    ],
)
def test_whole_word_boundaries_of_a_bracketed_token(tiny_model, prompt: str, matches: int) -> None:
    encoder = PromptEncoder(tiny_model.tokenizer, tiny_model.token_embedding)
    sizes = {"<cat-toy>": 1}
    if matches:
        assert slot_tokens(encoder, prompt, sizes) == ["<cat-toy>"]
    else:  # the text then holds an unregistered placeholder: an error, never a silent splice
        with pytest.raises(UnknownConceptError):
            encoder.tokenize(prompt, sizes)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("easynegative, a cat", ["EasyNegative"]),  # A1111 bare words, any case
        ("EASYNEGATIVE", ["EasyNegative"]),
        ("(easynegative:1.2)", ["EasyNegative"]),
        ("easynegatives", []),
        ("noteasynegative", []),
        ("bad-hands-5 and bad-hands", ["bad-hands"]),  # a hyphen inside a word joins it
        ("<cat-toy> toy>", ["toy>"]),  # whole words, not the tail of <cat-toy>
        ("cat-toy>", []),
    ],
)
def test_whole_word_boundaries_of_bare_words(tiny_model, prompt: str, expected: list[str]) -> None:
    encoder = PromptEncoder(tiny_model.tokenizer, tiny_model.token_embedding)
    sizes = {"EasyNegative": 1, "bad-hands": 1, "toy>": 1, "<cat-toy>": 1}
    found = [t for t in slot_tokens(encoder, prompt, sizes) if t != "<cat-toy>"]
    assert found == expected


def test_longest_token_wins_at_one_place(tiny_model) -> None:
    encoder = PromptEncoder(tiny_model.tokenizer, tiny_model.token_embedding)
    sizes = {"<x>": 1, "<x-large>": 1, "<x>-large": 1}
    assert slot_tokens(encoder, "<x-large> <x> <x>-large", sizes) == [
        "<x-large>",
        "<x>",
        "<x>-large",
    ]


def test_a_match_in_another_case_splices_the_same_rows(tiny_model, concepts) -> None:
    encoder = PromptEncoder(tiny_model.tokenizer, tiny_model.token_embedding)
    lower = encoder.embed(["a <cat-toy> on the beach"], concepts).inputs_embeds
    upper = encoder.embed(["a <CAT-TOY> on the beach"], concepts).inputs_embeds
    assert torch.equal(lower, upper)


def test_a_concept_table_is_used_without_being_rebuilt(tiny_model, concepts) -> None:
    encoder = PromptEncoder(tiny_model.tokenizer, tiny_model.token_embedding)
    table = ConceptTable(concepts)
    for i in range(2000):  # many concepts; the prompt names one of them
        table = table.with_concept(f"<other-{i}>", torch.zeros(1, tiny_model.text_width))
    ours = encoder.embed(["a <cat-toy> dog", "<other-7>"], table)
    plain = encoder.embed(["a <cat-toy> dog", "<other-7>"], dict(table))
    assert torch.equal(ours.inputs_embeds, plain.inputs_embeds)
    assert as_table(table) is table
    assert set(table.without("<other-7>")) == set(table) - {"<other-7>"}
