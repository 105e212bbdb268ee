"""optimum-onnx's ``ORTStableDiffusionPipeline`` as a peer of ``textinv bench generate``.

optimum pins transformers below 4.58 and our core runs transformers 5, so optimum cannot share
our environment: ``ensure_optimum_python`` builds a virtual environment of its own, once, in the
benchmark's cache (exact pins: unpinned, pip backtracks for many minutes), and
``OptimumRunner`` drives ``optimum_worker`` under that environment's python over JSON lines.
Anything that keeps the venv from being built (no network, a pip error, the time limit) comes
back as ``OptimumUnavailable``, so the benchmark skips the comparison with the reason.

    python = ensure_optimum_python()
    if not isinstance(python, OptimumUnavailable):
        with OptimumRunner(python, model_folder, scheduler_config=config) as runner:
            result = runner.generate("a photo of a cat", 20, 7.5, 64, 64, seed=0)
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

OPTIMUM_PINS = (
    "optimum-onnx[onnxruntime]==0.1.0",
    "optimum==2.1.0",
    "transformers==4.57.1",
    "diffusers==0.35.2",
    "onnxruntime==1.32.0",
)
NO_OPTIMUM_ENV = "TEXTINV_BENCH_NO_OPTIMUM"  # "1": skip optimum without trying (CI)
PYTHON_ENV = "TEXTINV_BENCH_OPTIMUM_PYTHON"  # a python that already has the pins
CACHE_ENV = "TEXTINV_BENCH_CACHE"
COMPLETE = "textinv-complete.json"  # written last: the venv is whole
WORKER = Path(__file__).with_name("optimum_worker.py")
PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+$")
OUTPUT_CHARS = 1500  # how much of a failed command's output a reason keeps


@dataclass(frozen=True)
class OptimumUnavailable:
    """Why the optimum peer cannot run here; the benchmark prints it and goes on."""

    reason: str


class OptimumWorkerError(RuntimeError):
    """The worker failed a request, died, or did not answer in time; the message says which."""

    def __init__(self, message: str, worker_traceback: str = "") -> None:
        super().__init__(message)
        self.worker_traceback = worker_traceback


@dataclass(frozen=True)
class OptimumResult:
    """One pipeline call. ``e2e_ms`` is timed inside the worker around the call alone; the
    stages from timers on ``encode_prompt`` and ``vae.decode`` and step-end callbacks (one
    per step, the first from the end of ``prepare_latents``), the scope of our runners'."""

    e2e_ms: float
    round_trip_ms: float  # the parent's clock: the call plus the JSON and pipe around it
    text_encoder_ms: float
    unet_step_ms: list[float]
    vae_decode_ms: float
    images: np.ndarray  # uint8 [n, H, W, 3]


@dataclass(frozen=True)
class OptimumInfo:
    """What the worker reports once loaded: optimum's export and session load times, versions,
    the UNet session's providers and options, the scheduler config it runs."""

    export_s: float
    load_s: float
    versions: dict[str, str]
    providers: list[str]
    session_options: dict[str, Any]
    use_io_binding: bool
    unet_inputs: dict[str, str]
    scheduler_config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def torch_version() -> str:
    """The running torch's version without its local part (``2.13.0+cpu`` → ``2.13.0``)."""
    return importlib.metadata.version("torch").split("+")[0]


def optimum_venv_dir(pins: Sequence[str] = OPTIMUM_PINS) -> Path:
    """The cache folder of the venv for ``pins``, this python's minor version and our torch."""
    cache = os.environ.get(CACHE_ENV)
    if not cache:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache = str(Path(xdg) / "textinv" / "bench")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = json.dumps([list(pins), python, torch_version()])
    return Path(cache) / f"optimum-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def venv_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def complete_optimum_python(pins: Sequence[str] = OPTIMUM_PINS) -> Path | None:
    """A python with the pins, without building anything: ``$TEXTINV_BENCH_OPTIMUM_PYTHON``, or
    the cache's venv where it is complete; None otherwise."""
    if given := os.environ.get(PYTHON_ENV):
        return Path(given)
    folder = optimum_venv_dir(pins)
    return venv_python(folder) if (folder / COMPLETE).is_file() else None


def ensure_optimum_python(
    progress: Callable[[str], None] = print,
    timeout_s: float = 900.0,
    *,
    pins: Sequence[str] = OPTIMUM_PINS,
    base_python: Path | None = None,
) -> Path | OptimumUnavailable:
    """The python of a venv with optimum's ``pins``: ``$TEXTINV_BENCH_OPTIMUM_PYTHON``, the
    cache's complete venv, or one built now from ``base_python`` (ours by default) within
    ``timeout_s``; every failure is an ``OptimumUnavailable`` with its reason, never an error."""
    if os.environ.get(NO_OPTIMUM_ENV, "") not in ("", "0"):
        return OptimumUnavailable(f"{NO_OPTIMUM_ENV} is set: the optimum peer is skipped")
    if given := os.environ.get(PYTHON_ENV):
        path = Path(given)
        return path if path.is_file() else OptimumUnavailable(f"{PYTHON_ENV}={given} is no file")
    if unpinned := [pin for pin in pins if not PIN.match(pin)]:
        return OptimumUnavailable(f"pins must be exact (name==version): {unpinned}")
    deadline = time.monotonic() + timeout_s
    folder = Path("(unknown)")
    try:
        folder = optimum_venv_dir(pins)  # needs our torch's version
        with creation_lock(folder, deadline):
            if not (folder / COMPLETE).is_file():
                progress(f"building optimum's venv at {folder} (once; about a minute)")
                build_venv(folder, pins, Path(base_python or sys.executable), deadline)
    except (OSError, ImportError, subprocess.SubprocessError, TimeoutError) as error:
        return OptimumUnavailable(f"could not build optimum's venv at {folder}: {error}")
    return venv_python(folder)


@contextlib.contextmanager
def creation_lock(folder: Path, deadline: float) -> Iterator[None]:
    """An exclusive file lock beside ``folder``, so two benchmarks build the venv once."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("another process is building the venv") from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_venv(folder: Path, pins: Sequence[str], base_python: Path, deadline: float) -> None:
    """A fresh venv: torch first, at our torch's exact version (left to optimum's requirement,
    pip takes the index's newest torch, a multi-GB CUDA build; on a CUDA machine this same pin
    may resolve to a CUDA build too), then the pins; the marker last. A failure removes the
    partial folder."""
    shutil.rmtree(folder, ignore_errors=True)
    python = str(venv_python(folder))
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    try:
        run_bounded([str(base_python), "-m", "venv", str(folder)], deadline)
        run_bounded([*pip, f"torch=={torch_version()}"], deadline)
        run_bounded([*pip, *pins], deadline)
        record = {"pins": list(pins), "torch": torch_version(), "python": sys.version}
        (folder / COMPLETE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def run_bounded(command: list[str], deadline: float) -> None:
    """Run ``command`` until ``deadline`` (its whole process group is killed then); raise
    ``SubprocessError`` with the end of its output where it fails or runs out of time."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        kill_group(process)
        output, _ = process.communicate()
        raise subprocess.SubprocessError(
            f"timed out: {' '.join(command)}\n{tail(output)}"
        ) from None
    if process.returncode != 0:
        raise subprocess.SubprocessError(
            f"exit {process.returncode}: {' '.join(command)}\n{tail(output)}"
        )


def kill_group(process: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def tail(output: bytes | str | None, chars: int = OUTPUT_CHARS) -> str:
    text = output.decode(errors="replace") if isinstance(output, bytes) else output or ""
    return text[-chars:]


class OptimumRunner:
    """optimum's pipeline in its worker: constructing one exports and loads the model
    (``info``), ``generate`` runs one request, ``close`` (or the ``with`` block's end) ends it.
    ``threads`` > 0 sets onnxruntime's ``intra_op_num_threads`` (and torch's, for the
    scheduler); 0 keeps onnxruntime's defaults. ``scheduler`` is one of our ``Scheduler``
    values, built from ``scheduler_config`` after the pipeline is."""

    def __init__(
        self,
        python: Path,
        model_folder: Path,
        *,
        threads: int = 0,
        scheduler: str = "ddim",
        scheduler_config: dict[str, Any],
        load_timeout_s: float = 1800.0,
        call_timeout_s: float = 900.0,
    ) -> None:
        self.call_timeout_s = call_timeout_s
        self.scratch = Path(tempfile.mkdtemp(prefix="textinv-optimum-"))
        self.log_path = self.scratch / "worker.log"  # the worker's stderr, for errors
        try:
            self.process = start_worker(python, self.scratch, self.log_path)
        except OSError as error:
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise OptimumWorkerError(
                f"cannot start the optimum worker with {python}: {error}"
            ) from error
        self.answers: queue.Queue[bytes | None] = queue.Queue()
        assert self.process.stdout is not None  # PIPE above
        threading.Thread(
            target=read_lines, args=(self.process.stdout, self.answers), daemon=True
        ).start()
        load: dict[str, Any] = {"model": str(Path(model_folder).resolve())}
        load["scratch"] = str(self.scratch)
        load.update(threads=threads, scheduler=scheduler, scheduler_config=scheduler_config)
        try:
            self.info = OptimumInfo(**self.request("load", load, load_timeout_s)["info"])
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> OptimumRunner:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def generate(
        self,
        prompt: str,
        steps: int,
        guidance: float,
        width: int,
        height: int,
        seed: int,
        num_images: int = 1,
    ) -> OptimumResult:
        """``num_images`` images, image i seeded ``seed + i`` (as our requests' seeds)."""
        fields = {"prompt": prompt, "steps": steps, "guidance": guidance}
        fields.update(width=width, height=height, seeds=[seed + i for i in range(num_images)])
        start = time.perf_counter()
        answer = self.request("generate", fields, self.call_timeout_s)
        round_trip_ms = (time.perf_counter() - start) * 1000
        images = answer["images"]
        pixels = np.frombuffer(base64.b64decode(images["base64"]), dtype=np.uint8)
        return OptimumResult(
            e2e_ms=answer["e2e_ms"],
            round_trip_ms=round_trip_ms,
            text_encoder_ms=answer["text_encoder_ms"],
            unet_step_ms=answer["unet_step_ms"],
            vae_decode_ms=answer["vae_decode_ms"],
            images=pixels.reshape(images["shape"]),
        )

    def request(self, op: str, fields: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request and wait for its answer; a worker that fails it, has died or does
        not answer within ``timeout_s`` (it is killed then) raises ``OptimumWorkerError``."""
        if self.process.poll() is not None:
            raise OptimumWorkerError(f"the optimum worker has exited{self.log_tail()}")
        assert self.process.stdin is not None  # PIPE in __init__
        try:
            self.process.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
            self.process.stdin.flush()
            line = self.answers.get(timeout=timeout_s)
        except queue.Empty:
            kill_group(self.process)
            raise OptimumWorkerError(
                f"the optimum worker did not answer {op!r} within {timeout_s:.0f} s (killed)"
                + self.log_tail()
            ) from None
        except BrokenPipeError:
            line = None
        if line is None:
            code = self.process.wait()
            raise OptimumWorkerError(
                f"the optimum worker exited ({code}) during {op!r}{self.log_tail()}"
            )
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise OptimumWorkerError(
                f"optimum worker: {answer['error']}", answer.get("traceback", "")
            )
        return answer

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "; its stderr ends:\n" + tail(self.log_path.read_bytes())
        return ""

    def close(self) -> None:
        """End the worker (asked, then killed after 10 s) and remove its scratch folder."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.write(b'{"op": "exit"}\n')
                self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill_group(self.process)
                self.process.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)


def start_worker(python: Path, scratch: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """The worker under ``python``, in its own process group, its stderr into ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [str(python), "-I", str(WORKER)],  # -I: our folder not on sys.path, no PYTHON* vars
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=worker_environment(scratch),
            start_new_session=True,
        )


def worker_environment(scratch: Path) -> dict[str, str]:
    """Ours, offline (local folders only; the hub must not be asked), temporary files (optimum's
    export folder among them) in ``scratch``, which ``close`` removes even after a kill."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TMPDIR=str(scratch))
    return env


def read_lines(stream: IO[bytes], answers: queue.Queue[bytes | None]) -> None:
    """The worker's answers, a line each, then None at its end."""
    for line in stream:
        answers.put(line)
    answers.put(None)
