"""The machine behind ``textinv bench report``: the UNet's FLOPs counted from its graph, the
hardware's peak they are a fraction of, what the CPU and GPU are, and the library versions."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textinv.cli.bench.generate_table import measured_rows
from textinv.testing import SD15_SHAPE

# Dense bf16 tensor-core peaks from the vendors' data sheets (SXM parts), TFLOP/s.
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
# A CPU core with AVX2: 2 FMA units × 8 fp32 lanes × 2 FLOPs per cycle.
CPU_FLOPS_PER_CYCLE = 32
CPU_GHZ_GUESS = 2.5
CFG_ROWS = 2  # one denoising step runs the UNet on classifier-free guidance's two halves


@dataclass(frozen=True)
class Peak:
    tflops: float
    source: str  # where the figure comes from ("estimate: ..." when it is one)


# -- FLOPs and the hardware's peak --------------------------------------------------------------


def count_flops(
    model: str, side: int, *, train_batch: int, train_resolution: int
) -> dict[str, Any]:
    """The UNet's FLOPs, counted from its graph on the meta device (shapes only, no compute):
    one denoising step at the generate benchmark's size ``side`` (2 rows: CFG's two halves), and
    one training step (forward + backward to the inputs) at the invert benchmark's batch and size.
    """
    unet, factor = _meta_unet(model)
    step = _unet_flops(unet, factor, CFG_ROWS, side, backward=False)
    train = _unet_flops(unet, factor, train_batch, train_resolution, backward=True)
    return {
        "method": "torch.utils.flop_counter.FlopCounterMode, one UNet call on the meta device",
        "unet_step_rows": CFG_ROWS,
        "unet_step_resolution": side,
        "unet_flops_per_denoising_step": step,
        "train_batch": train_batch,
        "train_resolution": train_resolution,
        "unet_flops_per_train_step": train,
        "note": "UNet only (text encoder and VAE excluded); training counts forward + backward "
        "to the inputs (the UNet's weights are frozen)",
    }


def _meta_unet(model: str) -> tuple[Any, int]:
    """The model's UNet on the meta device (frozen), and its VAE's pixels per latent cell."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_unet_config(model)).requires_grad_(False)
    return unet, 8 if model == SD15_SHAPE else _vae_factor(model)


def _unet_flops(unet: Any, factor: int, rows: int, pixels: int, backward: bool) -> int:
    """FLOPs of one UNet call on ``rows`` samples of ``pixels``², with backward to the inputs."""
    from torch.utils.flop_counter import FlopCounterMode

    cells, config = pixels // factor, unet.config
    with torch.device("meta"):
        sample = torch.randn(rows, int(config.in_channels), cells, cells)  # [B, C, h, w]
        width = int(config.cross_attention_dim)
        hidden = torch.randn(rows, 77, width, requires_grad=backward)  # [B, T, D]
        t = torch.full((rows,), 500.0)
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(backward):
        out = unet(sample, t, encoder_hidden_states=hidden, return_dict=False)[0]
        if backward:
            out.float().square().mean().backward()
    return int(counter.get_total_flops())


def _unet_config(model: str) -> dict[str, Any]:
    if model == SD15_SHAPE:
        from textinv.testing import sd15_shape_components

        with torch.device("meta"):
            return dict(sd15_shape_components()["unet"].config)
    return json.loads((Path(model) / "unet" / "config.json").read_text())  # type: ignore[no-any-return]


def _vae_factor(model: str) -> int:
    config = json.loads((Path(model) / "vae" / "config.json").read_text())
    return int(2 ** (len(config["block_out_channels"]) - 1))


def peak_for(device: str, given: float | None) -> Peak:
    """The peak the fractions use: the caller's, a known GPU's bf16 figure, or a CPU estimate."""
    if given is not None:
        return Peak(given, "--peak-tflops")
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return Peak(tflops, f"{name}: dense bf16 tensor-core peak, data sheet")
        return Peak(float("nan"), f"{name}: unknown peak; pass --peak-tflops")
    threads = torch.get_num_threads()
    tflops = threads * CPU_GHZ_GUESS * CPU_FLOPS_PER_CYCLE / 1000
    return Peak(
        tflops,
        f"estimate: {threads} cores × {CPU_GHZ_GUESS} GHz × {CPU_FLOPS_PER_CYCLE} fp32 "
        "FLOP/cycle (AVX2 FMA); not measured",
    )


def utilization(
    invert: dict[str, Any], generate: dict[str, Any], flops: dict[str, Any], peak: Peak
) -> dict[str, Any]:
    """Achieved TFLOP/s of the UNet per runner and method, and the fraction of ``peak``."""
    step_flops = flops["unet_flops_per_denoising_step"]
    rows: dict[str, Any] = {}
    for name, row in measured_rows(generate["runners"]).items():
        tflops = step_flops / (row["unet_step"]["median_ms"] / 1000) / 1e12
        rows[f"generate/{name}"] = {"tflops": tflops, "fraction_of_peak": tflops / peak.tflops}
    for method in ("textinv", "reference"):
        seconds = invert[method]["median_step_s"]
        tflops = flops["unet_flops_per_train_step"] / seconds / 1e12
        rows[f"invert/{method}"] = {"tflops": tflops, "fraction_of_peak": tflops / peak.tflops}
    return rows


# -- machine and versions -----------------------------------------------------------------------


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in ("torch", "diffusers", "transformers", "onnxruntime", "numpy", "grpcio"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    found["textinv_commit"] = _git_commit()
    return found


def _git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"
