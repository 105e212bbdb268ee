"""The project's closed choices, one ``str`` Enum each, spelled as the command line spells them.

Every side of the wire uses these same classes: the client's requests, the server's typed
requests, the trainer's and the exporter's configs (STYLE: a ``str`` Enum for each closed choice).
They live here, in the torch-free client distribution that everything else depends on, so that the
thin client never imports torch and the core never spells a choice a second time. ``parse`` names
the bad value and the choices in one error.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

C = TypeVar("C", bound="Choice")


class UnknownChoiceError(ValueError):
    """A value that is not one of a closed choice's members (bad input, never a bug)."""


class Choice(str, Enum):
    """Subclasses set ``__choice_name__`` (``"scheduler"``) for the error message."""

    __choice_name__ = "value"

    @classmethod
    def parse(cls: type[C], value: str | C) -> C:
        try:
            return cls(value)
        except ValueError:
            raise UnknownChoiceError(
                f"unknown {cls.__choice_name__} {value!r}; choose one of {cls.spellings()}"
            ) from None

    @classmethod
    def spellings(cls) -> str:
        """``"ddim, euler, ..."``: the members' values, for messages and ``--help``."""
        return ", ".join(member.value for member in cls)

    def __str__(self) -> str:
        # argparse prints defaults and choices with str(): show "fp32", not "Precision.FP32".
        return str(self.value)


class Scheduler(Choice):
    """The noise schedulers; every backend runs diffusers' scheduler classes on the host."""

    __choice_name__ = "scheduler"

    DDIM = "ddim"
    EULER = "euler"
    EULER_ANCESTRAL = "euler-ancestral"
    DPM_SOLVER_PP_2M = "dpmpp-2m"
    PNDM = "pndm"
    DPM_SOLVER_PP_2M_SDE = "dpmpp-2m-sde"

    @property
    def takes_karras_sigmas(self) -> bool:
        """Whether diffusers' class for it has the Karras sigma schedule (``use_karras_sigmas``)."""
        return self in (Scheduler.EULER, Scheduler.DPM_SOLVER_PP_2M, Scheduler.DPM_SOLVER_PP_2M_SDE)


class PromptSyntax(Choice):
    """How a prompt is read: as plain text, or with Automatic1111's emphasis, BREAK, long-prompt
    chunks and ComfyUI's embedding:name."""

    __choice_name__ = "prompt syntax"

    PLAIN = "plain"
    A1111 = "a1111"


class ImageFormat(Choice):
    """The encoding of generated images."""

    __choice_name__ = "image format"

    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"


class Precision(Choice):
    """A floating-point precision: of the frozen model while training, of the torch backend's
    weights, of exported graphs and engines. Each user says which members it accepts."""

    __choice_name__ = "precision"

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    # The torch backend and the trainer: bf16 where the device has a fast bf16 path, else fp32
    # (textinv.hardware.resolve_precision). Exports take fp32 or fp16 only.
    AUTO = "auto"


class ConceptProperty(Choice):
    """What a concept depicts; selects the trainer's prompt templates."""

    __choice_name__ = "property"

    OBJECT = "object"
    STYLE = "style"


class LrSchedule(Choice):
    """Learning-rate schedule of an inversion run: constant, or cosine decay after warm-up."""

    __choice_name__ = "learning-rate schedule"

    CONSTANT = "constant"
    COSINE = "cosine"


class JobState(Choice):
    """Lifecycle of an inversion job."""

    __choice_name__ = "job state"

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
