"""Shared fixtures: a tiny seeded SD 1.x model in the diffusers layout, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Two cores are shared by everything on these machines; one thread keeps tests predictable.
torch.set_num_threads(int(os.environ.get("TEXTINV_TEST_THREADS", "1")))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# ``pg_url``: a fresh PostgreSQL database per test (skipped without a server, failed under CI).
pytest_plugins = ["tests.pg"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from textinv.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):  # -> BaseModel
    from textinv.model import load_base_model

    return load_base_model(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_engines_dir(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's graphs (fp32 ONNX; all four, the VAE encoder for img2img), exported once
    per session.

    Profile: 1 to 4 images per call, 32 to 64 px sides (the tiny model's own side is 64).
    """
    from textinv_export.exporter import ExportConfig, export_model
    from textinv_export.specs import Range, ShapeRanges

    folder = tmp_path_factory.mktemp("engines")
    ranges = ShapeRanges(batch=Range(1, 1, 4), resolution=Range(32, 32, 64))
    export_model(tiny_model, ExportConfig(folder, ranges=ranges))  # every component it has
    return folder


@pytest.fixture(scope="session")
def torch_pipeline(tiny_model):  # -> GenerationPipeline
    """The tiny model's generation pipeline on the torch backend, without concepts."""
    from textinv_server.backends.torch_backend import TorchBackend
    from textinv_server.host_model import HostModel
    from textinv_server.pipeline import GenerationPipeline

    return GenerationPipeline(HostModel.of(tiny_model), TorchBackend(tiny_model))


@pytest.fixture(scope="session")
def onnxruntime_pipeline(tiny_model, tiny_engines_dir: Path):  # -> GenerationPipeline
    """The same over the exported graphs (onnxruntime, CPU, two threads)."""
    from textinv_server.backends.onnxruntime_backend import OnnxRuntimeBackend
    from textinv_server.host_model import HostModel
    from textinv_server.pipeline import GenerationPipeline

    backend = OnnxRuntimeBackend(tiny_engines_dir, tiny_model.model_hash, threads=2)
    return GenerationPipeline(HostModel.of(tiny_model), backend)


@pytest.fixture(scope="session")
def diffusers_reference(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """diffusers' ``StableDiffusionPipeline`` over the tiny model, without concepts."""
    from tests.unit.generation_reference import reference_pipeline

    return reference_pipeline(tiny_model_dir, {}, tmp_path_factory.mktemp("no-concepts"))


@pytest.fixture(scope="session")
def tiny_sd2_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD 2.x model: OpenCLIP-style text encoder (GELU, 64 wide), linear-projection
    transformers in the UNet, v-prediction."""
    from textinv.testing import TINY_SD2_WIDTH, build_tiny_model

    folder = tmp_path_factory.mktemp("models") / "tiny-sd2"
    return build_tiny_model(folder, seed=3, width=TINY_SD2_WIDTH, family="sd2")


@pytest.fixture(scope="session")
def tiny_sd2_model(tiny_sd2_model_dir: Path):  # -> BaseModel
    from textinv.model import load_base_model

    return load_base_model(tiny_sd2_model_dir)


@pytest.fixture(scope="session")
def tiny_sdxl_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL base model: two text encoders (32 and 48 wide), added conditioning."""
    from textinv.testing_sdxl import build_tiny_sdxl_model

    return build_tiny_sdxl_model(tmp_path_factory.mktemp("models") / "tiny-sdxl")
