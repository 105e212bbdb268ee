"""``--precision auto``: the processor's features read from cpuinfo text, and the precision picked
from them, on faked flag lists (issue 15)."""

from __future__ import annotations

import pytest
import torch

from textinv.hardware import (
    BF16_MIN_CHANNELS,
    CpuFeatures,
    count_physical_cores,
    cpu_features,
    parse_cpuinfo,
    physical_cores,
    resolve_model_precision,
    resolve_precision,
)
from textinv.testing import tiny_components
from textinv_client.choices import Precision

# Abridged /proc/cpuinfo of the two kinds of machine these tests run on.
XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile
"""
EPYC = """processor\t: 0
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse sse2 avx avx2 fma bmi2
"""
EPYC_GENOA = """processor\t: 0
model name\t: AMD EPYC 9B14
flags\t\t: fpu avx avx2 fma avx512f avx512bw avx512_bf16
"""


def features(text: str) -> CpuFeatures:
    name, flags = parse_cpuinfo(text)
    return CpuFeatures(name, flags, "AVX512")


def test_cpuinfo_names_the_processor_and_its_extensions() -> None:
    xeon, epyc = features(XEON), features(EPYC)
    assert xeon.name == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert xeon.instruction_sets == ("AVX2", "AVX-512", "AVX512-BF16", "AVX512-FP16", "AMX-BF16")
    assert epyc.instruction_sets == ("AVX2",)
    assert xeon.fast_bf16 and not epyc.fast_bf16
    assert "AMX-BF16" in xeon.describe() and "torch AVX512" in xeon.describe()
    assert parse_cpuinfo("") == ("", frozenset())


@pytest.mark.parametrize(
    ("text", "expected"),
    [(XEON, Precision.BF16), (EPYC_GENOA, Precision.BF16), (EPYC, Precision.FP32)],
)
def test_auto_picks_bf16_only_where_the_cpu_has_a_native_bf16_path(
    text: str, expected: Precision
) -> None:
    choice = resolve_precision(Precision.AUTO, "cpu", features(text))
    assert choice.precision is expected
    assert choice.reason.startswith("auto:")
    if expected is Precision.BF16:
        assert "BF16" in choice.reason  # names what it found


def test_auto_keeps_fp32_for_a_small_model_even_with_amx() -> None:
    wide = resolve_precision(Precision.AUTO, "cpu", features(XEON), model_channels=1280)
    small = resolve_precision(
        Precision.AUTO, "cpu", features(XEON), model_channels=BF16_MIN_CHANNELS - 1
    )
    assert wide.precision is Precision.BF16
    assert small.precision is Precision.FP32 and "small model" in small.reason


def test_an_explicit_precision_is_kept_whatever_the_cpu() -> None:
    for asked in (Precision.FP32, Precision.BF16, Precision.FP16):
        for text in (XEON, EPYC):
            choice = resolve_precision(asked, "cpu", features(text), model_channels=32)
            assert choice.precision is asked and choice.reason == "asked for"


def test_a_loaded_unet_is_resolved_on_its_device_with_its_width() -> None:
    unet = tiny_components()["unet"]  # 32/64 channels: small, fp32 under auto everywhere
    choice = resolve_model_precision(Precision.AUTO, unet)
    assert choice.precision is Precision.FP32
    assert resolve_model_precision(Precision.BF16, unet).precision is Precision.BF16


def test_this_machine_is_read_once_and_named() -> None:
    found = cpu_features()
    assert found is cpu_features()
    assert found.name and found.torch_capability == torch.backends.cpu.get_cpu_capability()


CPUINFO_SMT = "\n\n".join(
    f"processor\t: {cpu}\nphysical id\t: {cpu // 4}\ncore id\t\t: {cpu % 4 // 2}\nflags\t\t: avx2"
    for cpu in range(8)
)  # 2 sockets × 2 cores × 2 hyperthreads


def test_physical_cores_count_cores_not_hyperthreads() -> None:
    assert count_physical_cores(CPUINFO_SMT, set(range(8))) == 4
    assert count_physical_cores(CPUINFO_SMT, {0, 1}) == 1  # siblings of one core
    assert count_physical_cores(CPUINFO_SMT, {0, 2, 4}) == 3
    assert count_physical_cores("processor\t: 0\nflags\t: avx2", {0}) == 0  # no core ids
    assert physical_cores() >= 1
