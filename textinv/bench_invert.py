"""``textinv bench invert``: our trainer's steps/s and peak memory next to the reference method's.

The reference is the method of diffusers' ``examples/textual_inversion/textual_inversion.py``,
reimplemented here step for step (the example itself needs torchvision, which does not import next
to the CPU torch build): the placeholder is added to the tokenizer, the *whole* token-embedding
table is trainable under AdamW, the original rows are copied back after every optimizer step, and
every step loads the images from disk, resizes them and runs the VAE encoder.

Each method runs in its own subprocess, so their peak resident memory (``ru_maxrss``) never mixes;
both build the same model with the same seed, use the same images, batch, resolution, prompts and
thread count, and are timed per optimizer step (median after ``--warmup`` steps), in wall-clock
seconds and in the process's CPU seconds. On a shared machine the CPU seconds are the figure that
load does not move (with one thread they equal the wall time of an idle machine); with more threads
they also count the threads' waiting.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULT_PREFIX = "BENCH_RESULT "
TOKEN = "<bench-concept>"
INIT = "toy"
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class InvertBenchSettings:
    """One ``bench invert`` run: both methods get exactly these."""

    model: str = "sd15-shape"
    resolution: int = 256
    batch_size: int = 1
    steps: int = 3  # timed steps per method
    warmup: int = 1  # untimed steps first
    vectors: int = 1
    images: str | None = None  # an image folder; None: 4 made up
    threads: int = 0  # torch threads; 0: torch's default
    device: str = "cpu"
    # fp32, or bf16/fp16 as diffusers' example runs them: frozen UNet and VAE in that dtype
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("resolution", "batch_size", "steps", "vectors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")


def add_invert_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    parser = bench_subparsers.add_parser(
        "invert",
        help="inversion steps/s and peak memory: ours vs diffusers' example method",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_bench)


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="sd15-shape", help="a diffusers model folder, or sd15-shape"
    )
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--vectors", type=int, default=1)
    parser.add_argument("--images", default=None, help="an image folder (default: 4 made up)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")


def settings_from_args(args: argparse.Namespace) -> InvertBenchSettings:
    return InvertBenchSettings(
        model=args.model,
        resolution=args.resolution,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        vectors=args.vectors,
        images=args.images,
        threads=args.threads,
        device=args.device,
        precision=args.precision,
    )


def measure_invert(settings: InvertBenchSettings) -> dict[str, Any]:
    """Both methods, each in its own subprocess; their results and the ratios, as plain data."""
    with tempfile.TemporaryDirectory(prefix="textinv-bench-") as scratch:
        images = settings.images or str(_make_images(Path(scratch) / "images"))
        results = {
            method: _run_worker(method, settings, images, Path(scratch) / method)
            for method in ("textinv", "reference")
        }
    ours, ref = results["textinv"], results["reference"]
    return {
        "model": settings.model,
        "resolution": settings.resolution,
        "batch_size": settings.batch_size,
        "timed_steps": settings.steps,
        "warmup_steps": settings.warmup,
        "threads": ours["threads"],
        "settings": asdict(settings),
        "textinv": ours,
        "reference": ref,
        "speedup": ours["steps_per_s"] / ref["steps_per_s"],
        "cpu_speedup": ours["steps_per_cpu_s"] / ref["steps_per_cpu_s"],
        "peak_rss_ratio": ours["peak_rss_mib"] / ref["peak_rss_mib"],
    }


def run_bench(args: argparse.Namespace) -> int:
    summary = measure_invert(settings_from_args(args))
    ours, ref = summary["textinv"], summary["reference"]
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"textinv bench invert: model {args.model}, {args.resolution} px, batch "
        f"{args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up, "
        f"{ours['threads']} threads, {args.device}, {args.precision}"
    )
    print(
        f"{'method':<11} {'steps/s':>9} {'s/step':>8} {'peak RSS MiB':>13} "
        f"{'after load MiB':>15} {'setup s':>8} {'min s/step':>11} {'CPU s/step':>11} "
        f"{'load avg':>8}"
    )
    for name, r in (("textinv", ours), ("reference", ref)):
        print(
            f"{name:<11} {r['steps_per_s']:>9.4f} {r['median_step_s']:>8.3f} "
            f"{r['peak_rss_mib']:>13.0f} {r['rss_after_load_mib']:>15.0f} {r['setup_s']:>8.2f} "
            f"{r['min_step_s']:>11.3f} {r['median_cpu_step_s']:>11.3f} "
            f"{(r['load_average'] or [math.nan])[0]:>8.2f}"
        )
    print(
        f"speedup (textinv / reference steps/s): {summary['speedup']:.2f}× wall-clock, "
        f"{summary['cpu_speedup']:.2f}× per CPU second; peak memory textinv / reference: "
        f"{summary['peak_rss_ratio']:.3f}"
    )
    return 0


def _run_worker(
    method: str, settings: InvertBenchSettings, images: str, scratch: Path
) -> dict[str, Any]:
    command = [sys.executable, "-m", "textinv.bench_invert", "--worker", method]
    for name, value in asdict(settings).items():
        if name != "images":
            command += [f"--{name.replace('_', '-')}", str(value)]
    command += ["--images", images, "--scratch", str(scratch)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    raise RuntimeError(f"the {method} worker failed (exit {done.returncode}):\n{tail}")


def _make_images(folder: Path, count: int = 4, side: int = 512) -> Path:
    """A few seeded 512 px images with shapes on a gradient (content does not change costs)."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        ramp = np.linspace(0, 255, side, dtype=np.float32)
        base = np.stack([ramp[None, :].repeat(side, 0), ramp[:, None].repeat(side, 1)], -1)
        pixels = np.concatenate([base, np.full((side, side, 1), 128.0, np.float32)], -1)
        image = Image.fromarray(pixels.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.integers(0, side - 64, 2)
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            draw.ellipse((int(x), int(y), int(x) + 96, int(y) + 96), fill=color)
        image.save(folder / f"image-{index}.png")
    return folder


# ---------------------------------------------------------------------------------------------
# Workers (one per subprocess)


def _rss_mib() -> float:
    """Current resident memory (Linux /proc), MiB."""
    try:
        with open("/proc/self/statm") as stream:
            pages = int(stream.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def _load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (Linux /proc), or [] elsewhere."""
    try:
        with open("/proc/loadavg") as stream:
            return [float(x) for x in stream.read().split()[:3]]
    except (OSError, ValueError):
        return []


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _load_model(name: str, device: str, method: str, precision: str) -> Any:
    """Ours: every module in ``precision`` (our trainer's vectors are their own fp32 parameter).
    The reference: the text encoder in fp32 (its whole table trains), UNet and VAE in
    ``precision``, as diffusers' example casts them under mixed precision."""
    import torch

    from textinv.model import load_base_model
    from textinv.testing import sd15_shape_model
    from textinv.trainer import PRECISIONS as DTYPES

    dtype = DTYPES[precision]
    if device == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # fp16 kernels are missing or slow on CPU (the trainer does this)
    whole = dtype if method == "textinv" else torch.float32
    if name == "sd15-shape":
        model = sd15_shape_model(dtype=whole)
        for module in (model.text_encoder, model.unet, model.vae):
            module.to(device)
    else:
        model = load_base_model(name, dtype=whole, device=device)
    if method == "reference":
        model.unet.to(dtype)
        model.vae.to(dtype)
    return model


def worker_textinv(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    from textinv.trainer import InvertConfig, iter_log, prepare

    out = Path(args.scratch) / "out"
    config = InvertConfig(
        images=args.images,
        token=TOKEN,
        init=INIT,
        out=str(out),
        model=args.model,
        vectors=args.vectors,
        steps=args.warmup + args.steps,
        batch_size=args.batch_size,
        grad_accum=1,
        resolution=args.resolution,
        checkpoint_every=0,
        seed=0,
        overwrite=True,
        device=args.device,
        precision=args.precision,
    )
    started = time.perf_counter()
    trainer = prepare(config, model)
    optimizer_step = trainer._optimizer_step
    cpu_s: list[float] = []

    def timed_step() -> float:
        cpu_started = time.process_time()
        loss = optimizer_step()
        cpu_s.append(time.process_time() - cpu_started)
        return loss

    trainer._optimizer_step = timed_step  # type: ignore[method-assign]
    trainer.train()
    total = time.perf_counter() - started
    seconds = [float(r["seconds"]) for r in iter_log(out)]
    setup = total - sum(seconds)
    return {"step_s": seconds, "cpu_step_s": cpu_s, "setup_s": setup}


def worker_reference(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """diffusers' textual_inversion.py, step for step (fp32, no accelerate, no torchvision)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from PIL import Image

    from textinv.templates import OBJECT_TEMPLATES

    device = torch.device(args.device)
    weight_dtype = model.unet.dtype  # the example's weight_dtype (see _load_model)
    mixed = weight_dtype != torch.float32
    started = time.perf_counter()
    tokenizer, text_encoder = model.tokenizer, model.text_encoder
    unet, vae = model.unet, model.vae
    placeholders = [TOKEN] + [f"{TOKEN}_{i}" for i in range(1, args.vectors)]
    tokenizer.add_tokens(placeholders)
    init_id = tokenizer.encode(INIT, add_special_tokens=False)[0]
    placeholder_ids = tokenizer.convert_tokens_to_ids(placeholders)
    if len(tokenizer) > text_encoder.get_input_embeddings().weight.shape[0]:
        text_encoder.resize_token_embeddings(len(tokenizer))
    token_embeds = text_encoder.get_input_embeddings().weight.data
    with torch.no_grad():
        for token_id in placeholder_ids:
            token_embeds[token_id] = token_embeds[init_id].clone()
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    text_encoder.get_input_embeddings().weight.requires_grad_(True)
    text_encoder.train()
    noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
    optimizer = torch.optim.AdamW(
        text_encoder.get_input_embeddings().parameters(),
        lr=2e-3,
        betas=(0.9, 0.999),
        weight_decay=1e-2,
        eps=1e-8,
    )
    orig_embeds_params = text_encoder.get_input_embeddings().weight.data.clone()
    paths = sorted(
        p for p in Path(args.images).iterdir() if p.is_file() and p.suffix.lower() != ".txt"
    )
    placeholder_string = " ".join(placeholders)
    size = args.resolution
    rng = random.Random(0)
    torch.manual_seed(0)

    def example(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        # TextualInversionDataset.__getitem__
        image: Image.Image = Image.open(paths[index % len(paths)])
        if image.mode != "RGB":
            image = image.convert("RGB")
        text = rng.choice(OBJECT_TEMPLATES).format(placeholder_string)
        input_ids = tokenizer(
            text,
            padding="max_length",
            truncation=True,
            max_length=tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids[0]
        img = np.array(image).astype(np.uint8)
        crop = min(img.shape[0], img.shape[1])
        h, w = img.shape[0], img.shape[1]
        img = img[(h - crop) // 2 : (h + crop) // 2, (w - crop) // 2 : (w + crop) // 2]
        image = Image.fromarray(img).resize((size, size), resample=Image.Resampling.BICUBIC)
        if rng.random() < 0.5:  # transforms.RandomHorizontalFlip(p=0.5)
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = (np.array(image).astype(np.uint8) / 127.5 - 1.0).astype(np.float32)
        return torch.from_numpy(array).permute(2, 0, 1), input_ids

    setup = time.perf_counter() - started
    step_s, cpu_s = [], []
    for step in range(args.warmup + args.steps):
        step_started = time.perf_counter()
        cpu_started = time.process_time()
        items = [example(step * args.batch_size + b) for b in range(args.batch_size)]
        pixel_values = torch.stack([p for p, _ in items]).to(device)
        input_ids = torch.stack([i for _, i in items]).to(device)
        latents = vae.encode(pixel_values.to(weight_dtype)).latent_dist.sample().detach()
        latents = latents * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        bsz = latents.shape[0]
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device
        ).long()
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        # accelerate runs the prepared text encoder under autocast with mixed precision
        with torch.autocast(device.type, dtype=weight_dtype, enabled=mixed):
            encoder_hidden_states = text_encoder(input_ids)[0].to(dtype=weight_dtype)
        model_pred = unet(noisy_latents, timesteps, encoder_hidden_states).sample
        if noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        # diffusers sizes this by len(tokenizer), which there equals the table's rows
        index_no_updates = torch.ones((orig_embeds_params.shape[0],), dtype=torch.bool)
        index_no_updates[min(placeholder_ids) : max(placeholder_ids) + 1] = False
        with torch.no_grad():
            weight = text_encoder.get_input_embeddings().weight
            weight[index_no_updates] = orig_embeds_params[index_no_updates]
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_s.append(time.perf_counter() - step_started)
        cpu_s.append(time.process_time() - cpu_started)
    return {"step_s": step_s, "cpu_step_s": cpu_s, "setup_s": setup}


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m textinv.bench_invert")
    parser.add_argument("--worker", choices=["textinv", "reference"], required=True)
    parser.add_argument("--scratch", required=True)
    _add_common_arguments(parser)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = _load_model(args.model, args.device, args.worker, args.precision)
    rss_after_load = _rss_mib()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run = worker_textinv if args.worker == "textinv" else worker_reference
    timing = run(args, model)
    timed = timing["step_s"][args.warmup :] or timing["step_s"]
    median = statistics.median(timed)
    cpu_timed = timing["cpu_step_s"][args.warmup :] or timing["cpu_step_s"]
    median_cpu = statistics.median(cpu_timed)
    result = {
        "method": args.worker,
        "threads": torch.get_num_threads(),
        "step_s": [round(s, 4) for s in timing["step_s"]],
        "median_step_s": median,
        "min_step_s": min(timed),
        "max_step_s": max(timed),
        "steps_per_s": 1.0 / median,
        "cpu_step_s": [round(s, 4) for s in timing["cpu_step_s"]],
        "median_cpu_step_s": median_cpu,
        "steps_per_cpu_s": 1.0 / median_cpu,
        "load_average": _load_average(),
        "setup_s": timing["setup_s"],
        "rss_after_load_mib": rss_after_load,
        "peak_rss_mib": _peak_rss_mib(),
    }
    if args.device.startswith("cuda"):
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
