"""What an export's manifest says its graphs take, for every backend that runs them
(onnxruntime and TensorRT): the components generation loads, the shape limits the pipeline
checks, and the text encoder's inputs in the order its spec gives them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from textinv_export.manifest import Manifest, read_manifest
from textinv_export.specs import CLIP_SKIP, TEXT_LENGTH, Component, ComponentSpec
from textinv_server.backends import ShapeLimits

# The components text-to-image runs; img2img also needs the VAE encoder, which an export may
# leave out (``textinv export --components``): it is loaded, and checked, where there is one.
GENERATION_COMPONENTS = (Component.TEXT_ENCODER, Component.UNET, Component.VAE_DECODER)
IMG2IMG_COMPONENTS = (Component.VAE_ENCODER,)


def generation_components(folder: str | Path) -> tuple[Component, ...]:
    """What text-to-image loads from the export in ``folder``: SDXL's second text encoder too."""
    sdxl = read_manifest(Path(folder)).model.is_sdxl
    return GENERATION_COMPONENTS + ((Component.TEXT_ENCODER_2,) if sdxl else ())


def shape_limits(manifest: Manifest) -> ShapeLimits:
    """The manifest's shape ranges as the pipeline checks them (pixels, images per call)."""
    resolution = manifest.ranges.resolution
    unet = manifest.component(Component.UNET).spec
    return ShapeLimits(
        min_size=resolution.min,
        max_size=resolution.max,
        size_multiple=unet.pixel_multiple,
        max_images=manifest.ranges.batch.max,
        max_prompt_chunks=exported_prompt_chunks(unet),
        takes_clip_skip=CLIP_SKIP in manifest.component(Component.TEXT_ENCODER).spec.input_names,
        takes_init_image=Component.VAE_ENCODER in manifest.components,
    )


def text_encoder_inputs(
    spec: ComponentSpec,
    inputs_embeds: torch.Tensor,
    eos_positions: torch.Tensor,
    clip_skip: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """The exported text encoder's inputs in its spec's order. An export made before clip skip
    has no ``clip_skip`` input; the pipeline refuses a nonzero one for it (``takes_clip_skip``)."""
    given = {"inputs_embeds": inputs_embeds, "eos_positions": eos_positions, CLIP_SKIP: clip_skip}
    return tuple(given[name] for name in spec.input_names)


def unet_inputs(
    spec: ComponentSpec,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    added: Mapping[str, torch.Tensor] | None,
) -> tuple[torch.Tensor, ...]:
    """The exported UNet's inputs in its spec's order; SDXL's take ``added``'s ``text_embeds``
    and ``time_ids`` (the pipeline passes them exactly for an SDXL model)."""
    given = {"sample": sample, "timestep": timestep, "encoder_hidden_states": encoder_hidden_states}
    return tuple(given[name] if name in given else (added or {})[name] for name in spec.input_names)


Run = Callable[..., Sequence[torch.Tensor]]  # a graph's inputs → the outputs generation reads


def sdxl_text(
    first: Run,
    second: Run,
    inputs_embeds: torch.Tensor,
    inputs_embeds_2: torch.Tensor,
    eos_positions: torch.Tensor,
    clip_skip: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's two exported text encoders (``textinv.sdxl_text``): ``(prompt_embeds
    [B, T, D1 + D2], text_embeds [B, P])``, the first's and the second's hidden states joined
    along the width."""
    (hidden,) = first(inputs_embeds, clip_skip)
    hidden_2, pooled = second(inputs_embeds_2, eos_positions, clip_skip)
    return torch.cat([hidden, hidden_2], -1), pooled


def exported_prompt_chunks(unet: ComponentSpec) -> int:
    """The 77-token chunks the exported UNet takes: a fixed token axis (exports made before long
    prompts) holds exactly its length's worth; a dynamic one, its range's maximum."""
    (hidden,) = [t for t in unet.inputs if t.name == "encoder_hidden_states"]
    tokens = hidden.shape[1]
    if isinstance(tokens, str):
        return unet.axes[tokens].max // TEXT_LENGTH
    return tokens // TEXT_LENGTH
