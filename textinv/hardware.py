"""What the processor can do, found at run time, and the precision ``auto`` picks from it.

Machines differ from one run to the next (an AMD EPYC with AVX2 only, an Intel Xeon with
AVX-512 and AMX-BF16), so nothing here is assumed: the CPU's feature flags come from
``/proc/cpuinfo`` (Linux), and PyTorch's own dispatch level
(``torch.backends.cpu.get_cpu_capability()``) is recorded beside them.

``auto`` picks bf16 on a CPU only when it has a native bf16 matrix path: AMX-BF16 tiles or the
AVX512_BF16 dot-product instructions, which oneDNN uses for PyTorch's bf16 convolutions and
matmuls. Without one, bf16 is emulated through fp32 and runs slower than fp32 itself, so ``auto``
keeps fp32 there and nothing gets slower. It also keeps fp32 for a narrow model (a UNet under
``BF16_MIN_CHANNELS`` wide: the shapes-world model, the test models), which ran slower in bf16
even with AMX. On CUDA it picks bf16 where the GPU supports it (Ampere and later) and fp16
elsewhere.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from textinv_client.choices import Precision

log = logging.getLogger(__name__)

# Instruction-set names, as reports print them, by the Linux cpuinfo flag that shows each.
ISA_FLAGS = (
    ("AVX2", "avx2"),
    ("AVX-512", "avx512f"),
    ("AVX512-BF16", "avx512_bf16"),
    ("AVX512-FP16", "avx512_fp16"),
    ("AMX-BF16", "amx_bf16"),
    ("AMX-FP16", "amx_fp16"),
)
# Flags that give bf16 a native matrix path (oneDNN's avx512_core_bf16 and avx512_core_amx).
FAST_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# A UNet narrower than this (its widest block's channels) stays fp32 under auto on a CPU: its
# GEMMs are too small for AMX tiles to pay for the per-op reorders and casts. Every Stable
# Diffusion family is 1280 wide; the shapes-world model and the test models are 32 to 64.
BF16_MIN_CHANNELS = 256


@dataclass(frozen=True)
class CpuFeatures:
    """The processor's name, its feature flags, and PyTorch's CPU dispatch level."""

    name: str
    flags: frozenset[str]
    torch_capability: str  # "AVX512", "AVX2", "DEFAULT", ...

    @property
    def instruction_sets(self) -> tuple[str, ...]:
        """The vector and matrix extensions found, by their usual names (``AVX2``, ``AMX-BF16``)."""
        return tuple(name for name, flag in ISA_FLAGS if flag in self.flags)

    @property
    def fast_bf16(self) -> bool:
        """Whether bf16 has a native matrix path here (AMX-BF16 or AVX512-BF16)."""
        return bool(self.flags & FAST_BF16_FLAGS)

    def describe(self) -> str:
        """``"Intel Xeon (AVX2, AVX-512, AMX-BF16; torch AVX512)"``, for logs and reports."""
        found = ", ".join(self.instruction_sets) or "no AVX2"
        return f"{self.name} ({found}; torch {self.torch_capability})"


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """The model name and the flags of the first processor in ``/proc/cpuinfo``'s text (x86
    spells the line ``flags``, arm64 ``Features``)."""
    name, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return name, flags


@cache
def cpuinfo_text() -> str:
    """``/proc/cpuinfo``, read once per process; empty where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


@cache
def cpu_features() -> CpuFeatures:
    """This machine's features, read once per process (not Linux: no flags, so auto keeps
    fp32)."""
    name, flags = parse_cpuinfo(cpuinfo_text())
    capability = torch.backends.cpu.get_cpu_capability()
    return CpuFeatures(name or platform.processor() or "unknown", flags, capability)


def physical_cores() -> int:
    """The physical cores this process may run on: onnxruntime's and PyTorch's default thread
    count (hyperthread siblings share one core's units). From the ``physical id``/``core id``
    pairs of ``/proc/cpuinfo`` over the process's CPU affinity; the affinity's size elsewhere."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    return count_physical_cores(cpuinfo_text(), allowed) or len(allowed) or os.cpu_count() or 1


def count_physical_cores(cpuinfo: str, allowed: set[int]) -> int:
    """Distinct ``(physical id, core id)`` pairs among the processors in ``allowed``; 0 when the
    text names none (a VM may list no core ids)."""
    cores: set[tuple[str, str]] = set()
    for block in cpuinfo.split("\n\n"):
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (line.partition(":") for line in block.splitlines())
        )
        processor, core = fields.get("processor"), fields.get("core id")
        if processor is None or core is None or not processor.isdigit():
            continue
        if int(processor) in allowed:
            cores.add((fields.get("physical id", "0"), core))
    return len(cores)


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run computes in, and why (for the log, GetServerInfo and the benches)."""

    precision: Precision
    reason: str

    def describe(self) -> str:
        return f"{self.precision.value} ({self.reason})"


def resolve_precision(
    precision: Precision,
    device: torch.device | str,
    features: CpuFeatures | None = None,
    *,
    model_channels: int | None = None,
) -> PrecisionChoice:
    """``precision`` itself unless it is ``auto``; ``auto`` follows the device (module docstring)
    and, on a CPU, the model's width (``model_channels``: its UNet's widest block; None when not
    known yet). ``features`` defaults to this machine's; tests pass a faked flag list."""
    precision = Precision.parse(precision)
    if precision is not Precision.AUTO:
        return PrecisionChoice(precision, "asked for")
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice(Precision.BF16, "auto: the GPU supports bf16")
        return PrecisionChoice(Precision.FP16, "auto: the GPU has no bf16, fp16 instead")
    if device.type != "cpu":
        return PrecisionChoice(Precision.FP32, f"auto: fp32 on {device.type}")
    features = features or cpu_features()
    if model_channels is not None and model_channels < BF16_MIN_CHANNELS:
        return PrecisionChoice(
            Precision.FP32,
            f"auto: fp32 for a small model (UNet {model_channels} < {BF16_MIN_CHANNELS} "
            "channels wide: bf16's casts would cost more than its matrix units save)",
        )
    if features.fast_bf16:
        found = ", ".join(sorted(n for n, f in ISA_FLAGS if f in features.flags & FAST_BF16_FLAGS))
        return PrecisionChoice(Precision.BF16, f"auto: the CPU has {found}")
    return PrecisionChoice(Precision.FP32, "auto: the CPU has no AMX-BF16 or AVX512-BF16")


def unet_width(unet: torch.nn.Module) -> int:
    """A diffusers UNet's widest block, in channels (1280 for every SD family)."""
    config: Any = unet.config  # diffusers' FrozenDict
    return int(max(config["block_out_channels"]))


def resolve_model_precision(precision: Precision, unet: torch.nn.Module) -> PrecisionChoice:
    """``resolve_precision`` for a loaded UNet, on its device and with its width."""
    device = next(unet.parameters()).device
    return resolve_precision(precision, device, model_channels=unet_width(unet))


def log_precision(choice: PrecisionChoice, what: str) -> None:
    """One INFO line naming what computes in which precision, and why."""
    log.info("%s computes in %s", what, choice.describe())
