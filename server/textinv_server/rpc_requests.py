"""The typed value of each concept and job RPC's request, and its one check against ``Limits``.

``textinv_server.convert`` builds these from protobuf and calls ``check`` before anything else
runs, so a bad value is refused at arrival with INVALID_ARGUMENT naming the request field, and the
service behind trusts what it gets. Generation's value is ``textinv_server.requests``'.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, fields
from typing import Any

from textinv.errors import InvalidInputError, quote
from textinv.trainer import InvertConfig, check_config
from textinv_client.choices import JobState
from textinv_server.config import Limits
from textinv_server.jobs import UploadedImage
from textinv_server.requests import check_text

DEFAULT_PAGE_SIZE = 100
# A ListJobs offset has at most this many digits (10^18 jobs is more than any server holds).
MAX_OFFSET_DIGITS = 18

# The trainer's fields a job request sets, named as the request names them (check_config's
# messages then say "params.num_vectors", not the command line's "--vectors").
PARAM_NAMES = {
    "token": "params.token",
    "init": "params.init_text",
    "vectors": "params.num_vectors",
    "learnable_property": "params.property",
    "steps": "params.steps",
    "batch_size": "params.batch_size",
    "grad_accum": "params.grad_accum",
    "lr": "params.learning_rate",
    "scale_lr": "params.scale_lr",
    "lr_schedule": "params.lr_schedule",
    "warmup": "params.warmup_steps",
    "resolution": "params.resolution",
    "precision": "params.precision",
    "seed": "params.seed",
    "checkpoint_every": "params.checkpoint_every",
}
# What a job leaves to the trainer's defaults is named as a server setting in a message.
_SERVER_NAMES = {item.name: f"the server's {item.name}" for item in fields(InvertConfig)}


def check_token_text(name: str, token: str, limits: Limits) -> None:
    check_text(name, token, limits.max_token_chars)
    if not token.strip():
        raise InvalidInputError(f"{name} must not be empty, got {quote(token)}")


# --- concepts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterConceptRequest:
    data: bytes
    filename: str
    token: str | None = None  # None: the token the file stores (or its stem)
    replace: bool = False

    def check(self, limits: Limits) -> None:
        check_text("filename", self.filename, limits.max_filename_chars)
        if not self.data:
            raise InvalidInputError(f"concept file {quote(self.filename)} is empty")
        if len(self.data) > limits.max_concept_file_bytes:
            raise InvalidInputError(
                f"concept file {quote(self.filename)} is {len(self.data)} bytes; the limit is "
                f"{limits.max_concept_file_bytes} bytes"
            )
        if self.token is not None:
            check_token_text("token", self.token, limits)


@dataclass(frozen=True)
class ConceptLookup:
    """GetConcept and DeleteConcept: one concept by token."""

    token: str
    include_file: bool = False

    def check(self, limits: Limits) -> None:
        check_token_text("token", self.token, limits)


@dataclass(frozen=True)
class Page:
    """One page of a list: its size (resolved, 1..max_page_size) and where it starts."""

    size: int
    token: str = ""  # the caller's page token, already checked for length

    def check(self, limits: Limits) -> None:
        check_text("page_token", self.token, limits.max_page_token_chars)

    def after(self) -> str:
        """ListConcepts: the last token of the previous page ("" for the first page)."""
        return decode_page_token(self.token)

    def offset(self) -> int:
        """ListJobs: how many jobs the previous pages held (0 for the first page)."""
        text = decode_page_token(self.token) or "0"
        # str.isdigit accepts "²" and "٣", which int() refuses or reads: ASCII digits only.
        if not (text.isascii() and text.isdigit() and len(text) <= MAX_OFFSET_DIGITS):
            raise foreign_page_token(self.token)
        return int(text)


def page_of(page_size: int, token: str, limits: Limits) -> Page:
    """``page_size`` 0 means the default; a larger one than the limit is capped (see .proto)."""
    page = Page(min(page_size or DEFAULT_PAGE_SIZE, limits.max_page_size), token)
    page.check(limits)
    return page


def encode_page_token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def decode_page_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError, UnicodeError):
        raise foreign_page_token(token) from None


def foreign_page_token(token: str) -> InvalidInputError:
    return InvalidInputError(f"page_token {quote(token)} is not one this server issued")


# --- jobs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobLookup:
    """GetJob, CancelJob and WatchJob: one job by id."""

    job_id: str
    include_file: bool = False

    def check(self, limits: Limits) -> None:
        check_text("job_id", self.job_id, limits.max_job_id_chars)


@dataclass(frozen=True)
class ListJobsRequest:
    # None: every state. An empty tuple: the caller named only JOB_STATE_UNSPECIFIED, which
    # matches no job (as jobs.proto says).
    states: tuple[JobState, ...] | None
    page: Page


@dataclass(frozen=True)
class CreateJobRequest:
    """The images and the complete trainer config of a new job (``images``/``out`` are the job
    manager's to fill in: the folders are made by the server, never named by a request)."""

    images: tuple[UploadedImage, ...]
    config: InvertConfig
    skip_register: bool = False
    request_id: str = ""  # the client's idempotency key

    def check(self, limits: Limits, default_resolution: int | None = None) -> None:
        """Every check that needs no model: counts and lengths first, then the server's limits
        (before the trainer's wider ones, so that a message names the server's bound), then the
        trainer's own checks (``check_config``) in the request's names, then the step's budget.
        ``default_resolution`` (the model's native side) stands in for an unset resolution; None
        leaves such a job's budget unchecked."""
        if not 1 <= len(self.images) <= limits.max_images_per_job:
            raise InvalidInputError(
                f"images must hold 1..{limits.max_images_per_job} images, got {len(self.images)}"
            )
        for index, image in enumerate(self.images):
            _check_image(index, image, limits)
        _check_request_id(self.request_id)
        check_token_text("params.token", self.config.token, limits)
        check_text("params.init_text", self.config.init, limits.max_init_text_chars)
        _check_server_bounds(self.config, limits)
        check_config(self.config, {**_SERVER_NAMES, **PARAM_NAMES})
        _check_step_pixels(self.config, limits, default_resolution)

    def params(self) -> dict[str, Any]:
        """The trainer's fields this job sets, as the job manager stores them."""
        return {name: getattr(self.config, name) for name in PARAM_NAMES}


MAX_REQUEST_ID_CHARS = 64


def _check_request_id(request_id: str) -> None:
    """At most 64 printable ASCII characters, as jobs.proto says (it is stored and compared)."""
    if len(request_id) > MAX_REQUEST_ID_CHARS or not (
        request_id.isascii() and request_id.isprintable()
    ):
        raise InvalidInputError(
            f"request_id must be at most {MAX_REQUEST_ID_CHARS} printable ASCII characters, "
            f"got {quote(request_id)}"
        )


def _check_image(index: int, image: UploadedImage, limits: Limits) -> None:
    where = f"images[{index}]"
    check_text(f"{where}.filename", image.filename, limits.max_filename_chars)
    if not image.data:
        raise InvalidInputError(f"{where} ({quote(image.filename)}) is empty")
    if image.caption is not None:
        check_text(f"{where}.caption", image.caption, limits.max_caption_chars)


def _check_server_bounds(config: InvertConfig, limits: Limits) -> None:
    """``steps`` and ``resolution`` within the server's limits (tighter than the trainer's)."""
    steps, top = config.steps, limits.max_job_steps
    if not (isinstance(steps, int) and 1 <= steps <= top):
        raise InvalidInputError(f"params.steps must be 1..{top}, got {quote(steps)}")
    side, top = config.resolution, limits.max_training_resolution
    if side is not None and not (isinstance(side, int) and 8 <= side <= top and side % 8 == 0):
        raise InvalidInputError(
            f"params.resolution must be a multiple of 8 in 8..{top}, got {quote(side)}"
        )


def _check_step_pixels(
    config: InvertConfig, limits: Limits, default_resolution: int | None
) -> None:
    """batch_size × resolution² within ``max_training_pixels_per_step``: one micro-step's memory
    and time grow with it, and the job thread cannot cancel a micro-step inside."""
    side = config.resolution or default_resolution
    if side is None:
        return
    pixels, top = config.batch_size * side * side, limits.max_training_pixels_per_step
    if pixels > top:
        shown = f"{side}" if config.resolution else f"{side} (the model's native resolution)"
        raise InvalidInputError(
            f"params.batch_size × params.resolution² must be at most {top} pixels per step, "
            f"got {config.batch_size} × {shown}² = {pixels}"
        )
