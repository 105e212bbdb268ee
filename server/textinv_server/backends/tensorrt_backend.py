"""The ``tensorrt`` backend: the export stage's engines through its ``TensorRTEngine`` wrapper.

Needs an NVIDIA GPU, CUDA and the ``tensorrt`` package; without them loading raises
``TensorRTUnavailableError`` naming what is missing. The manifest (checked against the model's
hash by ``load_manifest``) names each component's engine file and its spec's tensor names; only
the three engines it loads are checked, not the ONNX files beside them (about 8 GB for SD 1.5).
The latents stay on the GPU for the whole loop: the engine binds torch CUDA tensors by address and
runs on its own stream, so no host copy or sync happens inside a step. With ``cuda_graph=True``
the UNet engine (the one called every step) replays a CUDA graph per input shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from textinv.hardware import PrecisionChoice
from textinv_export.manifest import ComponentEntry, ManifestError, load_manifest
from textinv_export.specs import Component
from textinv_export.tensorrt import require_tensorrt
from textinv_export.tensorrt_engine import TensorRTEngine
from textinv_server.backends import BackendName
from textinv_server.backends.exported import (
    IMG2IMG_COMPONENTS,
    generation_components,
    sdxl_text,
    shape_limits,
    text_encoder_inputs,
    unet_inputs,
)


class _Engine:
    """One engine with its spec's input and output names."""

    def __init__(
        self, folder: Path, entry: ComponentEntry, device: int, *, cuda_graph: bool = False
    ) -> None:
        if entry.engine is None:
            raise ManifestError(
                f"{folder}: the manifest has no TensorRT engine for {entry.spec.name!r}; "
                "export with --target tensorrt on this GPU"
            )
        path = folder / entry.engine.file.path
        self.engine = TensorRTEngine(path, device, cuda_graph=cuda_graph)
        self.spec = entry.spec
        self.inputs = entry.spec.input_names
        self.outputs = entry.spec.output_names

    def run(self, *tensors: torch.Tensor) -> torch.Tensor:
        """The inputs in spec order → the first output."""
        return self.run_all(*tensors)[0]

    def run_all(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """The inputs in spec order → every output, in spec order."""
        outputs = self.engine.infer(dict(zip(self.inputs, tensors, strict=True)))
        return [outputs[name].float() for name in self.outputs]


class TensorRTBackend:
    name = BackendName.TENSORRT

    def __init__(
        self,
        engines: str | Path,
        model_hash: str,
        *,
        device: int = 0,
        verify_checksums: bool = True,
        cuda_graph: bool = False,
    ) -> None:
        require_tensorrt()
        self.folder = Path(engines)
        self.manifest = load_manifest(
            self.folder,
            model_hash,
            verify_checksums=verify_checksums,
            components=generation_components(self.folder),
            files=lambda entry: entry.engine_files,  # an entry without one fails in _Engine
            optional=IMG2IMG_COMPONENTS,
        )
        self.model_hash = model_hash
        self.device = torch.device("cuda", device)
        self.precision = PrecisionChoice(self.manifest.precision, "the export's")
        self.limits = shape_limits(self.manifest)
        self.text_encoder = self._engine(Component.TEXT_ENCODER, device)
        self.text_encoder_2 = (
            self._engine(Component.TEXT_ENCODER_2, device) if self.manifest.model.is_sdxl else None
        )
        # The text encoder and the VAE run once per batch: a graph would not pay for its capture.
        self.unet = self._engine(Component.UNET, device, cuda_graph=cuda_graph)
        self.vae_decoder = self._engine(Component.VAE_DECODER, device)
        self.vae_encoder = (
            self._engine(Component.VAE_ENCODER, device) if self.limits.takes_init_image else None
        )

    def _engine(self, component: Component, device: int, *, cuda_graph: bool = False) -> _Engine:
        entry = self.manifest.component(component)
        return _Engine(self.folder, entry, device, cuda_graph=cuda_graph)

    def encode_text(
        self, inputs_embeds: torch.Tensor, eos_positions: torch.Tensor, clip_skip: torch.Tensor
    ) -> torch.Tensor:
        spec = self.manifest.component(Component.TEXT_ENCODER).spec
        inputs = text_encoder_inputs(spec, inputs_embeds, eos_positions, clip_skip)
        return self.text_encoder.run(*inputs)  # [B, T, D]

    def encode_text_sdxl(
        self,
        inputs_embeds: torch.Tensor,
        inputs_embeds_2: torch.Tensor,
        eos_positions: torch.Tensor,
        clip_skip: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.text_encoder_2 is not None, "the pipeline checks that the model is SDXL"
        first, second = self.text_encoder.run_all, self.text_encoder_2.run_all
        return sdxl_text(first, second, inputs_embeds, inputs_embeds_2, eos_positions, clip_skip)

    def predict_noise(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        inputs = unet_inputs(self.unet.spec, sample, timestep, encoder_hidden_states, added)
        return self.unet.run(*inputs)  # [B, C, h, w]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae_decoder.run(latents)  # [B, 3, H, W]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        assert self.vae_encoder is not None, "the pipeline checks limits.takes_init_image"
        return self.vae_encoder.run(images)  # [B, 2C, h, w]

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)
