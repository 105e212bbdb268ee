"""Every RPC's happy path against a real server on a free port, through the real client."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from textinv.concepts import Concept, concept_to_bytes, parse_concept
from textinv.hardware import cpu_features
from textinv_client import (
    GenerateProgress,
    GenerateRequest,
    GenerateResult,
    InvalidArgument,
    NotFound,
    TextInvClient,
)
from textinv_client.types import Precision, Scheduler

WIDTH = 32


def concept_file(token: str = "<cat-toy>", k: int = 2, seed: int = 0) -> bytes:
    vectors = torch.randn(k, WIDTH, generator=torch.Generator().manual_seed(seed))
    return concept_to_bytes(Concept(token, vectors))


def small(prompt: str, **changes) -> GenerateRequest:
    fields = {"steps": 2, "seed": 5, "width": 32, "height": 32} | changes
    return GenerateRequest(prompt=prompt, **fields)


def test_health_is_serving_after_warm_up(textinv_server) -> None:
    with grpc.insecure_channel(textinv_server.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_generate_returns_pngs_seeds_and_timings(textinv_server) -> None:
    with TextInvClient(textinv_server.target) as textinv:
        result = textinv.generate(small("a red star", num_images=2, seed=11))
    assert result.seeds == (11, 12)
    image = Image.open(io.BytesIO(result.images[0]))
    assert image.format == "PNG" and image.size == (32, 32)
    assert result.timings.total_ms > 0 and result.timings.unet_total_ms > 0


def test_the_largest_seed_wraps_modulo_two_to_the_64(textinv_server) -> None:
    with TextInvClient(textinv_server.target) as textinv:
        wrapped = textinv.generate(small("a red star", num_images=2, seed=2**64 - 1))
        zero = textinv.generate(small("a red star", seed=0))
    assert wrapped.seeds == (2**64 - 1, 0) and wrapped.seed == 2**64 - 1
    assert wrapped.images[1] == zero.images[0]


def png_bytes(width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    buffer = io.BytesIO()
    Image.fromarray(np.stack([x * 7, y * 5, x + y], axis=-1).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_img2img_takes_the_init_image_size_and_refuses_a_bad_one(textinv_server) -> None:
    with TextInvClient(textinv_server.target) as textinv:
        start = png_bytes(40, 24)
        request = GenerateRequest("a red star", steps=4, seed=5, init_image=start, strength=0.5)
        result = textinv.generate(request)
        assert Image.open(io.BytesIO(result.images[0])).size == (40, 24)
        with pytest.raises(InvalidArgument, match="'init_image': not a readable image") as bad:
            textinv.generate(GenerateRequest(prompt="a red star", init_image=b"GIF89a..."))
        assert "/" not in str(bad.value)  # no server path


def test_unset_seed_is_picked_and_reported(textinv_server) -> None:
    with TextInvClient(textinv_server.target) as textinv:
        first = textinv.generate(small("a red star", seed=None))
        again = textinv.generate(small("a red star", seed=first.seed))
    assert first.images == again.images


def test_registered_concept_is_usable_by_the_next_generate(textinv_server) -> None:
    with TextInvClient(textinv_server.target) as textinv:
        with pytest.raises(NotFound, match="<cat-toy>"):
            textinv.generate(small("a photo of <cat-toy>"))
        info = textinv.register_concept(concept_file(), filename="learned_embeds.safetensors")
        assert (info.token, info.num_vectors, info.embedding_dim) == ("<cat-toy>", 2, WIDTH)
        with_concept = textinv.generate(small("a photo of <cat-toy>"))
        without = textinv.generate(small("a photo of a cat"))
        assert with_concept.images != without.images
        assert [c.token for c in textinv.list_concepts()] == ["<cat-toy>"]
        downloaded = parse_concept(textinv.download_concept("<cat-toy>"), "download")
        assert torch.equal(downloaded.vectors, parse_concept(concept_file(), "x").vectors)
        textinv.delete_concept("<cat-toy>")
        with pytest.raises(NotFound):
            textinv.get_concept("<cat-toy>")


def test_stream_sends_each_step_then_the_result(textinv_server) -> None:
    with TextInvClient(textinv_server.target) as textinv:
        events = list(textinv.generate_stream(small("a blue circle", steps=3)))
    *progress, result = events
    assert [e.step for e in progress if isinstance(e, GenerateProgress)] == [1, 2, 3]
    assert isinstance(result, GenerateResult) and result.images


def test_server_info_reports_model_limits_and_versions(textinv_server) -> None:
    with TextInvClient(textinv_server.target) as textinv:
        info = textinv.get_server_info()
    assert info.model is not None
    assert info.model.embedding_dim == WIDTH and len(info.model.sha256) == 64
    assert info.model.text_encoder_layers == 5  # the tiny model's; clip_skip stays below it
    assert info.backend == "torch"
    assert info.limits.max_concurrent_jobs == 1
    # Every limit the server enforces is reported, text lengths included.
    limits = textinv_server.config.limits
    assert info.limits.max_job_steps == limits.max_job_steps
    assert info.limits.max_token_chars == limits.max_token_chars > 0
    assert info.limits.max_caption_chars == limits.max_caption_chars > 0
    assert info.limits.max_page_token_chars == limits.max_page_token_chars > 0
    assert info.limits.max_guidance_scale == limits.max_guidance_scale
    assert Scheduler.EULER_ANCESTRAL in info.schedulers
    assert "torch" in info.library_versions
    # auto on a tiny model: fp32 whatever the CPU (too narrow for bf16 to pay), and why.
    assert info.precision == "fp32" and "small model" in info.precision_reason
    assert info.cpu_instruction_sets == cpu_features().instruction_sets


def test_server_info_reports_an_asked_precision(start_textinv) -> None:
    server = start_textinv(weights=Precision.BF16)
    with TextInvClient(server.target) as textinv:
        info = textinv.get_server_info()
        textinv.generate(GenerateRequest("a red star", steps=2, seed=0))  # bf16 weights serve
    assert (info.precision, info.precision_reason) == ("bf16", "asked for")


def test_onnxruntime_backend_serves_the_same_images_as_torch(
    start_textinv, tiny_engines_dir, tmp_path
) -> None:
    onnx_server = start_textinv(
        backend="onnxruntime", engines=tiny_engines_dir, data_dir=tmp_path / "onnx"
    )
    torch_server = start_textinv(data_dir=tmp_path / "torch")
    request = small("a photo of <cat-toy>", seed=9)
    results = []
    for server in (onnx_server, torch_server):
        with TextInvClient(server.target) as textinv:
            textinv.register_concept(concept_file(), filename="c.safetensors")
            info = textinv.get_server_info()
            assert info.backend == server.config.backend
            exported = {profile.component for profile in info.engine_profiles}
            assert exported == (
                {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
                if server is onnx_server
                else set()
            )
            results.append(textinv.generate(request))
    ours, reference = (np.asarray(Image.open(io.BytesIO(r.images[0]))) for r in results)
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 4  # 4/255, as the runtime


def test_server_info_names_the_model_without_a_server_path(textinv_server) -> None:
    with TextInvClient(textinv_server.target) as textinv:
        info = textinv.get_server_info()
    assert info.model is not None and info.model.name and "/" not in info.model.name
