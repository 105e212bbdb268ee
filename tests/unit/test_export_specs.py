"""Specs: ranges, profiles, dynamic axes, JSON round trips, and sample inputs against the model."""

from __future__ import annotations

import pytest
import torch

from textinv.errors import InvalidInputError
from textinv_export.modules import export_module
from textinv_export.samples import sample_inputs
from textinv_export.specs import (
    Component,
    ComponentSpec,
    ModelDims,
    Range,
    ShapeRanges,
    component_specs,
)

SD15 = ModelDims(
    text_width=768,
    cross_attention_dim=768,
    unet_in_channels=4,
    unet_out_channels=4,
    latent_channels=4,
    image_channels=3,
    unet_levels=4,
    vae_scale_factor=8,
)


def test_range_parse_accepts_triples_and_single_values() -> None:
    assert Range.parse("1:2:4") == Range(1, 2, 4)
    assert Range.parse("3") == Range(3, 3, 3)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("4:2:1", "MIN 4 > MAX 1"), ("1:5:4", "OPT 5"), ("a:b:c", "'a:b:c'"), ("1:2", "'1:2'")],
)
def test_range_parse_names_the_bad_value(text: str, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        Range.parse(text, "batch sizes")


def test_resolutions_must_be_multiples_of_8() -> None:
    with pytest.raises(InvalidInputError, match="resolution 500 .* multiple of 8"):
        ShapeRanges(Range(1, 1, 1), Range(256, 500, 512))


def test_sd15_resolution_must_fit_the_unet_downsampling() -> None:
    with pytest.raises(InvalidInputError, match="520 .* multiple of 64"):
        component_specs(SD15, ShapeRanges(Range(1, 1, 1), Range(512, 520, 768)))


def test_sd15_profiles_follow_the_ranges() -> None:
    specs = component_specs(SD15, ShapeRanges(Range(1, 2, 4), Range(256, 512, 768)))
    unet = specs[Component.UNET].profile
    # Guidance doubles the opt and max batch of the text encoder and UNet, not the min.
    assert unet["sample"].min == (1, 4, 32, 32)
    assert unet["sample"].opt == (4, 4, 64, 64)
    assert unet["sample"].max == (8, 4, 96, 96)
    assert unet["timestep"].max == (8,)
    # Long prompts: 1 to 3 chunks (the default) of 77 tokens, each chunk a text-encoder row.
    assert unet["encoder_hidden_states"].min == (1, 77, 768)
    assert unet["encoder_hidden_states"].opt == (4, 77, 768)
    assert unet["encoder_hidden_states"].max == (8, 231, 768)
    assert specs[Component.TEXT_ENCODER].profile["inputs_embeds"].opt == (4, 77, 768)
    assert specs[Component.TEXT_ENCODER].profile["inputs_embeds"].max == (24, 77, 768)
    assert specs[Component.VAE_DECODER].profile["latents"].max == (4, 4, 96, 96)
    assert specs[Component.VAE_ENCODER].profile["image"].min == (1, 3, 256, 256)
    assert specs[Component.UNET].dynamic_axes["sample"] == {0: "batch", 2: "height", 3: "width"}


def test_spec_json_round_trip_keeps_everything() -> None:
    for spec in component_specs(SD15, ShapeRanges()).values():
        again = ComponentSpec.from_dict(spec.to_dict())
        assert again == spec
        assert again.profile == spec.profile


def test_sample_inputs_outside_the_profile_are_refused() -> None:
    spec = component_specs(SD15, ShapeRanges(Range(1, 1, 2), Range(512, 512, 512)))[Component.UNET]
    with pytest.raises(InvalidInputError, match="batch 5 is outside"):
        sample_inputs(spec, batch=5)


def test_every_module_returns_what_its_spec_declares(tiny_model) -> None:
    dims = ModelDims.of(tiny_model)
    specs = component_specs(dims, ShapeRanges(Range(1, 2, 3), Range(32, 64, 96)))
    for component, spec in specs.items():
        inputs = sample_inputs(spec, batch=3, height=32, width=96, seed=1)
        for tensor in spec.inputs:
            assert str(inputs[tensor.name].dtype) == f"torch.{tensor.dtype}"
        with torch.no_grad():
            outputs = export_module(component, tiny_model)(*inputs.values())
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        assert len(outputs) == len(spec.outputs)
        assert all(out.shape[0] == 3 for out in outputs)
        # What a caller allocates before the run (device I/O binding) is what the module returns.
        shapes = spec.output_shapes({name: tuple(t.shape) for name, t in inputs.items()})
        assert [shapes[t.name] for t in spec.outputs] == [tuple(o.shape) for o in outputs]
    unet_inputs = sample_inputs(specs[Component.UNET], batch=3, height=32, width=96)
    assert unet_inputs["sample"].shape == (3, 4, 32 // dims.vae_scale_factor, 96 // 2)


def test_prompt_chunks_set_the_token_axis_and_old_manifests_read_as_one_chunk() -> None:
    one = component_specs(SD15, ShapeRanges(prompt_chunks=1))[Component.UNET]
    assert one.profile["encoder_hidden_states"].max[1] == 77
    assert component_specs(SD15, ShapeRanges(prompt_chunks=8))[Component.UNET].axes[
        "tokens"
    ] == Range(77, 77, 616)
    # A manifest written before long prompts has no prompt_chunks: its graphs take one chunk.
    old = {"batch": "1:1:4", "resolution": "512:512:768"}
    assert ShapeRanges.from_dict(old).prompt_chunks == 1
    assert ShapeRanges.from_dict(ShapeRanges().to_dict()) == ShapeRanges()


@pytest.mark.parametrize("chunks", [0, 9])
def test_prompt_chunks_outside_1_to_8_are_refused(chunks: int) -> None:
    with pytest.raises(InvalidInputError, match=f"prompt chunks {chunks} must be between 1 and 8"):
        ShapeRanges(prompt_chunks=chunks)


@pytest.mark.parametrize("text", ["0", "-1", "two", ""])
def test_a_bad_prompt_chunks_field_in_a_manifest_names_it(text: str) -> None:
    with pytest.raises(InvalidInputError, match="prompt chunks .* whole number"):
        ShapeRanges.from_dict({"batch": "1", "resolution": "512", "prompt_chunks": text})
