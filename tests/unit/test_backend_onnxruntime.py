"""The onnxruntime backend (CPU) on the export stage's graphs, against diffusers' pipeline; the
GPU providers' options and the provider check, on the CPU with a real export."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from tests.unit.generation_reference import (
    max_pixel_difference,
    pixels,
    reference_images,
    reference_pipeline,
)
from textinv.errors import InvalidInputError
from textinv_export.exporter import ExportConfig, export_model
from textinv_export.manifest import MANIFEST_NAME, FileEntry, ManifestError, load_manifest
from textinv_export.specs import Component, Precision, Range, ShapeRanges
from textinv_server.backends import BackendName
from textinv_server.backends.exported import GENERATION_COMPONENTS
from textinv_server.backends.factory import cuda_index
from textinv_server.backends.onnxruntime_backend import OnnxRuntimeBackend, Provider
from textinv_server.backends.ort_providers import (
    ProviderUnavailableError,
    check_provider,
    loaded_files,
    provider_options,
    trt_cache_folder,
)
from textinv_server.host_model import HostModel
from textinv_server.pipeline import GenerationPipeline
from textinv_server.requests import GenerationRequest, Scheduler


@pytest.fixture(scope="module")
def engines(tiny_engines_dir: Path) -> Path:
    return tiny_engines_dir


@pytest.fixture(scope="module")
def concepts(tiny_model) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return {"<cat-toy>": torch.randn(2, tiny_model.text_width, generator=generator)}


@pytest.fixture(scope="module")
def pipeline(tiny_model, engines) -> GenerationPipeline:
    backend = OnnxRuntimeBackend(engines, tiny_model.model_hash, threads=1)
    return GenerationPipeline(HostModel.of(tiny_model), backend)


def request(**overrides) -> GenerationRequest:
    values = {
        "prompt": "a photo of <cat-toy> on the beach",
        "negative_prompt": "blurry",
        "steps": 3,
        "seed": 77,
        "width": 48,
        "height": 32,
    }
    return GenerationRequest(**{**values, **overrides})


@pytest.mark.parametrize("scheduler", [Scheduler.DDIM, Scheduler.EULER_ANCESTRAL])
def test_matches_diffusers_on_the_cpu(
    scheduler, pipeline, concepts, tiny_model_dir, tmp_path
) -> None:
    req = request(scheduler=scheduler, num_images=2)
    ours = pixels(pipeline(req, concepts))
    theirs = reference_images(reference_pipeline(tiny_model_dir, concepts, tmp_path), req)
    assert ours.std() > 5
    assert max_pixel_difference(ours, theirs) <= 4


def test_batched_equals_unbatched(pipeline, concepts) -> None:
    requests = [request(seed=1), request(seed=2, prompt="a <cat-toy> cat", guidance_scale=4.0)]
    alone = [pixels(pipeline(req, concepts)) for req in requests]
    jobs = [pipeline.prepare(req, concepts) for req in requests]
    batched = pipeline.run_batch(jobs)
    for one, result in zip(alone, batched, strict=True):
        assert max_pixel_difference(one, pixels(result)) <= 1  # type: ignore[arg-type]


def test_the_export_profile_limits_requests(pipeline, concepts) -> None:
    assert pipeline.backend.name is BackendName.ONNXRUNTIME
    for overrides, named in [
        ({"width": 128}, "width 128"),
        ({"height": 16}, "height 16"),
        ({"num_images": 5}, "5 images"),
    ]:
        with pytest.raises(InvalidInputError, match=named):
            pipeline.prepare(request(**overrides), concepts)


def test_a_manifest_for_another_model_is_refused(engines) -> None:
    with pytest.raises(ManifestError, match="not the expected model"):
        OnnxRuntimeBackend(engines, "0" * 64, threads=1)


def test_an_altered_graph_is_refused(tiny_model, engines, tmp_path) -> None:
    copy = shutil.copytree(engines, tmp_path / "engines")
    OnnxRuntimeBackend(copy, tiny_model.model_hash, threads=1)  # an intact copy loads
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    unet = copy / manifest["components"]["unet"]["graph"]["path"]
    data = bytearray(unet.read_bytes())
    data[-1] ^= 0xFF
    unet.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="altered"):
        OnnxRuntimeBackend(copy, tiny_model.model_hash, threads=1)


def test_an_unknown_or_missing_provider_is_named(tiny_model, engines) -> None:
    with pytest.raises(InvalidInputError, match="'metal'"):
        OnnxRuntimeBackend(engines, tiny_model.model_hash, provider="metal")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(InvalidInputError, match="'cuda'.*not available"):
            OnnxRuntimeBackend(engines, tiny_model.model_hash, provider=Provider.CUDA)


def test_the_bound_run_equals_session_run_bit_for_bit(pipeline) -> None:
    """The I/O-binding path (what the GPU providers run) against onnxruntime's plain run."""
    unet = pipeline.backend.unet
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(4, 4, 24, 16, generator=generator)  # 2 images of 48 × 32 px, guided
    timestep = torch.full((4,), 501.0)
    hidden = torch.randn(4, 77, 32, generator=generator)
    bound = unet.run(sample, timestep, hidden)
    feeds = {
        "sample": sample.numpy(),
        "timestep": timestep.numpy(),
        "encoder_hidden_states": hidden.numpy(),
    }
    (plain,) = unet.session.run(["noise_pred"], feeds)
    assert bound.shape == (4, 4, 24, 16) and bound.dtype == torch.float32
    assert bound.std() > 0 and np.array_equal(bound.numpy(), plain)


def test_tensorrt_provider_cache_is_keyed_by_the_graph_and_its_weights(engines) -> None:
    manifest = load_manifest(engines)
    unet, text = manifest.component(Component.UNET), manifest.component(Component.TEXT_ENCODER)
    folder = trt_cache_folder(engines, unet)
    assert folder.parent == engines / "ort_trt_cache" and folder.name.startswith("unet-")
    assert folder != trt_cache_folder(engines, text)
    # Another model of the same architecture: the same file names, other weights.
    other = replace(unet, source=replace(unet.source, sha256="0" * 64))
    assert trt_cache_folder(engines, other) != folder
    with_data = replace(unet, source_data=FileEntry("onnx/unet.onnx.data", "1" * 64, 3 << 30))
    assert trt_cache_folder(engines, with_data) != folder


def test_tensorrt_options_carry_the_profile_precision_and_device(engines) -> None:
    manifest = load_manifest(engines)
    unet = manifest.component(Component.UNET)
    # Batch 1..4 images (2..8 UNet rows under guidance), sides 32..64 px (16..32 latent cells),
    # 77..231 prompt tokens (3 chunks, each a text-encoder row: 24 rows at most).
    providers = provider_options(Provider.TENSORRT, unet, manifest.precision, engines, device_id=1)
    assert providers[1:] == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    assert providers[0] == (
        "TensorrtExecutionProvider",
        {
            "device_id": 1,
            "trt_fp16_enable": False,  # an fp32 manifest
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(trt_cache_folder(engines, unet)),
            "trt_profile_min_shapes": "sample:1x4x16x16,timestep:1,encoder_hidden_states:1x77x32",
            "trt_profile_opt_shapes": "sample:2x4x16x16,timestep:2,encoder_hidden_states:2x77x32",
            "trt_profile_max_shapes": "sample:8x4x32x32,timestep:8,encoder_hidden_states:8x231x32",
        },
    )
    text = manifest.component(Component.TEXT_ENCODER)
    first = provider_options(Provider.TENSORRT, text, Precision.FP16, engines)[0]
    assert isinstance(first, tuple) and first[0] == "TensorrtExecutionProvider"
    fp16 = first[1]
    assert (fp16["device_id"], fp16["trt_fp16_enable"]) == (0, True)
    assert fp16["trt_profile_max_shapes"] == (
        "inputs_embeds:24x77x32,eos_positions:24,clip_skip:24"
    )


def test_cpu_and_cuda_options_name_the_device(engines) -> None:
    manifest = load_manifest(engines)
    unet = manifest.component(Component.UNET)
    assert provider_options(Provider.CPU, unet, manifest.precision, engines) == [
        "CPUExecutionProvider"
    ]
    assert provider_options(Provider.CUDA, unet, manifest.precision, engines, device_id=2) == [
        ("CUDAExecutionProvider", {"device_id": 2}),
        "CPUExecutionProvider",
    ]


def test_the_gpu_index_comes_from_the_device_option() -> None:
    assert [cuda_index(d) for d in ("cuda:1", "cuda", "cpu")] == [1, 0, 0]


def test_a_session_that_fell_back_to_the_cpu_is_refused(engines) -> None:
    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the TensorRT provider: no fallback to show")
    manifest = load_manifest(engines)
    entry = manifest.component(Component.UNET)
    path = engines / entry.source.path
    providers = provider_options(Provider.TENSORRT, entry, manifest.precision, engines)
    # Without the TensorRT (and CUDA) provider onnxruntime only warns, and runs on the CPU.
    with pytest.warns(UserWarning, match="not in available provider names"):
        session = onnxruntime.InferenceSession(str(path), providers=providers)
    assert session.get_providers() == ["CPUExecutionProvider"]
    wanted = "asked for TensorrtExecutionProvider but runs on CPUExecutionProvider"
    with pytest.raises(ProviderUnavailableError, match=wanted):
        check_provider(session, Provider.TENSORRT, path)
    check_provider(session, Provider.CPU, path)  # what it runs on passes


def test_only_the_files_a_provider_reads_are_checked(tiny_model, tmp_path, concepts) -> None:
    """An export stripped of the raw sources and of the VAE encoder still serves the CPU
    provider (it reads only the optimized graphs, and the VAE encoder's only for img2img)."""
    folder = tmp_path / "full"
    ranges = ShapeRanges(batch=Range(1, 1, 4), resolution=Range(32, 32, 64))
    export_model(tiny_model, ExportConfig(folder, ranges=ranges), progress=lambda _: None)
    whole = GenerationPipeline(
        HostModel.of(tiny_model), OnnxRuntimeBackend(folder, tiny_model.model_hash, threads=1)
    )
    expected = pixels(whole(request(), concepts))
    manifest = load_manifest(folder)
    for component, entry in manifest.components.items():
        doomed = entry.files if component is Component.VAE_ENCODER else entry.source_files
        for file in doomed:
            (folder / file.path).unlink()
    backend = OnnxRuntimeBackend(folder, tiny_model.model_hash, threads=1)
    assert backend.device == torch.device("cpu")
    assert not backend.limits.takes_init_image  # the VAE encoder was not shipped: no img2img
    stripped = pixels(GenerationPipeline(HostModel.of(tiny_model), backend)(request(), concepts))
    assert max_pixel_difference(stripped, expected) == 0
    # The TensorRT provider parses the sources: for it this folder is incomplete.
    with pytest.raises(
        ManifestError, match="text_encoder.onnx' is listed in the manifest but missing"
    ):
        load_manifest(
            folder, components=GENERATION_COMPONENTS, files=loaded_files(Provider.TENSORRT)
        )
    # What it does read is still checked.
    graph = folder / manifest.component(Component.VAE_DECODER).graph.path
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="vae_decoder.fp32.opt.onnx.*altered"):
        OnnxRuntimeBackend(folder, tiny_model.model_hash, threads=1)


def test_a_vae_encoder_shipped_in_part_is_refused(tiny_model, tiny_engines_dir, tmp_path) -> None:
    """The VAE encoder is optional, but one that is there is checked like every graph."""
    folder = tmp_path / "copy"
    shutil.copytree(tiny_engines_dir, folder)
    graph = folder / load_manifest(folder).component(Component.VAE_ENCODER).graph.path
    graph.write_bytes(graph.read_bytes()[:-1])
    with pytest.raises(ManifestError, match="vae_encoder.fp32.opt.onnx"):
        OnnxRuntimeBackend(folder, tiny_model.model_hash, threads=1)
