"""One contract per exportable component (DESIGN decision 7).

Each ``ComponentSpec`` declares, once, its input and output names, dtypes, symbolic shapes (which
axes are dynamic) and the ``(min, opt, max)`` shape profile that follows from the deployment's
batch-size and resolution ranges. ONNX export, TensorRT engine building, parity checks and the
server's backends all read it; the manifest stores it as JSON, so a backend needs no torch to
learn a graph's contract. The shapes and ranges it is made of live in ``textinv_export.shapes``
(re-exported here); the torch side, in ``textinv_export.modules`` (the module each spec exports)
and ``textinv_export.samples`` (seeded inputs to drive it).

Conventions, decided here for every reader:

- **Batch.** ``ShapeRanges.batch`` counts images per call. The text encoder and the UNet run the
  conditional and unconditional halves of classifier-free guidance in one batch, so their batch
  axis ranges over ``(min, 2·opt, 2·max)``; the VAE graphs use the image batch as it is.
- **Resolution.** ``ShapeRanges.resolution`` is an image side in pixels; height and width vary
  independently within it. Latent sides are ``pixels / vae_scale_factor``;
  every side must be a multiple of the model's ``pixel_multiple`` (64 for SD 1.5).
- **Prompt tokens.** The text encoder takes 77-token rows; a long prompt's chunks are rows of its
  batch (so its batch axis reaches ``2·max·prompt_chunks``). The UNet's ``encoder_hidden_states``
  has a dynamic ``tokens`` axis of ``77 · chunks``, from 77 to ``77 · prompt_chunks``.
- **Timestep.** The UNet takes ``timestep float32[B]``: one timestep per sample, so a batcher may
  run requests that stand at different denoising steps together. Scheduler timesteps (integers)
  are cast to float by the caller; the UNet's sinusoidal projection is in float anyway.
- **Graph I/O dtypes do not depend on precision.** Inputs and outputs stay float32 (and int64)
  in fp16 graphs too; the casts live inside the graph.
- **VAE decoder** is the pure ``vae.decode(latents).sample``: the caller divides the UNet's
  latents by ``latent_scaling`` (recorded in the manifest) before decoding. Its output is in
  ``[-1, 1]`` (roughly), as diffusers returns it.
- **SDXL** has a second text-encoder graph (``text_encoder_2``). Both SDXL text encoders return
  ``hidden_states``: the layer ``clip_skip`` before the penultimate one, before the final layer
  norm (the caller concatenates the two along the width); the second also returns
  ``text_embeds``, its pooled projection. The SDXL UNet takes ``text_embeds [B, P]`` and
  ``time_ids [B, 6]`` after ``encoder_hidden_states``.
- **VAE encoder** returns ``latent_dist.parameters``: mean and log-variance concatenated on the
  channel axis (``2 × latent_channels``), so the caller chooses ``mean`` or a sample.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textinv.errors import InvalidInputError
from textinv_export.choices import SDXL_ONLY, Component, Precision
from textinv_export.shapes import (
    RESOLUTION_MULTIPLE,
    Dim,
    Range,
    Shape,
    ShapeProfile,
    ShapeRanges,
    TensorSpec,
    check_sides,
)

if TYPE_CHECKING:  # the specs never need torch; ``ModelDims.of`` reads a loaded model's configs.
    from textinv.model import BaseModel

# Re-exported: the server, the benchmarks and the tests import these names from here.
__all__ = [
    "RESOLUTION_MULTIPLE",
    "TEXT_LENGTH",
    "Component",
    "ComponentSpec",
    "Dim",
    "ModelDims",
    "Precision",
    "Range",
    "Shape",
    "ShapeProfile",
    "ShapeRanges",
    "TensorSpec",
    "check_resolutions",
    "component_specs",
]

TEXT_LENGTH = 77  # CLIP's context: every SD 1.x/2.x prompt is padded to 77 tokens.
F32, I64 = "float32", "int64"  # graph I/O dtypes, as numpy names them
# The text encoder's per-row layer choice; exports made before it lack the input.
CLIP_SKIP = "clip_skip"
# SDXL's micro-conditioning: original (height, width), crop (top, left), target (height, width).
SDXL_TIME_IDS = 6


@dataclass(frozen=True)
class ComponentSpec:
    """A component's whole contract: names, dtypes, dynamic axes and per-axis ranges.

    ``axes`` maps each dynamic axis name to its ``Range``; ``profile`` turns it into concrete
    ``(min, opt, max)`` shapes per input. ``latent_factor`` is pixels per latent cell (the VAE's
    ``vae_scale_factor``, 8 for SD); ``pixel_multiple`` is the step of image sides the graphs
    accept (the UNet also halves latent sides ``levels - 1`` times: 64 for SD 1.5).
    """

    component: Component
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    axes: Mapping[str, Range]
    latent_factor: int = 8
    pixel_multiple: int = 64

    @property
    def name(self) -> str:
        return self.component.value

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s ``dynamic_axes``: tensor name → {axis: axis name}."""
        return {t.name: t.dynamic_axes for t in (*self.inputs, *self.outputs) if t.dynamic_axes}

    @property
    def profile(self) -> dict[str, ShapeProfile]:
        """Input name → its ``(min, opt, max)`` shapes."""
        return {
            t.name: ShapeProfile(
                t.concrete({a: r.min for a, r in self.axes.items()}),
                t.concrete({a: r.opt for a, r in self.axes.items()}),
                t.concrete({a: r.max for a, r in self.axes.items()}),
            )
            for t in self.inputs
        }

    def sizes(
        self, batch: int, height: int | None = None, width: int | None = None
    ) -> dict[str, int]:
        """Axis sizes for one call. ``height``/``width`` are image sides in pixels (default: the
        profile's opt); they become this component's own units (latent cells or pixels). Every
        other axis is at its opt."""
        sizes = {axis: rng.opt for axis, rng in self.axes.items()}  # "tokens": one chunk
        sizes["batch"] = batch
        for axis, pixels in (("height", height), ("width", width)):
            if axis in self.axes and pixels is not None:
                sizes[axis] = pixels // self.spatial_divisor
        return sizes

    def output_shapes(self, input_shapes: Mapping[str, Shape]) -> dict[str, Shape]:
        """Each output's concrete shape for a call with these input shapes (so a caller can
        allocate the outputs before the run, as device-side I/O binding needs)."""
        sizes: dict[str, int] = {}
        for tensor in self.inputs:
            for dim, size in zip(tensor.shape, input_shapes[tensor.name], strict=True):
                if isinstance(dim, str):
                    sizes[dim] = int(size)
        if "height" in sizes:  # the axes derived from the sides: pixels ↔ latent cells
            factor = self.latent_factor
            for side in ("height", "width"):
                sizes[f"image_{side}"] = sizes[side] * factor  # vae_decoder: latents → pixels
                sizes[f"latent_{side}"] = sizes[side] // factor  # vae_encoder: pixels → latents
        return {tensor.name: tensor.concrete(sizes) for tensor in self.outputs}

    @property
    def spatial_divisor(self) -> int:
        """Pixels per unit of this component's ``height``/``width`` axes."""
        return 1 if self.component is Component.VAE_ENCODER else self.latent_factor

    def check_call(self, sizes: Mapping[str, int]) -> None:
        """Raise ``InvalidInputError`` if a call's axis sizes fall outside the profile."""
        for axis, size in sizes.items():
            rng = self.axes.get(axis)
            if rng is not None and not rng.min <= size <= rng.max:
                raise InvalidInputError(
                    f"{self.name}: {axis} {size} is outside the exported range {rng}"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.name,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "axes": {name: str(rng) for name, rng in self.axes.items()},
            "latent_factor": self.latent_factor,
            "pixel_multiple": self.pixel_multiple,
            "profile": {name: p.to_dict() for name, p in self.profile.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComponentSpec:
        return cls(
            component=Component.parse(data["component"]),
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            axes={name: Range.parse(text, name) for name, text in data["axes"].items()},
            latent_factor=int(data["latent_factor"]),
            pixel_multiple=int(data["pixel_multiple"]),
        )


# ---------------------------------------------------------------------------------------------
# Building the specs of one model


@dataclass(frozen=True)
class ModelDims:
    """The few sizes of a base model that the specs need (read from its configs)."""

    text_width: int  # D of the text encoder (768 for SD 1.x)
    cross_attention_dim: int  # D of the UNet's encoder_hidden_states
    unet_in_channels: int  # 4
    unet_out_channels: int  # 4
    latent_channels: int  # the VAE's, 4
    image_channels: int  # 3
    unet_levels: int  # len(block_out_channels): each level but the last halves the sides
    vae_scale_factor: int  # pixels per latent cell: 8 for SD, 2 for the tiny test model
    # SDXL: the second text encoder's width and its projection's (0: no second encoder).
    text_width_2: int = 0
    pooled_width: int = 0

    @property
    def is_sdxl(self) -> bool:
        return self.text_width_2 > 0

    @classmethod
    def of(cls, model: BaseModel) -> ModelDims:
        unet, vae = model.unet.config, model.vae.config
        second = model.text_encoder_2
        return cls(
            text_width=model.text_width,
            cross_attention_dim=int(unet.cross_attention_dim),
            unet_in_channels=int(unet.in_channels),
            unet_out_channels=int(unet.out_channels),
            latent_channels=int(vae.latent_channels),
            image_channels=int(vae.in_channels),
            unet_levels=len(unet.block_out_channels),
            vae_scale_factor=model.vae_scale_factor,
            text_width_2=0 if second is None else int(second.config.hidden_size),
            pooled_width=0 if second is None else int(second.config.projection_dim),
        )

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be multiples of this: pixels per latent cell, times 2 for each time
        the UNet halves the latent sides (``levels - 1``): 64 for SD 1.5."""
        return self.vae_scale_factor * 2 ** (self.unet_levels - 1)


def component_specs(dims: ModelDims, ranges: ShapeRanges) -> dict[Component, ComponentSpec]:
    """Every component's spec for a model of ``dims`` deployed over ``ranges``."""
    check_resolutions(ranges, dims.pixel_multiple)
    images, pixels = ranges.batch, ranges.resolution
    guided = ranges.batch.scaled(1, 2)  # cond + uncond halves of classifier-free guidance
    latent = ranges.resolution.divided(dims.vae_scale_factor)
    chunks = ranges.prompt_chunks
    # Each 77-token chunk of a long prompt is one text-encoder row; the UNet gets them joined.
    chunk_rows = Range(guided.min, guided.opt, guided.max * chunks)
    tokens = Range(TEXT_LENGTH, TEXT_LENGTH, TEXT_LENGTH * chunks)
    axes = {
        Component.TEXT_ENCODER: {"batch": chunk_rows},
        Component.TEXT_ENCODER_2: {"batch": chunk_rows},
        Component.UNET: {"batch": guided, "height": latent, "width": latent, "tokens": tokens},
        Component.VAE_DECODER: {"batch": images, "height": latent, "width": latent},
        Component.VAE_ENCODER: {"batch": images, "height": pixels, "width": pixels},
    }
    return {
        component: ComponentSpec(
            component,
            *_TENSORS[component](dims),
            axes=axes[component],
            latent_factor=dims.vae_scale_factor,
            pixel_multiple=dims.pixel_multiple,
        )
        for component in Component
        if dims.is_sdxl or component not in SDXL_ONLY
    }


def check_resolutions(ranges: ShapeRanges, multiple: int) -> None:
    """Every image side in the range must be a multiple of the model's ``multiple``."""
    # A traced UNet assumes sides it can halve without remainders.
    why = ", which this model's UNet needs (8 pixels per latent × 2^(levels-1))"
    check_sides(ranges.resolution, multiple, why)


# Each component's graph tensors: (inputs in call order, outputs), from the model's sizes.
Tensors = tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]


def _text_encoder_tensors(dims: ModelDims) -> Tensors:
    width = dims.text_width
    if dims.is_sdxl:
        return (
            (
                TensorSpec("inputs_embeds", F32, ("batch", TEXT_LENGTH, width)),
                TensorSpec(CLIP_SKIP, I64, ("batch",)),
            ),
            (TensorSpec("hidden_states", F32, ("batch", TEXT_LENGTH, width)),),
        )
    return (
        (
            TensorSpec("inputs_embeds", F32, ("batch", TEXT_LENGTH, width)),
            TensorSpec("eos_positions", I64, ("batch",)),
            # Per row, how many final layers to skip (0: the last layer's hidden states).
            TensorSpec(CLIP_SKIP, I64, ("batch",)),
        ),
        (
            TensorSpec("last_hidden_state", F32, ("batch", TEXT_LENGTH, width)),
            TensorSpec("pooled_output", F32, ("batch", width)),
        ),
    )


def _sdxl_text_encoder_2_tensors(dims: ModelDims) -> Tensors:
    width = dims.text_width_2
    return (
        (
            TensorSpec("inputs_embeds", F32, ("batch", TEXT_LENGTH, width)),
            TensorSpec("eos_positions", I64, ("batch",)),
            TensorSpec(CLIP_SKIP, I64, ("batch",)),
        ),
        (
            TensorSpec("hidden_states", F32, ("batch", TEXT_LENGTH, width)),
            TensorSpec("text_embeds", F32, ("batch", dims.pooled_width)),
        ),
    )


def _unet_tensors(dims: ModelDims) -> Tensors:
    added = (
        (
            TensorSpec("text_embeds", F32, ("batch", dims.pooled_width)),
            TensorSpec("time_ids", F32, ("batch", SDXL_TIME_IDS)),
        )
        if dims.is_sdxl
        else ()
    )
    return (
        (
            TensorSpec("sample", F32, ("batch", dims.unet_in_channels, "height", "width")),
            TensorSpec("timestep", F32, ("batch",)),
            TensorSpec("encoder_hidden_states", F32, ("batch", "tokens", dims.cross_attention_dim)),
            *added,
        ),
        (TensorSpec("noise_pred", F32, ("batch", dims.unet_out_channels, "height", "width")),),
    )


def _vae_decoder_tensors(dims: ModelDims) -> Tensors:
    return (
        (TensorSpec("latents", F32, ("batch", dims.latent_channels, "height", "width")),),
        (TensorSpec("image", F32, ("batch", dims.image_channels, "image_height", "image_width")),),
    )


def _vae_encoder_tensors(dims: ModelDims) -> Tensors:
    # mean and log-variance, concatenated on channels
    latent_parameters = ("batch", 2 * dims.latent_channels, "latent_height", "latent_width")
    return (
        (TensorSpec("image", F32, ("batch", dims.image_channels, "height", "width")),),
        (TensorSpec("latent_parameters", F32, latent_parameters),),
    )


_TENSORS: dict[Component, Callable[[ModelDims], Tensors]] = {
    Component.TEXT_ENCODER: _text_encoder_tensors,
    Component.TEXT_ENCODER_2: _sdxl_text_encoder_2_tensors,
    Component.UNET: _unet_tensors,
    Component.VAE_DECODER: _vae_decoder_tensors,
    Component.VAE_ENCODER: _vae_encoder_tensors,
}
