"""The ``onnxruntime`` backend: the export stage's graphs, on the CPU, CUDA or TensorRT provider.

It loads through the export manifest (``textinv_export.manifest.load_manifest``), which refuses
graphs exported from another model, or altered since. Graph names, inputs and outputs come from each
component's spec in the manifest, never from constants here. The CPU and CUDA providers run the
graphs optimized for onnxruntime; the TensorRT provider parses the raw fp32 exports, as the
export stage intends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

from textinv.choices import parse_input
from textinv.errors import InvalidInputError
from textinv_export.manifest import ComponentEntry, Manifest, load_manifest
from textinv_export.specs import Component
from textinv_server.backends import BackendName, ShapeLimits
from textinv_server.choices import Provider

_PROVIDER_NAMES = {
    Provider.CPU: "CPUExecutionProvider",
    Provider.CUDA: "CUDAExecutionProvider",
    Provider.TENSORRT: "TensorrtExecutionProvider",
}


@dataclass(frozen=True)
class _Graph:
    """One session with its spec's input and output names."""

    session: Any  # onnxruntime.InferenceSession
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def run(self, *arrays: np.ndarray) -> np.ndarray:
        feeds = dict(zip(self.inputs, arrays, strict=True))
        return np.asarray(self.session.run([self.outputs[0]], feeds)[0])


def shape_limits(manifest: Manifest) -> ShapeLimits:
    """The manifest's shape ranges as the pipeline checks them (pixels, images per call)."""
    resolution = manifest.ranges.resolution
    multiple = manifest.component(Component.UNET).spec.pixel_multiple
    return ShapeLimits(
        min_size=resolution.min,
        max_size=resolution.max,
        size_multiple=multiple,
        max_images=manifest.ranges.batch.max,
    )


class OnnxRuntimeBackend:
    name = BackendName.ONNXRUNTIME

    def __init__(
        self,
        engines: str | Path,
        model_hash: str,
        *,
        provider: Provider | str = Provider.CPU,
        threads: int = 0,
        verify_checksums: bool = True,
    ) -> None:
        self.provider = parse_input(Provider, provider)
        self.manifest = load_manifest(engines, model_hash, verify_checksums=verify_checksums)
        self.folder = Path(engines)
        self.model_hash = model_hash
        # Tensors cross as host arrays. With the CUDA or TensorRT provider that is one copy each way
        # per call; binding device buffers (IO binding) is the GPU issue's work.
        self.device = torch.device("cpu")
        self.limits = shape_limits(self.manifest)
        options = _session_options(threads)
        providers = _providers(self.provider, self.folder)
        self.text_encoder = self._graph(Component.TEXT_ENCODER, options, providers)
        self.unet = self._graph(Component.UNET, options, providers)
        self.vae_decoder = self._graph(Component.VAE_DECODER, options, providers)

    def _graph(self, component: Component, options: Any, providers: list[Any]) -> _Graph:
        entry: ComponentEntry = self.manifest.component(component)
        # TensorRT parses the raw export; the other providers run the optimized graph.
        file = entry.source if self.provider is Provider.TENSORRT else entry.graph
        session = onnxruntime.InferenceSession(
            str(self.folder / file.path), options, providers=providers
        )
        return _Graph(session, tuple(entry.spec.input_names), tuple(entry.spec.output_names))

    def encode_text(self, inputs_embeds: torch.Tensor, eos_positions: torch.Tensor) -> torch.Tensor:
        hidden = self.text_encoder.run(_array(inputs_embeds), _array(eos_positions, np.int64))
        return torch.from_numpy(hidden)  # [B, T, D]

    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        noise = self.unet.run(_array(sample), _array(timestep), _array(encoder_hidden_states))
        return torch.from_numpy(noise)  # [B, C, h, w]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.vae_decoder.run(_array(latents)))  # [B, 3, H, W]

    def synchronize(self) -> None:
        """``session.run`` returns when its outputs are on the host: nothing to wait for."""


def _array(tensor: torch.Tensor, dtype: type = np.float32) -> np.ndarray:
    """A contiguous host array (no copy for contiguous CPU float32 tensors)."""
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=dtype)


def _session_options(threads: int) -> Any:
    options = onnxruntime.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: libraries stay quiet
    return options


def _providers(provider: Provider, folder: Path) -> list[Any]:
    """The provider list for onnxruntime, falling back to the CPU for unsupported operators."""
    wanted = _PROVIDER_NAMES[provider]
    available = onnxruntime.get_available_providers()
    if wanted not in available:
        raise InvalidInputError(
            f"onnxruntime provider {provider.value!r} ({wanted}) is not available in this "
            f"onnxruntime build; available: {', '.join(available)}"
        )
    if provider is Provider.TENSORRT:
        cache = folder / "ort_trt_cache"
        trt_options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}
        return [
            (wanted, trt_options),
            _PROVIDER_NAMES[Provider.CUDA],
            _PROVIDER_NAMES[Provider.CPU],
        ]
    if provider is Provider.CUDA:
        return [wanted, _PROVIDER_NAMES[Provider.CPU]]
    return [wanted]
