"""The schedulers' options against diffusers' own: the Karras sigma schedule
(``use_karras_sigmas``) and DPM++ 2M SDE's per-step noise (``algorithm_type="sde-dpmsolver++"``).
Plain parity for every scheduler is in ``test_pipeline``."""

from __future__ import annotations

import pytest
import torch

from tests.unit.generation_reference import (
    max_pixel_difference,
    pixels,
    reference_images,
)
from textinv.errors import InvalidInputError
from textinv_server.requests import GenerationRequest, Scheduler
from textinv_server.schedulers import make_scheduler


def request(**overrides) -> GenerationRequest:
    values = {"prompt": "a red cat", "steps": 6, "seed": 5, "width": 32, "height": 32}
    return GenerationRequest(**{**values, **overrides})


@pytest.mark.parametrize(
    "scheduler", [Scheduler.EULER, Scheduler.DPM_SOLVER_PP_2M, Scheduler.DPM_SOLVER_PP_2M_SDE]
)
def test_karras_sigmas_match_diffusers(
    torch_pipeline, diffusers_reference, scheduler: Scheduler
) -> None:
    req = request(scheduler=scheduler, karras_sigmas=True)
    ours = pixels(torch_pipeline(req))
    assert ours.std() > 5
    assert max_pixel_difference(ours, reference_images(diffusers_reference, req)) <= 2
    # The control: the tiny model's images hardly move with the schedule (Euler: ≤ 6/255), so
    # the schedule itself is compared: ours is diffusers' Karras one, far from the default.
    config = torch_pipeline.host.scheduler_config
    cpu = torch.device("cpu")
    karras = make_scheduler(scheduler, config, req.steps, cpu, karras_sigmas=True)
    default = make_scheduler(scheduler, config, req.steps, cpu)
    assert torch.equal(karras.sigmas, diffusers_reference.scheduler.sigmas)
    assert (karras.sigmas - default.sigmas).abs().max() > 0.3


def test_karras_requests_never_share_a_batch_with_plain_ones(torch_pipeline) -> None:
    karras = torch_pipeline.prepare(request(scheduler=Scheduler.EULER, karras_sigmas=True))
    plain = torch_pipeline.prepare(request(scheduler=Scheduler.EULER))
    assert karras.batch_key() != plain.batch_key()


@pytest.mark.parametrize("scheduler", [Scheduler.DDIM, Scheduler.PNDM, Scheduler.EULER_ANCESTRAL])
def test_schedulers_without_a_karras_schedule_refuse_it(
    torch_pipeline, scheduler: Scheduler
) -> None:
    with pytest.raises(InvalidInputError, match="karras_sigmas: scheduler .* has no Karras"):
        torch_pipeline(request(scheduler=scheduler, karras_sigmas=True))


def test_dpm_sde_draws_its_step_noise_from_each_image_generator(
    torch_pipeline, diffusers_reference
) -> None:
    sde = request(scheduler=Scheduler.DPM_SOLVER_PP_2M_SDE, num_images=2)
    ours = pixels(torch_pipeline(sde))
    assert max_pixel_difference(ours, reference_images(diffusers_reference, sde)) <= 2
    # The control: the same seed without the per-step noise is another image, by far more than
    # the tolerance, so the parity above covers the noise the SDE solver adds.
    deterministic = pixels(
        torch_pipeline(request(scheduler=Scheduler.DPM_SOLVER_PP_2M, num_images=2))
    )
    assert max_pixel_difference(ours, deterministic) > 10
    # Each image's noise comes from its own generator: image 1 alone (seed 6) is image 1 here.
    second = pixels(torch_pipeline(request(scheduler=Scheduler.DPM_SOLVER_PP_2M_SDE, seed=6)))
    assert max_pixel_difference(ours[1:], second) <= 1
