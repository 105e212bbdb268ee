"""What an export's manifest says its graphs take, for every backend that runs them
(onnxruntime and TensorRT): the components generation loads, the shape limits the pipeline
checks, and the text encoder's inputs in the order its spec gives them.
"""

from __future__ import annotations

import torch

from textinv_export.manifest import Manifest
from textinv_export.specs import CLIP_SKIP, TEXT_LENGTH, Component, ComponentSpec
from textinv_server.backends import ShapeLimits

# The components text-to-image runs; img2img also needs the VAE encoder, which an export may
# leave out (``textinv export --components``): it is loaded, and checked, where there is one.
GENERATION_COMPONENTS = (Component.TEXT_ENCODER, Component.UNET, Component.VAE_DECODER)
IMG2IMG_COMPONENTS = (Component.VAE_ENCODER,)


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


def exported_prompt_chunks(unet: ComponentSpec) -> int:
    """The 77-token chunks the exported UNet takes: a fixed token axis (exports made before long
    prompts) holds exactly its length's worth; a dynamic one, its range's maximum."""
    (hidden,) = [t for t in unet.inputs if t.name == "encoder_hidden_states"]
    tokens = hidden.shape[1]
    if isinstance(tokens, str):
        return unet.axes[tokens].max // TEXT_LENGTH
    return tokens // TEXT_LENGTH
