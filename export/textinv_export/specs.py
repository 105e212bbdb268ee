"""One contract per exportable component (DESIGN decision 7).

Each ``ComponentSpec`` declares, once, its input and output names, dtypes, symbolic shapes (which
axes are dynamic) and the ``(min, opt, max)`` shape profile that follows from the deployment's
batch-size and resolution ranges. ONNX export, TensorRT engine building, parity checks and the
server's backends all read it; the manifest stores it as JSON, so a backend needs no torch to
learn a graph's contract.

Conventions, decided here for every reader:

- **Batch.** ``ShapeRanges.batch`` counts images per call. The text encoder and the UNet run the
  conditional and unconditional halves of classifier-free guidance in one batch, so their batch
  axis ranges over ``(min, 2·opt, 2·max)``; the VAE graphs use the image batch as it is.
- **Resolution.** ``ShapeRanges.resolution`` is an image side in pixels; height and width vary
  independently within it. Latent sides are ``pixels / vae_scale_factor``;
  every side must be a multiple of the model's ``pixel_multiple`` (64 for SD 1.5).
- **Timestep.** The UNet takes ``timestep float32[B]``: one timestep per sample, so a batcher may
  run requests that stand at different denoising steps together. Scheduler timesteps (integers)
  are cast to float by the caller; the UNet's sinusoidal projection is in float anyway.
- **Graph I/O dtypes do not depend on precision.** Inputs and outputs stay float32 (and int64)
  in fp16 graphs too; the casts live inside the graph.
- **VAE decoder** is the pure ``vae.decode(latents).sample``: the caller divides the UNet's
  latents by ``latent_scaling`` (recorded in the manifest) before decoding. Its output is in
  ``[-1, 1]`` (roughly), as diffusers returns it.
- **VAE encoder** returns ``latent_dist.parameters``: mean and log-variance concatenated on the
  channel axis (``2 × latent_channels``), so the caller chooses ``mean`` or a sample.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textinv.errors import InvalidInputError

if TYPE_CHECKING:  # torch is needed only by the builders below, never by the data classes.
    import torch
    from torch import nn

    from textinv.model import BaseModel

TEXT_LENGTH = 77  # CLIP's context: every SD 1.x/2.x prompt is padded to 77 tokens.
RESOLUTION_MULTIPLE = 8  # every image side a deployment declares is a multiple of 8


class Component(str, enum.Enum):
    TEXT_ENCODER = "text_encoder"
    UNET = "unet"
    VAE_DECODER = "vae_decoder"
    VAE_ENCODER = "vae_encoder"


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"


# A symbolic shape: ints are fixed sizes, strings name dynamic axes ("batch", "height", ...).
Dim = int | str
Shape = tuple[int, ...]


@dataclass(frozen=True)
class Range:
    """An inclusive ``(min, opt, max)`` range of one size; ``opt`` is what engines tune for."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if self.min < 1:
            raise InvalidInputError(f"range {self} must start at 1 or more, not {self.min}")
        if not self.min <= self.opt <= self.max:
            raise InvalidInputError(f"range {self} must satisfy MIN ≤ OPT ≤ MAX")

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    @classmethod
    def parse(cls, text: str, what: str = "range") -> Range:
        """``"1:2:4"`` → ``Range(1, 2, 4)``; ``"4"`` → ``Range(4, 4, 4)``."""
        parts = text.split(":")
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise InvalidInputError(f"{what} {text!r} is not MIN:OPT:MAX (three whole numbers)")
        low, opt, high = (int(p) for p in parts)
        if low > high:
            raise InvalidInputError(f"{what} {text!r} has MIN {low} > MAX {high}")
        if not low <= opt <= high:
            raise InvalidInputError(f"{what} {text!r} has OPT {opt} outside [{low}, {high}]")
        return cls(low, opt, high)

    def scaled(self, min_factor: int, factor: int) -> Range:
        return Range(self.min * min_factor, self.opt * factor, self.max * factor)

    def divided(self, divisor: int) -> Range:
        return Range(self.min // divisor, self.opt // divisor, self.max // divisor)


@dataclass(frozen=True)
class ShapeRanges:
    """What a deployment must serve: images per call and the image side in pixels."""

    batch: Range = Range(1, 1, 4)
    resolution: Range = Range(512, 512, 768)

    def __post_init__(self) -> None:
        for value in (self.resolution.min, self.resolution.opt, self.resolution.max):
            if value % RESOLUTION_MULTIPLE:
                raise InvalidInputError(
                    f"resolution {value} in {self.resolution} is not a multiple of "
                    f"{RESOLUTION_MULTIPLE}"
                )

    def to_dict(self) -> dict[str, str]:
        return {"batch": str(self.batch), "resolution": str(self.resolution)}

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> ShapeRanges:
        return cls(
            batch=Range.parse(data["batch"], "batch sizes"),
            resolution=Range.parse(data["resolution"], "resolutions"),
        )


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, dtype and symbolic shape."""

    name: str
    dtype: str  # a numpy dtype name: "float32" or "int64"
    shape: tuple[Dim, ...]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {axis: dim for axis, dim in enumerate(self.shape) if isinstance(dim, str)}

    def concrete(self, sizes: Mapping[str, int]) -> Shape:
        """The shape with each dynamic axis replaced by ``sizes[name]``."""
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(data["shape"]))


@dataclass(frozen=True)
class ShapeProfile:
    """The ``(min, opt, max)`` concrete shapes of one input, as a TensorRT profile takes them."""

    min: Shape
    opt: Shape
    max: Shape

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShapeProfile:
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


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
        profile's opt); they become this component's own units (latent cells or pixels)."""
        sizes = {"batch": batch}
        for axis, pixels in (("height", height), ("width", width)):
            if axis in self.axes:
                own = pixels // self.spatial_divisor if pixels is not None else None
                sizes[axis] = self.axes[axis].opt if own is None else own
        return sizes

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
            component=Component(data["component"]),
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

    @classmethod
    def of(cls, model: BaseModel) -> ModelDims:
        unet, vae = model.unet.config, model.vae.config
        return cls(
            text_width=model.text_width,
            cross_attention_dim=int(unet.cross_attention_dim),
            unet_in_channels=int(unet.in_channels),
            unet_out_channels=int(unet.out_channels),
            latent_channels=int(vae.latent_channels),
            image_channels=int(vae.in_channels),
            unet_levels=len(unet.block_out_channels),
            vae_scale_factor=model.vae_scale_factor,
        )

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be multiples of this: pixels per latent cell, times 2 for each time
        the UNet halves the latent sides (``levels - 1``): 64 for SD 1.5."""
        return self.vae_scale_factor * 2 ** (self.unet_levels - 1)


def component_specs(dims: ModelDims, ranges: ShapeRanges) -> dict[Component, ComponentSpec]:
    """Every component's spec for a model of ``dims`` deployed over ``ranges``."""
    check_resolutions(ranges, dims.pixel_multiple)
    images = ranges.batch
    guided = ranges.batch.scaled(1, 2)  # cond + uncond halves of classifier-free guidance
    latent = ranges.resolution.divided(dims.vae_scale_factor)
    pixels = ranges.resolution
    c_lat, c_img, d_text = dims.latent_channels, dims.image_channels, dims.text_width
    factor, multiple = dims.vae_scale_factor, dims.pixel_multiple
    f32, i64 = "float32", "int64"
    return {
        Component.TEXT_ENCODER: ComponentSpec(
            Component.TEXT_ENCODER,
            inputs=(
                TensorSpec("inputs_embeds", f32, ("batch", TEXT_LENGTH, d_text)),
                TensorSpec("eos_positions", i64, ("batch",)),
            ),
            outputs=(
                TensorSpec("last_hidden_state", f32, ("batch", TEXT_LENGTH, d_text)),
                TensorSpec("pooled_output", f32, ("batch", d_text)),
            ),
            axes={"batch": guided},
            latent_factor=factor,
            pixel_multiple=multiple,
        ),
        Component.UNET: ComponentSpec(
            Component.UNET,
            inputs=(
                TensorSpec("sample", f32, ("batch", dims.unet_in_channels, "height", "width")),
                TensorSpec("timestep", f32, ("batch",)),
                TensorSpec(
                    "encoder_hidden_states", f32, ("batch", TEXT_LENGTH, dims.cross_attention_dim)
                ),
            ),
            outputs=(
                TensorSpec("noise_pred", f32, ("batch", dims.unet_out_channels, "height", "width")),
            ),
            axes={"batch": guided, "height": latent, "width": latent},
            latent_factor=factor,
            pixel_multiple=multiple,
        ),
        Component.VAE_DECODER: ComponentSpec(
            Component.VAE_DECODER,
            inputs=(TensorSpec("latents", f32, ("batch", c_lat, "height", "width")),),
            outputs=(TensorSpec("image", f32, ("batch", c_img, "image_height", "image_width")),),
            axes={"batch": images, "height": latent, "width": latent},
            latent_factor=factor,
            pixel_multiple=multiple,
        ),
        Component.VAE_ENCODER: ComponentSpec(
            Component.VAE_ENCODER,
            inputs=(TensorSpec("image", f32, ("batch", c_img, "height", "width")),),
            outputs=(
                TensorSpec(
                    "latent_parameters", f32, ("batch", 2 * c_lat, "latent_height", "latent_width")
                ),
            ),
            axes={"batch": images, "height": pixels, "width": pixels},
            latent_factor=factor,
            pixel_multiple=multiple,
        ),
    }


def check_resolutions(ranges: ShapeRanges, multiple: int) -> None:
    """Every image side in the range must be a multiple of the model's ``multiple``."""
    for value in (ranges.resolution.min, ranges.resolution.opt, ranges.resolution.max):
        if value % multiple:  # a traced UNet assumes sides it can halve without remainders
            raise InvalidInputError(
                f"resolution {value} in {ranges.resolution} is not a multiple of {multiple}, "
                f"which this model's UNet needs (8 pixels per latent × 2^(levels-1))"
            )


# ---------------------------------------------------------------------------------------------
# The torch side: the module each spec exports, and inputs to drive it


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
    positions in ``[1, 77)``.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    sizes = spec.sizes(batch or spec.axes["batch"].opt, height, width)
    spec.check_call(sizes)
    tensors: dict[str, torch.Tensor] = {}
    for tensor in spec.inputs:
        shape = tensor.concrete(sizes)
        tensors[tensor.name] = _draw(tensor.name, shape, generator)
    return tensors


def _draw(name: str, shape: Shape, generator: torch.Generator) -> torch.Tensor:
    import torch

    if name == "eos_positions":
        return torch.randint(1, TEXT_LENGTH, shape, generator=generator, dtype=torch.int64)
    if name == "timestep":
        return torch.randint(0, 1000, shape, generator=generator).to(torch.float32)
    if name == "image":
        return torch.rand(shape, generator=generator) * 2 - 1
    return torch.randn(shape, generator=generator)


def export_module(component: Component, model: BaseModel) -> nn.Module:
    """The ``nn.Module`` whose ``forward(*inputs in spec order)`` returns the spec's outputs."""
    from textinv_export import modules

    builders: dict[Component, Callable[[BaseModel], nn.Module]] = {
        Component.TEXT_ENCODER: lambda m: modules.text_encoder_module(m),
        Component.UNET: lambda m: modules.UNetModule(m.unet),
        Component.VAE_DECODER: lambda m: modules.VaeDecoderModule(m.vae),
        Component.VAE_ENCODER: lambda m: modules.VaeEncoderModule(m.vae),
    }
    return builders[component](model).eval()
