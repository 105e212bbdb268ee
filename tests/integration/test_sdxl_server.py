"""An SDXL model served over gRPC by a real server: the contract's per-encoder widths, SDXL
concept files in and out, prompt_2, an inversion job, and the refusal of the other family's
concepts, naming both widths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.integration.conftest import ServerThread, server_config
from tests.integration.test_server_jobs import params, training_images
from tests.unit.sdxl_reference import registered, sdxl_concepts
from textinv.concepts import Concept, ConceptFormat, concept_to_bytes, parse_concept
from textinv.testing_sdxl import TINY_SDXL_WIDTHS
from textinv_client import GenerateRequest, InvalidArgument, JobInfo, JobState, TextInvClient
from textinv_server.pipeline.generation import load_generation_pipeline
from textinv_server.requests import GenerationRequest


@pytest.fixture
def sdxl_server(tiny_sdxl_model_dir: Path, tmp_path: Path):  # -> Iterator[ServerThread]
    server = ServerThread(server_config(tiny_sdxl_model_dir, tmp_path / "data"))
    yield server
    server.stop()


def sdxl_file(index: int = 0) -> bytes:
    return concept_to_bytes(sdxl_concepts(7)[index], ConceptFormat.SDXL)


def test_sdxl_concepts_and_widths_over_grpc(sdxl_server, tiny_sdxl_model_dir) -> None:
    cat_toy, dog_style = sdxl_concepts(7)
    with TextInvClient(sdxl_server.target) as textinv:
        model = textinv.get_server_info().model
        assert model is not None and model.family == "sdxl"
        assert model.text_encoder_widths == TINY_SDXL_WIDTHS
        info = textinv.register_concept(sdxl_file(0), filename="cat.safetensors")
        textinv.register_concept(sdxl_file(1), filename="dog.safetensors")
        assert info.embedding_dims == TINY_SDXL_WIDTHS and info.source_format == "sdxl"
        # GetConcept returns the SDXL file (clip_l / clip_g) with the same vectors.
        stored = parse_concept(textinv.download_concept("<cat-toy>"), "cat.safetensors")
        assert stored.source_format is ConceptFormat.SDXL and stored.vectors_2 is not None
        assert torch.equal(stored.vectors, cat_toy.vectors)
        assert cat_toy.vectors_2 is not None and torch.equal(stored.vectors_2, cat_toy.vectors_2)
        # An SD 1.x concept of clip_l's width is refused, naming both widths.
        sd1 = concept_to_bytes(Concept("<sd1>", cat_toy.vectors))
        with pytest.raises(InvalidArgument, match=r"needs clip_l \(32\) and clip_g \(48\)"):
            textinv.register_concept(sd1, filename="sd1.safetensors")
        # prompt_2 reaches the second encoder: the same image as the pipeline in this process.
        fields: dict[str, Any] = {"steps": 3, "seed": 4, "width": 32, "height": 32}
        texts: dict[str, Any] = {
            "prompt": "a photo of <cat-toy>",
            "prompt_2": "a <dog-style> painting",
        }
        remote = textinv.generate(GenerateRequest(**texts, **fields))
    local = load_generation_pipeline(tiny_sdxl_model_dir)(
        GenerationRequest(**texts, **fields), registered([cat_toy, dog_style])
    )
    assert remote.images == local.images


def test_an_sdxl_inversion_job_registers_both_sets(sdxl_server) -> None:
    with TextInvClient(sdxl_server.target) as textinv:
        job = textinv.create_inversion_job(training_images(), params("<sdxl-job>", steps=2))
        final = list(textinv.watch_job(job.job_id))[-1]
        assert isinstance(final, JobInfo) and final.state is JobState.SUCCEEDED, final
        info = textinv.get_concept("<sdxl-job>")
        assert info.embedding_dims == TINY_SDXL_WIDTHS
        learned = parse_concept(textinv.download_concept("<sdxl-job>"), "job.safetensors")
        assert learned.vectors_2 is not None and learned.metadata.steps == 2
        result = textinv.generate(GenerateRequest("a <sdxl-job>", steps=2, width=32, height=32))
        assert len(result.images) == 1


def test_an_sd1_server_refuses_an_sdxl_concept(textinv_server) -> None:
    with TextInvClient(textinv_server.target) as textinv:
        with pytest.raises(InvalidArgument, match=r"an SDXL concept \(clip_l 32, clip_g 48"):
            textinv.register_concept(sdxl_file(), filename="sdxl.safetensors")
        info = textinv.get_server_info().model
        assert info is not None and info.text_encoder_widths == (info.embedding_dim,)
