"""optimum-onnx's ``ORTStableDiffusionPipeline`` behind JSON lines: the worker of ``optimum_peer``.

It runs under the benchmark's own virtual environment (optimum pins transformers below 4.58,
our core runs transformers 5), so it imports nothing from textinv: the standard library at the
top, and torch, numpy, diffusers, transformers, safetensors, optimum and onnxruntime inside the
functions that need them (so our venv can import this file for its tests).

Protocol, one JSON object a line; requests on stdin, answers on the channel (the original
stdout; everything else the libraries print goes to stderr):

- ``{"op": "load", "model", "scratch", "threads", "scheduler", "scheduler_config"}`` →
  ``{"info": {...}}``: optimum's own export (``from_pretrained(export=True)``) of a copy of the
  model that transformers 4.57 reads (``compatible_copy``), then the scheduler;
- ``{"op": "generate", "prompt", "steps", "guidance", "width", "height", "seeds"}`` →
  ``{"e2e_ms", "text_encoder_ms", "unet_step_ms", "vae_decode_ms", "images"}``, images as
  ``{"shape": [n, H, W, 3], "base64": uint8 bytes}``;
- ``{"op": "exit"}``: the worker ends. A failed request answers
  ``{"error": "Type: message", "traceback": ...}``; after a failed load the worker ends.
"""

from __future__ import annotations

import base64
import importlib
import importlib.metadata
import itertools
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

# Our ``Scheduler`` names → diffusers' class and its overrides, as
# ``textinv_server.schedulers`` builds them (a unit test keeps the two tables equal).
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp-2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    "pndm": ("PNDMScheduler", {}),
    "dpmpp-2m-sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
    ),
}
VERSIONS = ("optimum", "optimum-onnx", "onnxruntime", "diffusers", "transformers", "torch")
TEXT_PREFIX = "text_model."  # transformers 4's CLIPTextModel keys; transformers 5 drops it


def main() -> int:
    channel = protocol_channel()
    state: dict[str, Any] = {}
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "exit":
            return 0
        try:
            answer = handle(request, state)
        except Exception as error:  # the parent raises it as OptimumWorkerError
            answer = {
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(),
            }
        channel.write(json.dumps(answer) + "\n")
        channel.flush()
        if "error" in answer and request["op"] == "load":
            return 1
    return 0


def protocol_channel() -> TextIO:
    """The original stdout, for answers only; file descriptor 1 becomes stderr, so whatever the
    libraries print (export warnings, progress bars) cannot break a line of the protocol."""
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def handle(request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    if request["op"] == "load":
        state["pipeline"], info = load_pipeline(request)
        return {"info": info}
    if request["op"] == "generate":
        if "pipeline" not in state:
            raise RuntimeError("generate before load")
        return generate(state["pipeline"], request)
    raise ValueError(f"unknown op {request['op']!r}")


def load_pipeline(request: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """optimum's export and sessions, its pipeline with our scheduler; the info the report keeps."""
    import torch
    from optimum.onnxruntime import ORTStableDiffusionPipeline, modeling_diffusion

    threads = int(request["threads"])
    if threads > 0:  # the scheduler and the noise run in torch
        torch.set_num_threads(threads)
    folder = compatible_copy(Path(request["model"]), Path(request["scratch"]))
    check_text_encoder_loads(folder)
    export_s: list[float] = []
    original_export = modeling_diffusion.main_export

    def timed_export(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original_export(*args, **kwargs)
        finally:
            export_s.append(time.perf_counter() - start)

    modeling_diffusion.main_export = timed_export  # from_pretrained calls it by this name
    start = time.perf_counter()
    try:
        # a str, not a Path: optimum infers the library ("diffusers") only from a str
        pipeline = ORTStableDiffusionPipeline.from_pretrained(
            str(folder), export=True, session_options=session_options(threads)
        )
    finally:
        modeling_diffusion.main_export = original_export
    total_s = time.perf_counter() - start
    # After construction: StableDiffusionPipeline's constructor rewrites the config of the
    # scheduler it gets (clip_sample, steps_offset); this one runs as the caller's config says.
    pipeline.scheduler = make_scheduler(request["scheduler"], request["scheduler_config"])
    pipeline.set_progress_bar_config(disable=True)
    install_timers(pipeline)
    info = {"export_s": sum(export_s), "load_s": total_s - sum(export_s)}
    return pipeline, info | session_info(pipeline)


def session_options(threads: int) -> Any:
    """onnxruntime's defaults, with ``intra_op_num_threads`` where ``threads`` > 0."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    return options


def session_info(pipeline: Any) -> dict[str, Any]:
    """The versions, the UNet session's providers and options, the scheduler as it runs."""
    session = pipeline.unet.session
    options = session.get_session_options()
    return {
        "versions": {name: importlib.metadata.version(name) for name in VERSIONS},
        "providers": session.get_providers(),
        "session_options": {
            "graph_optimization_level": str(options.graph_optimization_level),
            "intra_op_num_threads": options.intra_op_num_threads,  # 0: onnxruntime picks
            "inter_op_num_threads": options.inter_op_num_threads,
            "execution_mode": str(options.execution_mode),
        },
        "use_io_binding": bool(pipeline.unet.use_io_binding),
        "unet_inputs": {i.name: i.type for i in session.get_inputs()},
        "scheduler_config": json.loads(pipeline.scheduler.to_json_string()),
    }


def make_scheduler(name: str, config: dict[str, Any]) -> Any:
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known: {sorted(SCHEDULERS)}")
    class_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(dict(config), **overrides)


def compatible_copy(folder: Path, scratch: Path) -> Path:
    """``folder`` as transformers 4.57 reads it, in ``scratch/model``: files linked, except the
    text encoder's weights, whose keys get back transformers 4's ``text_model.`` prefix, and a
    tokenizer saved by transformers 5 (``tokenizer.json`` only, no ``vocab.json``) named
    ``CLIPTokenizerFast`` in ``model_index.json`` (4.57's slow ``CLIPTokenizer`` cannot read it)."""
    target = scratch / "model"
    target.mkdir(parents=True)
    for entry in folder.iterdir():
        if entry.name not in ("model_index.json", "text_encoder"):
            (target / entry.name).symlink_to(entry.resolve())
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    for name in ("tokenizer", "tokenizer_2"):
        saved = folder / name
        if (saved / "tokenizer.json").is_file() and not (saved / "vocab.json").is_file():
            index[name] = ["transformers", "CLIPTokenizerFast"]
    (target / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    if (folder / "text_encoder").is_dir():
        prefixed_text_encoder(folder / "text_encoder", target / "text_encoder")
    return target


def prefixed_text_encoder(source: Path, target: Path) -> None:
    """The text encoder's files; ``*.safetensors`` rewritten with prefixed keys (and the shard
    index's weight map) where they lack the prefix, the rest linked."""
    from safetensors.torch import load_file, save_file

    target.mkdir()
    for entry in source.iterdir():
        if entry.suffix == ".safetensors":
            tensors = load_file(entry)
            save_file(
                {prefixed(key): value for key, value in tensors.items()},
                target / entry.name,
                {"format": "pt"},
            )
        elif entry.name.endswith(".safetensors.index.json"):
            shards = json.loads(entry.read_text(encoding="utf-8"))
            shards["weight_map"] = {prefixed(k): v for k, v in shards["weight_map"].items()}
            (target / entry.name).write_text(json.dumps(shards), encoding="utf-8")
        else:
            (target / entry.name).symlink_to(entry.resolve())


def prefixed(key: str) -> str:
    return key if key.startswith(TEXT_PREFIX) else TEXT_PREFIX + key


def check_text_encoder_loads(folder: Path) -> None:
    """Raise where transformers would leave text encoder weights at random (it only warns)."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    library, class_name = index["text_encoder"]
    model_class = getattr(importlib.import_module(library), class_name)
    _, loading = model_class.from_pretrained(folder / "text_encoder", output_loading_info=True)
    if loading["missing_keys"] or loading["mismatched_keys"]:
        raise ValueError(f"the text encoder's weights do not load under transformers 4: {loading}")


def install_timers(pipeline: Any) -> None:
    """Record on ``pipeline.textinv_marks`` each call's clock marks: around ``encode_prompt``
    and ``vae.decode``, and the end of ``prepare_latents`` (the first step's start)."""
    marks: dict[str, list[float]] = {"text": [], "latents": [], "vae": []}
    pipeline.textinv_marks = marks

    def timed(owner: Any, method: str, key: str) -> None:
        original = getattr(owner, method)

        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                marks[key] += [start, time.perf_counter()]

        setattr(owner, method, run)

    timed(pipeline, "encode_prompt", "text")
    timed(pipeline, "prepare_latents", "latents")
    timed(pipeline.vae, "decode", "vae")


def generate(pipeline: Any, request: dict[str, Any]) -> dict[str, Any]:
    """One pipeline call, timed around the call itself; image i from its own CPU generator
    seeded ``seeds[i]`` (diffusers draws the initial latents with it, as in our runners)."""
    import numpy as np
    import torch

    marks = pipeline.textinv_marks
    for each in marks.values():
        each.clear()
    step_ends: list[float] = []

    def on_step(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        step_ends.append(time.perf_counter())
        return kwargs

    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in request["seeds"]]
    start = time.perf_counter()
    output = pipeline(
        request["prompt"],
        num_inference_steps=int(request["steps"]),
        guidance_scale=float(request["guidance"]),
        width=int(request["width"]),
        height=int(request["height"]),
        num_images_per_prompt=len(generators),
        generator=generators,
        callback_on_step_end=on_step,
    )
    e2e_ms = (time.perf_counter() - start) * 1000
    images = np.stack([np.asarray(image.convert("RGB")) for image in output.images])
    steps = [marks["latents"][-1], *step_ends]  # uint8 images above: [n, H, W, 3]
    return {
        "e2e_ms": e2e_ms,
        "text_encoder_ms": span_ms(marks["text"]),
        "unet_step_ms": [(b - a) * 1000 for a, b in itertools.pairwise(steps)],
        "vae_decode_ms": span_ms(marks["vae"]),
        "images": {
            "shape": list(images.shape),
            "base64": base64.b64encode(images.tobytes()).decode(),
        },
    }


def span_ms(marks: list[float]) -> float:
    """The summed durations of ``[start, end, start, end, ...]``, in milliseconds."""
    return sum(end - start for start, end in zip(marks[::2], marks[1::2], strict=True)) * 1000


if __name__ == "__main__":
    sys.exit(main())
