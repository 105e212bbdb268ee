"""The machine behind ``textinv bench report``: the UNet's FLOPs counted from its graph, the
precision each runner ran in and the fraction of the measured peak it achieved (the peak itself:
``report_peak``), what the CPU (its instruction sets) and GPU are, and the library versions."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from textinv.cli.bench.generate_runners import REFERENCE
from textinv.cli.bench.generate_table import measured_rows
from textinv.cli.bench.report_peak import Peak
from textinv.hardware import CpuFeatures, cpu_features, resolve_precision
from textinv.testing import SD15_SHAPE
from textinv_client.choices import Precision

# Dense bf16 tensor-core peaks from the vendors' data sheets (SXM parts), TFLOP/s: a reference
# line only; the fractions divide by the measured peak.
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
CFG_ROWS = 2  # one denoising step runs the UNet on classifier-free guidance's two halves


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


def native_side(folder: str) -> int:
    """A model folder's native image side in pixels: the UNet's sample size × the VAE's factor."""
    return int(_unet_config(folder)["sample_size"]) * _vae_factor(folder)


def _vae_factor(model: str) -> int:
    config = json.loads((Path(model) / "vae" / "config.json").read_text())
    return int(2 ** (len(config["block_out_channels"]) - 1))


def data_sheet_peak(device: str) -> dict[str, Any] | None:
    """A known GPU's dense bf16 tensor-core figure from its data sheet, as a reference line
    beside the measured peaks (the fractions never use it); None on a CPU or an unknown GPU."""
    if not (device.startswith("cuda") and torch.cuda.is_available()):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, tflops in GPU_PEAK_TFLOPS.items():
        if key in name:
            return {"tflops": tflops, "source": f"{name}: dense bf16 tensor-core peak, data sheet"}
    return None


def runner_precisions(invert: dict[str, Any], generate: dict[str, Any]) -> dict[str, str]:
    """The precision each row ran in: ``generate["precision"]`` (``{"ours": "bf16", "diffusers":
    "fp32", ...}``, a runner's own name first) and ``invert["precision"]`` (one name, or one per
    method); where a result does not say, its settings' precision if that is a concrete one, else
    fp32."""
    found: dict[str, str] = {}
    stated = generate.get("precision") or {}
    weights = generate.get("settings", {}).get("weights")  # every runner's, where it was set
    for name in measured_rows(generate["runners"]):
        own = stated.get(name) or (None if name == REFERENCE else stated.get("ours"))
        found[f"generate/{name}"] = precision_name(own or weights)
    trained = invert.get("precision") or invert.get("settings", {}).get("precision")
    for method in ("textinv", "reference"):
        value = trained
        if isinstance(trained, dict):
            value = trained.get(method) or trained.get("ours")
        found[f"invert/{method}"] = precision_name(value)
    return found


def precision_name(value: object) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"`` from a precision's name or a torch dtype's text
    (``"torch.bfloat16"``); fp32 for anything else (None, ``"auto"`` unresolved, ``"tf32"``)."""
    text = str(value or "").lower()
    for name, spellings in (("bf16", ("bf16", "bfloat16")), ("fp16", ("fp16", "float16", "half"))):
        if any(spelling in text for spelling in spellings):
            return name
    return "fp32"


def achieved_tflops(
    invert: dict[str, Any], generate: dict[str, Any], flops: dict[str, Any]
) -> dict[str, tuple[str, float]]:
    """Each row's (precision, achieved UNet TFLOP/s): counted FLOPs over its median step time."""
    precisions = runner_precisions(invert, generate)
    step_flops = flops["unet_flops_per_denoising_step"]
    rows: dict[str, tuple[str, float]] = {}
    for name, row in measured_rows(generate["runners"]).items():
        key = f"generate/{name}"
        rows[key] = (precisions[key], step_flops / (row["unet_step"]["median_ms"] / 1000) / 1e12)
    for method in ("textinv", "reference"):
        key = f"invert/{method}"
        seconds = invert[method]["median_step_s"]
        rows[key] = (precisions[key], flops["unet_flops_per_train_step"] / seconds / 1e12)
    return rows


def utilization(
    achieved: dict[str, tuple[str, float]], peaks: Mapping[str, Peak]
) -> dict[str, Any]:
    """Each row's achieved TFLOP/s as a fraction of the peak of the precision it ran in
    (``report_peak.effective_peaks``: never above the peak, so never over 1)."""
    rows: dict[str, Any] = {}
    for name, (precision, tflops) in achieved.items():
        peak = peaks[precision]
        rows[name] = {
            "tflops": tflops,
            "precision": precision,
            "peak_tflops": peak.tflops,
            "peak_source": peak.source,
            "fraction_of_peak": tflops / peak.tflops,
        }
    return rows


# -- machine and versions -----------------------------------------------------------------------


def machine_info(device: str, features: CpuFeatures | None = None) -> dict[str, Any]:
    """The platform, the CPU (name, instruction sets, torch's dispatch level), the precision
    ``auto`` picks on ``device``, and the GPU where CUDA is there. ``features``: this machine's
    unless given (tests pass faked flags)."""
    features = features or cpu_features()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": features.name,
        "cpu_instruction_sets": list(features.instruction_sets),
        "cpu_fast_bf16": features.fast_bf16,
        "torch_cpu_capability": features.torch_capability,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "auto_precision": resolve_precision(Precision.AUTO, device, features).describe(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


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
