"""diffusers' scheduler classes for each ``Scheduler`` name, built from the model's config.

Schedulers are stateful (multistep solvers keep past model outputs), so each request gets its own
instance; they run elementwise on the latents' device beside any backend.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

from textinv_client.choices import Scheduler

_CLASSES: dict[Scheduler, tuple[Any, dict[str, Any]]] = {
    Scheduler.DDIM: (DDIMScheduler, {}),
    Scheduler.EULER: (EulerDiscreteScheduler, {}),
    Scheduler.EULER_ANCESTRAL: (EulerAncestralDiscreteScheduler, {}),
    Scheduler.DPM_SOLVER_PP_2M: (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    Scheduler.PNDM: (PNDMScheduler, {}),
    Scheduler.DPM_SOLVER_PP_2M_SDE: (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
    ),
}


def make_scheduler(
    name: Scheduler,
    config: Mapping[str, Any],
    steps: int,
    device: torch.device,
    karras_sigmas: bool = False,
) -> Any:
    """A fresh scheduler of kind ``name`` from the model's scheduler config, timesteps set;
    ``karras_sigmas`` only for the kinds that take it (``Scheduler.takes_karras_sigmas``)."""
    scheduler_class, overrides = _CLASSES[name]
    if karras_sigmas:
        overrides = {**overrides, "use_karras_sigmas": True}
    scheduler = scheduler_class.from_config(dict(config), **overrides)
    scheduler.set_timesteps(steps, device=device)
    return scheduler


def step_kwargs(scheduler: Any, generators: list[torch.Generator]) -> dict[str, Any]:
    """What diffusers' ``prepare_extra_step_kwargs`` passes: ``eta=0`` and the generators.

    Ancestral schedulers draw fresh noise in ``step`` from these generators, one per image, so
    parity with diffusers holds and no image depends on its batch.
    """
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        kwargs["generator"] = generators
    return kwargs
