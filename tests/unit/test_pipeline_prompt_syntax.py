"""The a1111 prompt syntax and the output formats through the generation pipeline (torch
backend), against diffusers given ``prompt_embeds`` built chunk by chunk."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.unit.generation_reference import max_pixel_difference, pixels, reference_images
from textinv.errors import InvalidInputError
from textinv.prompt_syntax import parse_emphasis
from textinv.prompts import MAX_LENGTH, apply_emphasis
from textinv_client.choices import ImageFormat, PromptSyntax
from textinv_server.requests import GenerationRequest

SIZE = 32
LONG = "a photo of " + "red " * 90 + "cat on the beach"  # 103 tokens: two chunks


def request(**overrides) -> GenerationRequest:
    values = {
        "prompt": LONG,
        "negative_prompt": "blurry",
        "steps": 3,
        "seed": 99,
        "width": SIZE,
        "height": SIZE,
        "prompt_syntax": PromptSyntax.A1111,
    }
    return GenerationRequest(**{**values, **overrides})


def chunked_embeds(diffusers_reference, text: str, chunks: int) -> torch.Tensor:
    """Automatic1111's encoding by hand with diffusers' own text encoder: 75-token pieces of the
    emphasis-free text, each wrapped in start/end and padded to 77, encoded alone, concatenated,
    padded with encoded empty chunks to ``chunks``; then the emphasis weights."""
    tokenizer, encoder = diffusers_reference.tokenizer, diffusers_reference.text_encoder
    pieces: list[list[tuple[int, float]]] = []  # per chunk: (id, weight)
    for group in parse_emphasis(text):  # a BREAK starts a group, and so a chunk
        tokens = [
            (token_id, weight)
            for piece, weight in group
            for token_id in tokenizer(piece, add_special_tokens=False).input_ids
        ]
        pieces += [tokens[i : i + 75] for i in range(0, max(len(tokens), 1), 75)]
    pieces += [[]] * (chunks - len(pieces))
    rows, row_weights = [], []
    for piece in pieces:
        padding = MAX_LENGTH - 2 - len(piece)
        ids = [token_id for token_id, _ in piece]
        rows.append(
            [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
            + [tokenizer.pad_token_id] * padding
        )
        row_weights += [1.0, *(weight for _, weight in piece)] + [1.0] * (padding + 1)
    with torch.no_grad():
        hidden = encoder(torch.tensor(rows)).last_hidden_state  # [C, 77, D]
    hidden = hidden.reshape(1, chunks * MAX_LENGTH, -1)
    return apply_emphasis(hidden, torch.tensor([row_weights]))


def diffusers_images(diffusers_reference, req: GenerationRequest, chunks: int) -> np.ndarray:
    return reference_images(
        diffusers_reference, req, lambda text: chunked_embeds(diffusers_reference, text, chunks)
    )


@pytest.mark.parametrize(
    "prompt",
    [LONG, "a (photo:1.4) of a [red] cat BREAK on ((the beach))"],
    ids=["two-chunks", "weights-and-break"],
)
def test_matches_diffusers_given_chunked_prompt_embeds(
    torch_pipeline, diffusers_reference, prompt: str
) -> None:
    req = request(prompt=prompt)
    result = torch_pipeline(req)
    ours = pixels(result)
    assert ours.std() > 5
    assert max_pixel_difference(ours, diffusers_images(diffusers_reference, req, chunks=2)) <= 2
    assert not result.warnings


def test_the_embeddings_depend_on_the_second_chunk_and_on_the_weights(diffusers_reference) -> None:
    # The control: what the parity above compares moves when the tested input does.
    base = chunked_embeds(diffusers_reference, LONG, 2)
    other_tail = chunked_embeds(
        diffusers_reference, LONG.replace("cat on the beach", "dog in a forest"), 2
    )
    weighted = chunked_embeds(diffusers_reference, LONG.replace("cat", "(cat:1.8)"), 2)
    assert torch.equal(base[:, :MAX_LENGTH], other_tail[:, :MAX_LENGTH])
    assert (base[:, MAX_LENGTH:] - other_tail[:, MAX_LENGTH:]).abs().max() > 0.1
    assert (base - weighted).abs().max() > 0.1


def test_plain_syntax_truncates_as_before(torch_pipeline) -> None:
    result = torch_pipeline(request(prompt_syntax=PromptSyntax.PLAIN))
    assert any("77-token budget" in warning for warning in result.warnings)


def test_requests_batch_by_chunk_count_not_by_syntax(torch_pipeline) -> None:
    short = torch_pipeline.prepare(request(prompt="a (red:1.2) cat"))
    plain = torch_pipeline.prepare(request(prompt="a red cat", prompt_syntax=PromptSyntax.PLAIN))
    long = torch_pipeline.prepare(request())
    assert short.batch_key() == plain.batch_key() != long.batch_key()
    with pytest.raises(InvalidInputError, match="chunk count"):
        torch_pipeline.run_batch([short, long])
    batched = torch_pipeline.run_batch([short, plain])
    alone = [torch_pipeline.run_batch([prepared])[0] for prepared in (short, plain)]
    for together, single in zip(batched, alone, strict=True):
        assert max_pixel_difference(pixels(together), pixels(single)) <= 1  # batch-size float noise


@pytest.mark.parametrize("image_format", [ImageFormat.JPEG, ImageFormat.WEBP])
def test_output_formats_decode_to_the_png_image(torch_pipeline, image_format) -> None:
    png = pixels(torch_pipeline(request(prompt="a red cat")))[0]
    other_seed = pixels(torch_pipeline(request(prompt="a red cat", seed=100)))[0]
    lossy = torch_pipeline(request(prompt="a red cat", output_format=image_format, quality=95))
    assert lossy.request.output_format is image_format
    with Image.open(io.BytesIO(lossy.images[0])) as image:
        assert image.format == image_format.name
        decoded = np.asarray(image.convert("RGB")).astype(int)
    assert decoded.shape == png.shape
    # 32 × 32 of near-noise is the hardest case for a lossy codec: the decoded image must still be
    # far closer to its own PNG than the PNG of another seed is.
    error = np.abs(decoded - png.astype(int)).mean()
    assert error < 0.5 * np.abs(other_seed.astype(int) - png.astype(int)).mean()
    low = torch_pipeline(request(prompt="a red cat", output_format=image_format, quality=5))
    assert len(low.images[0]) < len(lossy.images[0])  # the quality reaches the encoder


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"quality": 80}, "quality applies to jpeg and webp"),
        (
            {"output_format": ImageFormat.JPEG, "quality": 101},
            "quality must be an integer in 1..100",
        ),
        ({"prompt_syntax": "markdown"}, "unknown prompt syntax 'markdown'"),
        ({"prompt": "(cat:500)"}, "the weight of 'cat' is 500"),
    ],
)
def test_bad_options_name_the_field(torch_pipeline, overrides, message: str) -> None:
    with pytest.raises((InvalidInputError, ValueError), match=message):
        torch_pipeline(request(**overrides))


def test_onnxruntime_weights_match_torch(onnxruntime_pipeline, torch_pipeline) -> None:
    weighted = request(prompt="a (photo:1.4) of a [red] cat on ((the beach))")
    assert (
        max_pixel_difference(
            pixels(onnxruntime_pipeline(weighted)), pixels(torch_pipeline(weighted))
        )
        <= 2
    )


THREE_CHUNKS = "a photo of " + "red " * 160 + "cat on the beach"  # 173 tokens


@pytest.mark.parametrize(("prompt", "chunks"), [(LONG, 2), (THREE_CHUNKS, 3)])
def test_onnxruntime_takes_long_prompts_as_diffusers_does(
    onnxruntime_pipeline, diffusers_reference, prompt: str, chunks: int
) -> None:
    # The exported UNet's token axis is dynamic (77 to 231 by default): no chunk is dropped.
    req = request(prompt=prompt)
    result = onnxruntime_pipeline(req)
    assert not result.warnings
    ours = pixels(result)
    assert max_pixel_difference(ours, diffusers_images(diffusers_reference, req, chunks)) <= 2
    # The control: the last chunk reaches the pixels, by more than the tolerance.
    tail = onnxruntime_pipeline(
        request(prompt=prompt.replace("cat on the beach", "dog in a dark forest"))
    )
    assert max_pixel_difference(ours, pixels(tail)) > 2


def test_onnxruntime_truncates_past_the_exported_chunks(onnxruntime_pipeline) -> None:
    assert onnxruntime_pipeline.backend.limits.max_prompt_chunks == 3
    result = onnxruntime_pipeline(request(prompt="a photo of " + "red " * 230 + "cat"))
    assert any("225-token budget (3 chunks of 75)" in warning for warning in result.warnings)


def test_an_export_made_before_long_prompts_takes_one_chunk(tiny_engines_dir: Path) -> None:
    from textinv_export.manifest import read_manifest
    from textinv_export.specs import Component, ComponentSpec
    from textinv_server.backends.exported import exported_prompt_chunks

    unet = read_manifest(tiny_engines_dir).component(Component.UNET).spec.to_dict()
    for tensor in unet["inputs"]:  # the token axis as every earlier export fixed it
        if tensor["name"] == "encoder_hidden_states":
            tensor["shape"][1] = MAX_LENGTH
    del unet["axes"]["tokens"]
    assert exported_prompt_chunks(ComponentSpec.from_dict(unet)) == 1
