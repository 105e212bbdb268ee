"""SDXL's text conditioning from embeddings against ``StableDiffusionXLPipeline.encode_prompt``,
with two SDXL concepts loaded into diffusers through ``load_textual_inversion`` once per text
encoder; SDXL concept files in kohya's and Automatic1111's layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from tests.unit.sdxl_reference import registered, sdxl_concepts, sdxl_reference_pipeline
from textinv.concepts import Concept, ConceptFormat, concept_to_bytes, parse_concept
from textinv.sdxl_text import SdxlConcepts, SdxlPromptEncoder, SdxlTextEncoders, encode_sdxl_prompts
from textinv.testing_sdxl import TINY_SDXL_WIDTHS

PROMPTS = ["a photo of <cat-toy> on the beach", "a <cat-toy> in <dog-style> style", "a red cat"]


@pytest.fixture(scope="module")
def ours(tiny_sdxl_model_dir: Path) -> tuple[SdxlTextEncoders, SdxlPromptEncoder]:
    first = CLIPTextModel.from_pretrained(tiny_sdxl_model_dir / "text_encoder").eval()
    second = CLIPTextModelWithProjection.from_pretrained(
        tiny_sdxl_model_dir / "text_encoder_2"
    ).eval()
    prompts = SdxlPromptEncoder(
        CLIPTokenizer.from_pretrained(tiny_sdxl_model_dir / "tokenizer"),
        first.get_input_embeddings().weight.detach(),
        CLIPTokenizer.from_pretrained(tiny_sdxl_model_dir / "tokenizer_2"),
        second.get_input_embeddings().weight.detach(),
    )
    return SdxlTextEncoders(first, second).eval(), prompts


@pytest.fixture(scope="module")
def reference(tiny_sdxl_model_dir: Path):
    return sdxl_reference_pipeline(tiny_sdxl_model_dir, sdxl_concepts(7))


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_and_pooled_embeddings_match_diffusers(ours, reference, prompt: str) -> None:
    encoders, prompts = ours
    theirs = reference.encode_prompt(
        prompt,
        device="cpu",
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt="blurry",
    )
    with torch.no_grad():
        hidden, pooled = encode_sdxl_prompts(
            encoders, prompts, ["blurry", prompt], registered(sdxl_concepts(7))
        )
    assert hidden.shape == (2, 77, sum(TINY_SDXL_WIDTHS)) and pooled.shape == (
        2,
        TINY_SDXL_WIDTHS[1],
    )
    torch.testing.assert_close(hidden[1], theirs[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(hidden[0], theirs[1][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled[1], theirs[2][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled[0], theirs[3][0], atol=1e-5, rtol=0)


def test_the_comparison_sees_both_sets_of_vectors(ours) -> None:
    """The control: changing either encoder's vectors of a concept changes what it sees."""
    encoders, prompts = ours
    texts = [PROMPTS[0]]
    with torch.no_grad():
        base_hidden, base_pooled = encode_sdxl_prompts(
            encoders, prompts, texts, registered(sdxl_concepts(7))
        )
        other = registered(sdxl_concepts(8))
        only_l = SdxlConcepts(other.first, registered(sdxl_concepts(7)).second)
        hidden_l, _ = encode_sdxl_prompts(encoders, prompts, texts, only_l)
        only_g = SdxlConcepts(registered(sdxl_concepts(7)).first, other.second)
        hidden_g, pooled_g = encode_sdxl_prompts(encoders, prompts, texts, only_g)
    width_l = TINY_SDXL_WIDTHS[0]
    assert (hidden_l - base_hidden)[..., :width_l].abs().max() > 0.1
    assert torch.equal(hidden_l[..., width_l:], base_hidden[..., width_l:])
    assert (hidden_g - base_hidden)[..., width_l:].abs().max() > 0.1
    assert (pooled_g - base_pooled).abs().max() > 0.01


def test_an_empty_negative_prompt_is_zeros_as_the_model_says(ours, reference) -> None:
    encoders, prompts = ours
    assert reference.config.force_zeros_for_empty_prompt
    theirs = reference.encode_prompt(
        "a red cat",
        device="cpu",
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt=None,
    )
    with torch.no_grad():
        hidden, pooled = encode_sdxl_prompts(
            encoders, prompts, ["", "a red cat"], registered([]), zero_empty=True
        )
        unzeroed, _ = encode_sdxl_prompts(encoders, prompts, ["", "a red cat"], registered([]))
    assert torch.equal(hidden[0], theirs[1][0]) and torch.equal(pooled[0], theirs[3][0])
    assert not hidden[0].any() and unzeroed[0].abs().max() > 0.1
    torch.testing.assert_close(hidden[1], theirs[0][0], atol=1e-5, rtol=0)


def test_an_sdxl_concept_file_checks_both_widths() -> None:
    (concept, _) = sdxl_concepts(7)
    data = concept_to_bytes(concept, ConceptFormat.SDXL)
    width_l, width_g = TINY_SDXL_WIDTHS
    parse_concept(data, "c.safetensors", expected_width=width_l, expected_width_2=width_g)
    from textinv.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="clip_g"):
        parse_concept(data, "c.safetensors", expected_width=width_l, expected_width_2=1280)
    with pytest.raises(InvalidInputError, match="not an SDXL concept"):
        concept_to_bytes(Concept("<sd1>", concept.vectors), ConceptFormat.SDXL)
