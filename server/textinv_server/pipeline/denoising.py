"""The denoising loop with classifier-free guidance, over every running request of a batch.

One UNet call per step covers every active image (uncond rows first, then cond rows); each
request keeps its own scheduler (multistep solvers hold per-sample history) and guidance scale,
and its cancellation check is polled before every step. Nothing inside the loop waits for the
device: step times come from CUDA events read once after the loop (``StepClock``), the UNet's
timesteps are on the device up front, and the model input is written into one preallocated buffer.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from textinv.errors import CancelledError
from textinv_server.backends import Backend
from textinv_server.pipeline.latents import RunningRequest
from textinv_server.pipeline.planning import Outcome
from textinv_server.requests import StepProgress

# Outcomes of finished or cancelled requests, by ``id(prepared)``.
Outcomes = dict[int, Outcome]


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


def denoise(backend: Backend, running: list[RunningRequest], outcomes: Outcomes) -> list[float]:
    """Step every request through the shared timesteps; returns each step's milliseconds.

    A request takes part from its ``start_index`` on (img2img joins late, at its strength's
    first step). A request cancelled on the way gets its ``CancelledError`` in ``outcomes`` and
    leaves the batch (``on_step`` gets the host's time per step, which matches once the launch
    queue is full).
    """
    timesteps = running[0].scheduler.timesteps  # [steps] on the CPU
    unet_timesteps = timesteps.to(backend.device, torch.float32)  # one copy, up front
    guided = running[0].uncond is not None
    active: list[RunningRequest] = []
    hidden, buffer = hidden_states(active), input_buffer(active, guided)
    added: dict[str, torch.Tensor] | None = None
    clock = StepClock(backend.device)
    total = len(timesteps)
    for index, timestep in enumerate(timesteps):
        started = [s for s in running if s.start_index <= index and id(s.prepared) not in outcomes]
        still = drop_cancelled(started, outcomes, index, total)
        if [id(s) for s in still] != [id(s) for s in active]:
            active, hidden, buffer = still, hidden_states(still), input_buffer(still, guided)
            added = added_conditions(still)
        if not active:
            continue
        clock.start()
        step(backend, active, timestep, unet_timesteps[index], (hidden, added), buffer, guided)
        host_ms = clock.stop()
        for state in active:
            own = index - state.start_index
            state.prepared.report(StepProgress(own + 1, total - state.start_index, host_ms))
    # A request cancelled during the last step skips the decode too.
    drop_cancelled(active, outcomes, total, total)
    return clock.step_ms()


def step(
    backend: Backend,
    active: list[RunningRequest],
    timestep: torch.Tensor,
    unet_timestep: torch.Tensor,
    conditioning: tuple[torch.Tensor, dict[str, torch.Tensor] | None],
    buffer: torch.Tensor,
    guided: bool,
) -> None:
    """One UNet call for all active images (uncond rows first), then each scheduler's step.
    ``conditioning``: the hidden states ``[rows, T, D]`` and SDXL's added conditioning."""
    sample = model_input(active, timestep, buffer, guided)  # [rows, C, h, w]
    t = unet_timestep.expand(sample.shape[0])  # [rows] on the device, no host sync
    hidden, added = conditioning
    noise = backend.predict_noise(sample, t, hidden, added)
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


def input_buffer(active: list[RunningRequest], guided: bool) -> torch.Tensor:
    """The UNet's input ``[rows, C, h, w]``, allocated once per set of active requests:
    ``rows`` is 2n under guidance (uncond rows, then cond rows), else n."""
    if not active:
        return torch.empty(0)
    n = sum(s.request.num_images for s in active)
    latents = active[0].latents
    _, c, h, w = latents.shape
    rows = 2 * n if guided else n
    return torch.empty((rows, c, h, w), dtype=latents.dtype, device=latents.device)


def model_input(
    active: list[RunningRequest], timestep: torch.Tensor, buffer: torch.Tensor, guided: bool
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


def hidden_states(active: list[RunningRequest]) -> torch.Tensor:
    """``encoder_hidden_states [rows, T, D]``: every uncond row, then every cond row."""
    if not active:
        return torch.empty(0)
    cond = torch.cat([s.cond for s in active])
    if active[0].uncond is None:
        return cond
    return torch.cat([torch.cat([s.uncond for s in active if s.uncond is not None]), cond])


def added_conditions(active: list[RunningRequest]) -> dict[str, torch.Tensor] | None:
    """SDXL's ``text_embeds [rows, P]`` and ``time_ids [rows, 6]``, in the rows' order (every
    uncond row, then every cond row); None for SD 1.x/2.x."""
    if not active or active[0].pooled_cond is None:
        return None
    cond = torch.cat([s.pooled_cond for s in active if s.pooled_cond is not None])
    time_ids = torch.cat([s.time_ids for s in active if s.time_ids is not None])
    if active[0].uncond is None:
        return {"text_embeds": cond, "time_ids": time_ids}
    uncond = torch.cat([s.pooled_uncond for s in active if s.pooled_uncond is not None])
    return {"text_embeds": torch.cat([uncond, cond]), "time_ids": torch.cat([time_ids] * 2)}


def drop_cancelled(
    active: list[RunningRequest], outcomes: Outcomes, step: int, total: int
) -> list[RunningRequest]:
    """The requests still wanted; each cancelled one gets its ``CancelledError`` outcome."""
    still = []
    for state in active:
        if state.prepared.cancelled():
            outcomes[id(state.prepared)] = CancelledError(
                f"generation cancelled after {step} of {total} steps"
            )
        else:
            still.append(state)
    return still
