"""TensorRT helpers that need no GPU: cache keys, file names, the missing-TensorRT error."""

from __future__ import annotations

import pytest

from textinv_export.specs import (
    Component,
    ModelDims,
    Precision,
    Range,
    ShapeRanges,
    component_specs,
)
from textinv_export.tensorrt import (
    GpuIdentity,
    TensorRTUnavailableError,
    engine_cache_key,
    engine_filename,
    require_tensorrt,
    tensorrt_missing,
)

DIMS = ModelDims(768, 768, 4, 4, 4, 3, 4, 8)
H200 = GpuIdentity("NVIDIA H200", "9.0")


def _profile(batch_max: int = 4):
    ranges = ShapeRanges(Range(1, 1, batch_max), Range(512, 512, 768))
    return component_specs(DIMS, ranges)[Component.UNET].profile


def test_cache_key_changes_with_each_input() -> None:
    base = engine_cache_key("a" * 64, "10.8.0", H200, _profile(), Precision.FP16)
    variants = [
        engine_cache_key("b" * 64, "10.8.0", H200, _profile(), Precision.FP16),
        engine_cache_key("a" * 64, "10.9.0", H200, _profile(), Precision.FP16),
        engine_cache_key(
            "a" * 64, "10.8.0", GpuIdentity("NVIDIA A100", "8.0"), _profile(), Precision.FP16
        ),
        engine_cache_key(
            "a" * 64, "10.8.0", GpuIdentity("NVIDIA H200", "9.1"), _profile(), Precision.FP16
        ),
        engine_cache_key("a" * 64, "10.8.0", H200, _profile(batch_max=8), Precision.FP16),
        engine_cache_key("a" * 64, "10.8.0", H200, _profile(), Precision.FP32),
    ]
    assert len({base, *variants}) == 1 + len(variants)
    assert base == engine_cache_key("a" * 64, "10.8.0", H200, _profile(), Precision.FP16)


def test_engine_filename_carries_version_precision_and_key() -> None:
    name = engine_filename("unet", Precision.FP16, "10.8.0.43", "0123456789abcdef")
    assert name == "unet.fp16.trt10.8.0.43.0123456789ab.plan"


def test_bf16_only_from_ampere_on() -> None:
    assert H200.has_bf16 and GpuIdentity("NVIDIA A10", "8.6").has_bf16
    assert not GpuIdentity("Tesla T4", "7.5").has_bf16


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT and CUDA are present here")
def test_require_tensorrt_says_what_is_missing_and_how_to_install() -> None:
    with pytest.raises(TensorRTUnavailableError) as error:
        require_tensorrt()
    assert str(tensorrt_missing()) in str(error.value)
    assert "pip install 'textinv[gpu]'" in str(error.value)
