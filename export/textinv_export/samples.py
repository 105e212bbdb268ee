"""Seeded sample inputs for one call of a component, shaped by its spec.

ONNX export traces with them, parity checks feed them to both PyTorch and onnxruntime, and the
TensorRT tests bind them to engines. Torch lives here, never in ``textinv_export.specs``.
"""

from __future__ import annotations

import torch

from textinv_export.specs import TEXT_LENGTH, ComponentSpec, Shape


def sample_inputs(
    spec: ComponentSpec,
    batch: int | None = None,
    height: int | None = None,
    width: int | None = None,
    *,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Seeded inputs for one call in spec order; sizes default to the profile's opt.

    ``height``/``width`` are in pixels. Values are in the ranges real calls use: unit-variance
    latents and embeddings, images in ``[-1, 1]``, timesteps in ``[0, 1000)``, end-of-text
    positions in ``[1, 77)``, clip skips of 0 and 1.
    """
    generator = torch.Generator().manual_seed(seed)
    sizes = spec.sizes(batch or spec.axes["batch"].opt, height, width)
    spec.check_call(sizes)
    tensors: dict[str, torch.Tensor] = {}
    for tensor in spec.inputs:
        shape = tensor.concrete(sizes)
        tensors[tensor.name] = _draw(tensor.name, shape, generator)
    return tensors


def _draw(name: str, shape: Shape, generator: torch.Generator) -> torch.Tensor:
    if name == "eos_positions":
        return torch.randint(1, TEXT_LENGTH, shape, generator=generator, dtype=torch.int64)
    if name == "clip_skip":  # the last and the penultimate layer, which every encoder has
        return torch.randint(0, 2, shape, generator=generator, dtype=torch.int64)
    if name == "timestep":
        return torch.randint(0, 1000, shape, generator=generator).to(torch.float32)
    if name == "time_ids":  # SDXL's sizes and crop corners, in pixels
        return torch.randint(0, 1024, shape, generator=generator).to(torch.float32)
    if name == "image":
        return torch.rand(shape, generator=generator) * 2 - 1
    return torch.randn(shape, generator=generator)
