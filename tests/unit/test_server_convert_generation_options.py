"""The prompt syntax and the output format on the wire, client → server → client (issue 18)."""

from __future__ import annotations

import pytest

from textinv.errors import InvalidInputError
from textinv_client.convert import generate_request_to_pb
from textinv_client.convert.generation import generate_result_from_pb
from textinv_client.pb.v1 import generate_pb2
from textinv_client.types import GenerateRequest, ImageFormat, PromptSyntax
from textinv_server.config import Limits
from textinv_server.convert import generate_response_to_pb, generation_request_from_pb
from textinv_server.requests import GenerationRequest, GenerationResult, StageTimings


def server_request(**fields) -> GenerationRequest:
    message = generate_request_to_pb(GenerateRequest(prompt="a (red:1.2) cat", **fields))
    return generation_request_from_pb(message, Limits(), 64)


def test_unset_fields_keep_todays_behaviour() -> None:
    request = server_request()
    assert request.prompt_syntax is PromptSyntax.PLAIN
    assert request.output_format is ImageFormat.PNG and request.quality is None


def test_the_options_reach_the_server() -> None:
    request = server_request(
        prompt_syntax=PromptSyntax.A1111,
        output_format=ImageFormat.WEBP,
        quality=70,
        scheduler="dpmpp-2m",
        karras_sigmas=True,
        clip_skip=2,
    )
    assert request.karras_sigmas and request.scheduler == "dpmpp-2m"
    assert request.clip_skip == 2
    assert (server_request().karras_sigmas, server_request().clip_skip) == (False, 0)
    assert request.prompt_syntax is PromptSyntax.A1111
    assert request.output_format is ImageFormat.WEBP and request.quality == 70


def test_img2img_fields_reach_the_server() -> None:
    request = server_request(init_image=b"\x89PNG...", strength=0.5)
    assert (request.init_image, request.strength) == (b"\x89PNG...", 0.5)
    assert (server_request().init_image, server_request().strength) == (None, None)
    with pytest.raises(InvalidInputError, match="strength applies to img2img"):
        message = generate_pb2.GenerateRequest(prompt="x", strength=0.5)
        generation_request_from_pb(message, Limits(), 64)


def test_unknown_enum_values_and_bad_quality_name_the_field() -> None:
    with pytest.raises(InvalidInputError, match="prompt_syntax 9 is not a known value"):
        unknown = generate_pb2.GenerateRequest(prompt="x", prompt_syntax=9)  # type: ignore[arg-type]
        generation_request_from_pb(unknown, Limits(), 64)
    with pytest.raises(InvalidInputError, match="quality applies to jpeg and webp"):
        generation_request_from_pb(
            generate_pb2.GenerateRequest(prompt="x", quality=50), Limits(), 64
        )
    with pytest.raises(InvalidInputError, match="quality must be an integer in 1..100"):
        message = generate_pb2.GenerateRequest(
            prompt="x", output_format=generate_pb2.IMAGE_FORMAT_JPEG, quality=500
        )
        generation_request_from_pb(message, Limits(), 64)


@pytest.mark.parametrize("image_format", list(ImageFormat))
def test_images_travel_in_the_field_their_format_names(image_format: ImageFormat) -> None:
    request = GenerationRequest(
        prompt="x", seed=1, width=8, height=8, output_format=image_format
    ).resolved(8)
    timings = StageTimings(1.0, 1.0, (1.0,), 1.0, 4.0)
    result = GenerationResult((b"encoded",), (1,), request, timings)
    message = generate_response_to_pb(result, 0.0)
    (image,) = message.images
    # PNG stays in `png`, where a v1 client reads it; the others go in `data`.
    assert (image.png, image.data) == (
        (b"encoded", b"") if image_format is ImageFormat.PNG else (b"", b"encoded")
    )
    back = generate_result_from_pb(message)
    assert back.images == (b"encoded",) and back.format is image_format


def test_a_response_from_an_older_server_reads_as_png() -> None:
    old = generate_pb2.GenerateResponse(images=[generate_pb2.GeneratedImage(png=b"p", seed=3)])
    result = generate_result_from_pb(old)
    assert result.format is ImageFormat.PNG and result.images == (b"p",)
