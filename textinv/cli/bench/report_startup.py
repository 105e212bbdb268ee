"""Time to the first image from a cold process, for ``textinv bench report``: ``textinv serve``
against diffusers, on the same model folder, steps, size, seed, scheduler (DDIM) and precision.

- textinv: ``python -m textinv serve --model FOLDER --port 0`` as a real subprocess. The clock
  starts just before it is spawned. ``serving_s``: until the standard gRPC health check answers
  SERVING (the server announces its port once it reports SERVING, after loading the model and
  its warm-up generation; the check then confirms it). ``first_image_s``: until the first
  Generate has returned its PNG.
- diffusers: a fresh ``python -c`` process that imports only torch and diffusers. ``loaded_s``:
  until ``StableDiffusionPipeline.from_pretrained(FOLDER)`` (moved to the device) returns;
  ``first_image_s``: until one image, in the precision the server reported it computes in.

One measurement each: a cold start is what it is (a second one would find the files in the OS's
page cache, and the server goes first, so diffusers gets that warm cache). Both processes get
the same ``OMP_NUM_THREADS`` when a thread count is given. A side that fails is recorded with its
error, not raised.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from textinv_client import GenerateRequest, TextInvClient
from textinv_client.channel import ConnectionSettings
from textinv_client.choices import Scheduler
from textinv_client.health import check, health_stubs

PROMPT = "a photo of a red star"
SERVING_LINE = r"serving on ([\d.]+:\d+)"
# diffusers alone, argv: folder device precision steps side guidance. Prints "loaded", "image".
DIFFUSERS_CHILD = """
import sys
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
folder, device, precision, steps, side, guidance, prompt = sys.argv[1:8]
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
pipe = StableDiffusionPipeline.from_pretrained(
    folder, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
).to(device)
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
print("loaded", flush=True)
pipe(
    prompt, num_inference_steps=int(steps), height=int(side), width=int(side),
    guidance_scale=float(guidance), generator=torch.Generator("cpu").manual_seed(0),
)
if device.startswith("cuda"):
    torch.cuda.synchronize()
print("image", flush=True)
"""


@dataclass(frozen=True)
class StartupSettings:
    """One time-to-first-image measurement: both sides get exactly these."""

    model: str  # a diffusers model folder both can load
    label: str  # what the report calls it ("the model", "embedded model (...)")
    steps: int
    side: int  # pixels, width and height
    device: str = "cpu"
    threads: int = 0  # OMP_NUM_THREADS for both processes; 0: not set
    guidance: float = 7.5
    timeout_s: float = 600.0  # per side


def measure_startup(settings: StartupSettings) -> dict[str, Any]:
    """Both sides, one cold start each, and diffusers' time to the first image over ours."""
    with tempfile.TemporaryDirectory(prefix="textinv-startup-") as scratch:
        ours = _attempt(lambda: time_textinv(settings, Path(scratch)))
        precision = ours.get("precision") or "fp32"
        reference = _attempt(lambda: time_diffusers(settings, precision, Path(scratch)))
    speedup = None
    if "first_image_s" in ours and "first_image_s" in reference:
        speedup = reference["first_image_s"] / ours["first_image_s"]
    return {
        "settings": asdict(settings),
        "textinv": ours,
        "diffusers": reference,
        "first_image_speedup_vs_diffusers": speedup,  # > 1: ours has its first image sooner
    }


def _attempt(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return {"status": "ok", **work()}
    except Exception as error:  # one side failing is a result of the report, not its end
        return {"status": "failed", "error": f"{type(error).__name__}: {error}"}


def time_textinv(settings: StartupSettings, scratch: Path) -> dict[str, Any]:
    """``textinv serve`` from spawn to SERVING, then to its first Generate's reply."""
    command = [sys.executable, "-m", "textinv", "serve", "--model", settings.model]
    command += ["--host", "127.0.0.1", "--port", "0", "--data", str(scratch / "serve-data")]
    command += ["--grace", "1", "--device", settings.device]
    with Spawned(command, settings.threads, scratch / "serve.log") as process:
        deadline = process.started + settings.timeout_s
        target = process.wait_for(SERVING_LINE, deadline).group(1)
        _wait_until_serving(target, deadline)
        serving_s = process.elapsed()
        request = GenerateRequest(
            PROMPT, steps=settings.steps, seed=0, width=settings.side, height=settings.side,
            guidance_scale=settings.guidance, scheduler=Scheduler.DDIM,
        )  # fmt: skip
        with TextInvClient(target, timeout=max(1.0, deadline - time.perf_counter())) as client:
            image = client.generate(request).images[0]
            first_image_s = process.elapsed()
            info = client.get_server_info()
    return {
        "serving_s": serving_s,
        "first_image_s": first_image_s,
        "png_bytes": len(image),
        "precision": info.precision or "fp32",  # empty from a server without the field
        "precision_reason": info.precision_reason,
    }


def _wait_until_serving(target: str, deadline: float) -> None:
    """The standard gRPC health check, asked until it answers SERVING."""
    health_pb2, _ = health_stubs()
    settings = ConnectionSettings(target, timeout=5.0)
    while check(settings) != health_pb2.HealthCheckResponse.SERVING:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{target} did not report SERVING in time")
        time.sleep(0.05)


def time_diffusers(settings: StartupSettings, precision: str, scratch: Path) -> dict[str, Any]:
    """A fresh process: import, ``from_pretrained``, one image."""
    arguments = [settings.model, settings.device, precision, str(settings.steps)]
    arguments += [str(settings.side), str(settings.guidance), PROMPT]
    command = [sys.executable, "-c", DIFFUSERS_CHILD, *arguments]
    with Spawned(command, settings.threads, scratch / "diffusers.log") as process:
        deadline = process.started + settings.timeout_s
        process.wait_for("^loaded$", deadline)
        loaded_s = process.elapsed()
        process.wait_for("^image$", deadline)
        first_image_s = process.elapsed()
    return {"loaded_s": loaded_s, "first_image_s": first_image_s, "precision": precision}


class Spawned:
    """A subprocess whose stdout lines are read by a thread, each with the time it arrived; on
    exit it is stopped (SIGTERM, SIGKILL after 10 s). stderr goes to ``log``."""

    def __init__(self, command: list[str], threads: int, log: Path) -> None:
        environment = os.environ | {"PYTHONUNBUFFERED": "1"}
        if threads > 0:
            environment["OMP_NUM_THREADS"] = str(threads)
        self.log = log
        self._log_file = log.open("w")
        self.lines: queue.Queue[str | None] = queue.Queue()  # None: the output ended
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log_file, text=True, env=environment
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def wait_for(self, pattern: str, deadline: float) -> re.Match[str]:
        """The first line from now on that matches ``pattern``; raises if the process ends or
        the ``deadline`` (``time.perf_counter()``) passes first, with its log's last lines."""
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                raise TimeoutError(f"no line matching {pattern!r} in time") from None
            if line is None:
                raise RuntimeError(f"exited with {self.process.wait()}: {self._log_tail()}")
            found = re.search(pattern, line)
            if found:
                return found

    def _log_tail(self) -> str:
        self._log_file.flush()
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:]) or "no output"

    def __enter__(self) -> Spawned:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
