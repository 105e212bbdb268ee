"""The one-call UNet check of ``textinv bench generate`` (``UNET_CHECK``): each torch runner's
UNet as it runs it (compiled, CUDA-graphed) on one fixed seeded input, against the same module
called eagerly."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from textinv.model import BaseModel
from textinv.prompts import MAX_LENGTH
from textinv_server.backends.torch_backend import TorchBackend
from textinv_server.pipeline import GenerationPipeline
from textinv_server.requests import GenerationRequest

UNET_CHECK = "unet_call_relative_error_vs_eager"
CHECK_TIMESTEP = 500.0  # the fixed input's timestep: mid-schedule of SD's 1000


def unet_call_checks(
    model: BaseModel, pipelines: dict[str, GenerationPipeline], request: GenerationRequest
) -> dict[str, dict[str, Any]]:
    """Each torch runner's UNet as it runs it (``predict_noise``: compiled, CUDA-graphed) on one
    fixed seeded input, against the same module called eagerly (one call per dtype and layout):
    ``{name: {UNET_CHECK: max relative error}}``, or ``None`` and ``unet_call_error``."""
    from textinv_export.parity import compare

    backends = {n: p.backend for n, p in pipelines.items() if isinstance(p.backend, TorchBackend)}
    eager: dict[tuple[torch.dtype, torch.memory_format], np.ndarray] = {}
    out: dict[str, dict[str, Any]] = {}
    for name, backend in backends.items():
        inputs = check_inputs(model, request, backend.device)
        try:
            got = backend.predict_noise(*inputs).cpu().numpy()
            key = (backend.dtype, backend.memory_format)
            if key not in eager:
                eager[key] = eager_noise(backend, *inputs)
            out[name] = {UNET_CHECK: compare("noise", got, eager[key]).relative_error}
        except Exception as error:  # the check's own failure, in the row; the bench goes on
            out[name] = {UNET_CHECK: None, "unet_call_error": f"{type(error).__name__}: {error}"}
    return out


def check_inputs(
    model: BaseModel, request: GenerationRequest, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed seeded input laid out as the pipeline's UNet calls for ``request`` (so compiled
    graphs' guards hold and CUDA graphs replay): ``sample [rows, C, h, w]``, ``timestep [rows]``
    (a device scalar expanded, as the pipeline's), ``hidden [rows, 77, D]``; float32."""
    rows = request.num_images * (2 if request.uses_guidance else 1)
    sides = (request.height, request.width)  # pixels, None: the model's own
    h, w = ((side or model.default_resolution) // model.vae_scale_factor for side in sides)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(rows, model.unet.config.in_channels, h, w, generator=generator)
    hidden = torch.randn(rows, MAX_LENGTH, model.text_width, generator=generator)
    timestep = torch.full((1,), CHECK_TIMESTEP, device=device)[0].expand(rows)
    return sample.to(device), timestep, hidden.to(device)


@torch.inference_mode()
def eager_noise(
    backend: TorchBackend, sample: torch.Tensor, timestep: torch.Tensor, hidden: torch.Tensor
) -> np.ndarray:
    """The backend's UNet module itself, eager, on inputs cast as ``predict_noise`` casts them."""
    x = sample.to(backend.device, backend.dtype).contiguous(memory_format=backend.memory_format)
    states = hidden.to(backend.device, backend.dtype)
    noise = backend.unet(x, timestep, encoder_hidden_states=states, return_dict=False)[0]
    return noise.float().cpu().numpy()  # type: ignore[no-any-return]
