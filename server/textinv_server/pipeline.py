"""The generation pipeline, written once over the ``Backend`` interface (DESIGN decision 4).

prompt → ``PromptEncoder`` (host-side lookup, concept rows spliced in) → backend text encoder →
denoising loop with classifier-free guidance (uncond and cond halves in one UNet call) → backend
VAE decode → PNG bytes.

Concepts are passed per call as ``{token: vectors [K, D]}`` (the server passes its registry's
snapshot). The pipeline keeps no concept state, so registering or deleting a concept changes
nothing here: the next call simply sees it, with no re-export and no reload.

Seeds (DESIGN decision 5): image i of a request is drawn from its own CPU generator seeded with
``seed + i``, both for the initial noise (``randn_tensor`` exactly as diffusers'
``prepare_latents``) and for the noise ancestral schedulers draw in ``step``. So a request's
images match ``StableDiffusionPipeline`` given ``generator=[Generator().manual_seed(seed + i)]``
(one generator when there is one image), and batching never changes an image.

Batching: ``run_batch`` runs requests with equal ``batch_key()`` (size, steps, scheduler, whether
guidance runs) as one batch: one text-encoder call, one UNet call per step and one VAE call. Each
request keeps its own scheduler (multistep solvers hold per-sample history) and guidance scale,
its own progress callback and its own cancellation check, polled before every step.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from textinv.errors import CancelledError, InvalidInputError
from textinv.model import BaseModel, load_base_model
from textinv.prompts import PromptEmbeddings, PromptEncoder
from textinv_export.specs import Precision
from textinv_server.backends import Backend, BackendName, BackendOptions
from textinv_server.host_model import HostModel, load_host_model
from textinv_server.requests import (
    GenerationRequest,
    GenerationResult,
    StageTimings,
    StepProgress,
    check_request,
)
from textinv_server.schedulers import make_scheduler, step_kwargs

Concepts = Mapping[str, torch.Tensor]
NO_CONCEPTS: Concepts = MappingProxyType({})
ProgressCallback = Callable[[StepProgress], None]
CancelCheck = Callable[[], bool]


@dataclass(frozen=True)
class PreparedRequest:
    """A checked request with a concrete seed and size, its prompts already embedded.

    ``embeddings`` rows: ``[negative, prompt]`` when guidance runs, else ``[prompt]``.
    """

    request: GenerationRequest
    embeddings: PromptEmbeddings
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationJob:
    """One request of a batch, with its own progress callback and cancellation check."""

    prepared: PreparedRequest
    on_step: ProgressCallback | None = None
    is_cancelled: CancelCheck | None = None


@dataclass
class _Running:
    """The mutable state of one request inside the denoising loop."""

    job: GenerationJob
    scheduler: Any
    generators: list[torch.Generator]
    latents: torch.Tensor  # [n, C, h, w] on the backend's device
    uncond: torch.Tensor | None  # [n, T, D], None without guidance
    cond: torch.Tensor  # [n, T, D]
    step_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def request(self) -> GenerationRequest:
        return self.job.prepared.request


Outcome = GenerationResult | CancelledError


class StepClock:
    """Milliseconds per denoising step, without a host sync inside the loop.

    On CUDA each step is bracketed by two events on the current stream (backends that run on
    their own streams join it again before returning) and the times are read once, after the
    loop. Elsewhere the host's clock is the step time.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.host_ms: list[float] = []
        self.events: list[tuple[Any, Any]] = []
        self._started = 0.0
        self._start_event: Any = None

    def _record(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def start(self) -> None:
        self._started = time.perf_counter()
        if self.cuda:
            self._start_event = self._record()

    def stop(self) -> float:
        """Ends a step; returns its host-side milliseconds."""
        if self.cuda:
            self.events.append((self._start_event, self._record()))
        self.host_ms.append((time.perf_counter() - self._started) * 1000)
        return self.host_ms[-1]

    def step_ms(self) -> list[float]:
        """Each step's milliseconds: device time on CUDA (one sync here), else host time."""
        if not self.cuda:
            return list(self.host_ms)
        if self.events:
            self.events[-1][1].synchronize()
        return [float(begin.elapsed_time(end)) for begin, end in self.events]


class GenerationPipeline:
    """Prompt in, PNG images out, over any backend. Thread-compatible: one call at a time."""

    def __init__(self, host: HostModel, backend: Backend) -> None:
        if backend.model_hash != host.model_hash:
            raise InvalidInputError(
                f"backend was loaded for model {backend.model_hash[:12]}, not for "
                f"{host.model_hash[:12]} ({host.path})"
            )
        self.host = host
        self.backend = backend
        self.prompts = PromptEncoder(host.tokenizer, host.token_embedding)

    # -- the public API ------------------------------------------------------------------------

    def prepare(
        self, request: GenerationRequest, concepts: Concepts = NO_CONCEPTS
    ) -> PreparedRequest:
        """Check a request and embed its prompts: every error the request can cause, before any
        backend work (the server's batcher calls this when a request arrives)."""
        request = request.resolved(self.host.default_resolution)
        check_request(request)
        assert request.width is not None and request.height is not None
        self.backend.limits.check(request.width, request.height, request.num_images)
        prompts = [request.prompt]
        if request.uses_guidance:
            prompts.insert(0, request.negative_prompt)
        embeddings = self.prompts.embed(prompts, concepts)
        return PreparedRequest(request, embeddings, embeddings.warnings)

    def __call__(
        self,
        request: GenerationRequest,
        concepts: Concepts = NO_CONCEPTS,
        *,
        on_step: ProgressCallback | None = None,
        is_cancelled: CancelCheck | None = None,
    ) -> GenerationResult:
        """Generate one request; raises ``CancelledError`` if ``is_cancelled`` turns true."""
        job = GenerationJob(self.prepare(request, concepts), on_step, is_cancelled)
        (outcome,) = self.run_batch([job])
        if isinstance(outcome, CancelledError):
            raise outcome
        return outcome

    def run_batch(self, jobs: Sequence[GenerationJob]) -> list[Outcome]:
        """Run prepared requests with one ``batch_key()`` as one batch; one outcome per job."""
        start = time.perf_counter()
        # 1. Check that the requests can share a batch.
        self._check_batch(jobs)
        # 2. Encode all prompts in one text-encoder call.
        uncond, cond, text_ms = self._encode_prompts(jobs)
        # 3. Draw each request's initial noise from its own seeds; give it its own scheduler.
        running = [
            self._start(job, uncond[i] if uncond else None, cond[i]) for i, job in enumerate(jobs)
        ]
        # 4. Denoising loop with classifier-free guidance; drops requests cancelled on the way.
        outcomes: dict[int, Outcome] = {}
        step_ms = self._denoise(running, outcomes)
        # 5. Decode what finished and encode PNGs.
        finished = [state for state in running if id(state.job) not in outcomes]
        images, vae_ms = self._decode(finished)
        # 6. Package each request's images with the batch's stage timings.
        timings = StageTimings(
            text_encoder_ms=text_ms,
            unet_total_ms=sum(step_ms),
            unet_step_ms=tuple(step_ms),
            vae_decode_ms=vae_ms,
            total_ms=(time.perf_counter() - start) * 1000,
            batch_size=len(jobs),
        )
        for state, pngs in zip(finished, images, strict=True):
            prepared = state.job.prepared
            outcomes[id(state.job)] = GenerationResult(
                pngs, prepared.request.seeds, prepared.request, timings, prepared.warnings
            )
        return [outcomes[id(job)] for job in jobs]

    # -- the steps -----------------------------------------------------------------------------

    def _check_batch(self, jobs: Sequence[GenerationJob]) -> None:
        if not jobs:
            raise InvalidInputError("a batch needs at least one request, got none")
        keys = {job.prepared.request.batch_key() for job in jobs}
        if len(keys) > 1:
            raise InvalidInputError(
                f"requests in one batch must share size, steps, scheduler and whether guidance "
                f"runs; got {sorted(map(str, keys))}"
            )
        first = jobs[0].prepared.request
        assert first.width is not None and first.height is not None
        images = sum(job.prepared.request.num_images for job in jobs)
        self.backend.limits.check(first.width, first.height, images)

    def _encode_prompts(
        self, jobs: Sequence[GenerationJob]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], float]:
        """One text-encoder call over every request's rows; returns per-request uncond and cond
        hidden states ``[T, D]`` (uncond empty without guidance) and the milliseconds spent."""
        start = time.perf_counter()
        inputs_embeds = torch.cat([job.prepared.embeddings.inputs_embeds for job in jobs])
        eos_positions = torch.cat([job.prepared.embeddings.eos_positions for job in jobs])
        hidden = self.backend.encode_text(inputs_embeds, eos_positions)  # [rows, T, D]
        self.backend.synchronize()
        per_request = hidden.split([len(job.prepared.embeddings.eos_positions) for job in jobs])
        guided = jobs[0].prepared.request.uses_guidance
        uncond = [rows[0] for rows in per_request] if guided else []
        cond = [rows[-1] for rows in per_request]
        return uncond, cond, (time.perf_counter() - start) * 1000

    def _start(
        self, job: GenerationJob, uncond: torch.Tensor | None, cond: torch.Tensor
    ) -> _Running:
        """Per-image generators, a fresh scheduler, and the initial noise as diffusers draws it."""
        request = job.prepared.request
        assert request.width is not None and request.height is not None
        device = self.backend.device
        # The scheduler's timesteps and tables stay on the CPU: its scalars reach the device
        # kernels as arguments, so stepping never waits for the GPU (an index with a CUDA
        # timestep would be a host sync every step). The UNet gets device timesteps (_denoise).
        scheduler = make_scheduler(
            request.scheduler, self.host.scheduler_config, request.steps, torch.device("cpu")
        )
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in request.seeds]
        factor = self.host.vae_scale_factor
        shape = (
            request.num_images,
            self.host.latent_channels,
            request.height // factor,
            request.width // factor,
        )
        noise = randn_tensor(shape, generator=generators, device=device, dtype=torch.float32)
        n = request.num_images
        return _Running(
            job=job,
            scheduler=scheduler,
            generators=generators,
            latents=noise * scheduler.init_noise_sigma,
            uncond=None if uncond is None else uncond.expand(n, *uncond.shape),
            cond=cond.expand(n, *cond.shape),
            step_kwargs=step_kwargs(scheduler, generators),
        )

    def _denoise(self, running: list[_Running], outcomes: dict[int, Outcome]) -> list[float]:
        """Step every request through the shared timesteps; returns each step's milliseconds.

        Nothing inside the loop waits for the device: step times come from CUDA events read
        once after the loop (``on_step`` gets the host's time per step, which matches once the
        launch queue is full), the UNet's timesteps are on the device up front, and the model
        input is written into one preallocated buffer.
        """
        timesteps = running[0].scheduler.timesteps  # [steps] on the CPU
        unet_timesteps = timesteps.to(self.backend.device, torch.float32)  # one copy, up front
        guided = running[0].uncond is not None
        active = list(running)
        hidden = self._hidden_states(active)
        buffer = self._input_buffer(active, guided)
        clock = StepClock(self.backend.device)
        for index, timestep in enumerate(timesteps):
            still = self._drop_cancelled(active, outcomes, index, len(timesteps))
            if len(still) != len(active):
                active, hidden = still, self._hidden_states(still)
                buffer = self._input_buffer(active, guided)
            if not active:
                break
            clock.start()
            self._step(active, timestep, unet_timesteps[index], hidden, buffer, guided)
            host_ms = clock.stop()
            for state in active:
                if state.job.on_step is not None:
                    state.job.on_step(StepProgress(index + 1, len(timesteps), host_ms))
        # A request cancelled during the last step skips the decode too.
        self._drop_cancelled(active, outcomes, len(timesteps), len(timesteps))
        return clock.step_ms()

    def _step(
        self,
        active: list[_Running],
        timestep: torch.Tensor,
        unet_timestep: torch.Tensor,
        hidden: torch.Tensor,
        buffer: torch.Tensor,
        guided: bool,
    ) -> None:
        """One UNet call for all active images (uncond rows first), then each scheduler's step."""
        sample = self._model_input(active, timestep, buffer, guided)  # [rows, C, h, w]
        t = unet_timestep.expand(sample.shape[0])  # [rows] on the device, no host sync
        noise = self.backend.predict_noise(sample, t, hidden)
        uncond_all, cond_all = noise.chunk(2) if guided else (noise, noise)
        sizes = [s.request.num_images for s in active]
        for state, uncond, cond in zip(
            active, uncond_all.split(sizes), cond_all.split(sizes), strict=True
        ):
            guidance = state.request.guidance_scale
            # diffusers' formula, term for term, so the floats agree.
            noise_pred = uncond + guidance * (cond - uncond) if guided else cond
            state.latents = state.scheduler.step(
                noise_pred, timestep, state.latents, **state.step_kwargs, return_dict=False
            )[0]

    @staticmethod
    def _input_buffer(active: list[_Running], guided: bool) -> torch.Tensor:
        """The UNet's input ``[rows, C, h, w]``, allocated once per set of active requests:
        ``rows`` is 2n under guidance (uncond rows, then cond rows), else n."""
        if not active:
            return torch.empty(0)
        n = sum(s.request.num_images for s in active)
        _, c, h, w = active[0].latents.shape
        latents = active[0].latents
        return torch.empty(
            (2 * n if guided else n, c, h, w), dtype=latents.dtype, device=latents.device
        )

    @staticmethod
    def _model_input(
        active: list[_Running], timestep: torch.Tensor, buffer: torch.Tensor, guided: bool
    ) -> torch.Tensor:
        """Each request's scaled latents written into ``buffer``, twice under guidance."""
        offset = 0
        for state in active:
            count = state.request.num_images
            scaled = state.scheduler.scale_model_input(state.latents, timestep)
            buffer[offset : offset + count].copy_(scaled)
            offset += count
        if guided:
            buffer[offset:].copy_(buffer[:offset])
        return buffer

    @staticmethod
    def _hidden_states(active: list[_Running]) -> torch.Tensor:
        """``encoder_hidden_states [rows, T, D]``: every uncond row, then every cond row."""
        if not active:
            return torch.empty(0)
        cond = torch.cat([s.cond for s in active])
        if active[0].uncond is None:
            return cond
        return torch.cat([torch.cat([s.uncond for s in active if s.uncond is not None]), cond])

    @staticmethod
    def _drop_cancelled(
        active: list[_Running], outcomes: dict[int, Outcome], step: int, total: int
    ) -> list[_Running]:
        still = []
        for state in active:
            check = state.job.is_cancelled
            if check is not None and check():
                outcomes[id(state.job)] = CancelledError(
                    f"generation cancelled after {step} of {total} steps"
                )
            else:
                still.append(state)
        return still

    def _decode(self, finished: list[_Running]) -> tuple[list[tuple[bytes, ...]], float]:
        """One VAE call for every finished image; PNG bytes per request and the milliseconds."""
        if not finished:
            return [], 0.0
        start = time.perf_counter()
        latents = torch.cat([s.latents for s in finished]) / self.host.latent_scaling
        images = self.backend.decode(latents)  # [n, 3, H, W] in about [-1, 1]
        self.backend.synchronize()
        vae_ms = (time.perf_counter() - start) * 1000
        pngs = [to_png(pixels) for pixels in to_uint8(images)]
        per_request: list[tuple[bytes, ...]] = []
        for state in finished:
            count = state.request.num_images
            per_request.append(tuple(pngs[:count]))
            pngs = pngs[count:]
        return per_request, vae_ms


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[n, 3, H, W]`` in [-1, 1] → ``uint8 [n, H, W, 3]``, rounded as diffusers rounds."""
    pixels = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    return np.asarray((pixels * 255).round().astype(np.uint8))


def to_png(pixels: np.ndarray) -> bytes:
    """``uint8 [H, W, 3]`` → PNG bytes (fast compression: lossless either way)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes → ``uint8 [H, W, 3]`` (for callers and tests that want pixels back)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def load_generation_pipeline(
    model: str | Path | BaseModel | None,
    backend: BackendName | str = BackendName.TORCH,
    options: BackendOptions | None = None,
) -> GenerationPipeline:
    """The pipeline over ``backend`` for ``model`` (a diffusers folder, or a loaded model).

    ``torch`` runs the model's own modules; ``onnxruntime`` and ``tensorrt`` load the export in
    ``options.engines`` through its manifest, which must have been written for this model, and
    read only the host side (tokenizer, token table, configs) of the model folder.
    """
    name = BackendName.parse(backend)
    options = options or BackendOptions()
    if name is BackendName.TORCH:
        if not isinstance(model, BaseModel):
            dtype = torch.float16 if options.precision is Precision.FP16 else torch.float32
            model = load_base_model(model, dtype=dtype, device=options.device)
        elif torch.device(options.device) != model.unet.device:
            for module in (model.text_encoder, model.unet, model.vae):
                module.to(options.device)
        if options.threads > 0:
            torch.set_num_threads(options.threads)
        from textinv_server.backends.torch_backend import TorchBackend

        host = HostModel.of(model)  # before the backend casts the weights: a float32 CPU table
        return GenerationPipeline(host, TorchBackend(model, options=options.torch_options))
    host = HostModel.of(model) if isinstance(model, BaseModel) else load_host_model(model)
    if options.engines is None:
        raise InvalidInputError(f"the {name.value} backend needs --engines DIR (an export)")
    if name is BackendName.ONNXRUNTIME:
        from textinv_server.backends.onnxruntime_backend import OnnxRuntimeBackend

        return GenerationPipeline(
            host,
            OnnxRuntimeBackend(
                options.engines,
                host.model_hash,
                provider=options.provider,
                threads=options.threads,
                verify_checksums=options.verify_checksums,
            ),
        )
    from textinv_server.backends.tensorrt_backend import TensorRTBackend

    device = torch.device(options.device if options.device != "cpu" else "cuda")
    return GenerationPipeline(
        host,
        TensorRTBackend(
            options.engines,
            host.model_hash,
            device=device.index or 0,
            verify_checksums=options.verify_checksums,
        ),
    )
