"""The hostile cases, one row each: which RPC, what request, which status codes the contract allows.

Expected codes come from the ``.proto`` comments and issue 12, never from today's behaviour.
Where the contract leaves two answers open (a 10 KB token on ``GetConcept`` is either refused or
simply unknown) a row allows both; INTERNAL and UNKNOWN are never allowed.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from tests.integration import hostile_payloads as payloads
from textinv_client.pb.v1 import concepts_pb2, generate_pb2, jobs_pb2, server_info_pb2

Code = grpc.StatusCode
OK = Code.OK
BAD = frozenset({Code.INVALID_ARGUMENT})
MB = 1 << 20

# The limits the module's server runs with (flags of ``textinv serve``), small so cases are fast.
SERVER_FLAGS = [
    "--max-request-bytes", str(4 * MB),
    "--max-image-pixels", str(64 * 64),
    "--max-images-per-request", "2",
    "--max-steps", "4",
    "--max-prompt-chars", "300",
    "--max-concepts-per-prompt", "3",
    "--max-concept-file-bytes", str(1 * MB),
    "--max-images-per-job", "4",
    "--max-concurrent-jobs", "1",
    "--max-queued-jobs", "3",
    "--max-job-steps", "50",
    "--max-batch", "2",
    "--batch-wait-ms", "5",
    "--max-queue", "8",
]  # fmt: skip


@dataclass(frozen=True)
class Context:
    """What cases may refer to: a job that exists (cancelled) and a concept that exists."""

    job_id: str
    concept_token: str


@dataclass(frozen=True)
class Case:
    name: str
    rpc: str
    request: Callable[[Context], Any]
    expect: frozenset[grpc.StatusCode]
    words: tuple[str, ...] = ()  # what the error details must name
    check: Callable[[Any, Context], None] | None = None  # on success, the reply must pass this


def gen(**fields: Any) -> Callable[[Context], generate_pb2.GenerateRequest]:
    values: dict[str, Any] = {"prompt": "a red star", "steps": 1, "seed": 1}
    values |= {"width": 32, "height": 32} | fields
    return lambda _: generate_pb2.GenerateRequest(**values)


def img2img(data: bytes, **fields: Any) -> Callable[[Context], generate_pb2.GenerateRequest]:
    """A generate request from ``data``: 4 steps, so the default strength runs 3 of them."""
    return gen(init_image=data, steps=4, width=0, height=0, **fields)


def job(
    images: list[jobs_pb2.TrainingImage] | None = None, **params: Any
) -> Callable[[Context], jobs_pb2.CreateInversionJobRequest]:
    values: dict[str, Any] = {"token": "<hostile-job>", "init_text": "toy", "steps": 2}
    values |= params
    chosen = images if images is not None else [training_image(payloads.image_bytes("PNG"))]
    return lambda _: jobs_pb2.CreateInversionJobRequest(
        images=chosen, params=jobs_pb2.InversionParams(**values), skip_register=True
    )


def training_image(data: bytes, filename: str = "a.png", **fields: Any) -> jobs_pb2.TrainingImage:
    return jobs_pb2.TrainingImage(data=data, filename=filename, **fields)


def register(data: bytes, filename: str = "c.pt", **fields: Any) -> Callable[[Context], Any]:
    return lambda _: concepts_pb2.RegisterConceptRequest(
        data=data, filename=filename, replace=True, **fields
    )


def page_token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def two_wrapped_seeds(reply: generate_pb2.GenerateResponse, _: Context) -> None:
    assert [image.seed for image in reply.images] == [2**64 - 1, 0], reply.images


def stream_ends_with_two_images(replies: list[Any], _: Context) -> None:
    assert replies and replies[-1].WhichOneof("event") == "result", replies
    assert [image.seed for image in replies[-1].result.images] == [2**64 - 1, 0]


def no_jobs(reply: jobs_pb2.ListJobsResponse, _: Context) -> None:
    assert list(reply.jobs) == [], "states [UNSPECIFIED] matches nothing"


def empty_file(reply: jobs_pb2.GetJobResponse, _: Context) -> None:
    assert reply.file == b"", "a job that has not SUCCEEDED returns no file"
    assert reply.job.state == jobs_pb2.JOB_STATE_CANCELLED, reply.job


def final_state_only(replies: list[jobs_pb2.WatchJobResponse], _: Context) -> None:
    assert len(replies) == 1 and replies[0].job.state == jobs_pb2.JOB_STATE_CANCELLED, replies


def reports_the_flags(reply: server_info_pb2.GetServerInfoResponse, _: Context) -> None:
    limits = reply.limits
    assert (limits.max_steps, limits.max_prompt_chars, limits.max_image_pixels) == (4, 300, 4096)
    assert limits.max_concept_file_bytes == MB and limits.max_request_bytes == 4 * MB


def _generate_cases() -> list[Case]:
    either = frozenset({OK, Code.INVALID_ARGUMENT})
    return [
        Case("seed 2**64-1, 2 images wraps", "Generate", gen(seed=2**64 - 1, num_images=2),
             frozenset({OK}), check=two_wrapped_seeds),
        Case("prompt of 1 MB", "Generate", gen(prompt="a" * MB), BAD, ("prompt",)),
        Case("negative prompt of 1 MB", "Generate", gen(negative_prompt="b " * (MB // 2)), BAD,
             ("negative_prompt",)),
        Case("format fields in a prompt are text", "Generate",
             gen(prompt="a {0.__class__} {:999999999} star"), frozenset({OK})),
        Case("NUL characters in a prompt", "Generate", gen(prompt="a \x00\x00 star"), either),
        Case("steps 2**32-1", "Generate", gen(steps=2**32 - 1), BAD, ("steps",)),
        Case("width 2**32-8", "Generate", gen(width=2**32 - 8), BAD, ("width",)),
        Case("8 × (2**32-8) pixels", "Generate", gen(width=8, height=2**32 - 8), BAD),
        Case("guidance inf", "Generate", gen(guidance_scale=float("inf")), BAD, ("guidance",)),
        Case("num_images 2**32-1", "Generate", gen(num_images=2**32 - 1), BAD, ("num_images",)),
        Case("unknown concept", "Generate", gen(prompt="a <nobody-here> star"),
             frozenset({Code.NOT_FOUND}), ("<nobody-here>",)),
        Case("stream: seed 2**64-1, 2 images", "GenerateStream",
             gen(seed=2**64 - 1, num_images=2), frozenset({OK}), check=stream_ends_with_two_images),
        Case("stream: prompt of 1 MB", "GenerateStream", gen(prompt="x" * MB), BAD, ("prompt",)),
        Case("stream: scheduler 2**31-1", "GenerateStream", gen(scheduler=2**31 - 1), BAD),
        Case("init image claiming 60000×60000", "Generate",
             img2img(payloads.png_bomb(60_000, 60_000)), BAD, ("init_image",)),
        Case("init image claiming 3000×3000 (over max_init_image_pixels)", "Generate",
             img2img(payloads.png_bomb(3_000, 3_000)), BAD, ("init_image", "3000")),
        Case("truncated init image", "Generate",
             img2img(payloads.truncated(payloads.image_bytes("PNG"))), BAD, ("init_image",)),
        Case("GIF init image", "Generate", img2img(payloads.image_bytes("GIF")), BAD,
             ("init_image",)),
        Case("strength nan", "Generate",
             img2img(payloads.image_bytes("PNG"), strength=float("nan")), BAD, ("strength",)),
        Case("strength without an init image", "Generate", gen(strength=0.5), BAD, ("strength",)),
        Case("clip_skip 2**32-1", "Generate", gen(clip_skip=2**32 - 1), BAD, ("clip_skip",)),
        Case("prompt_2 of 1 MB", "Generate", gen(prompt_2="c" * MB), BAD, ("prompt_2",)),
        Case("prompt_2 on a model with one text encoder", "Generate", gen(prompt_2="a dog"), BAD,
             ("prompt_2", "SDXL")),
        Case("negative_prompt_2 of 1 MB", "Generate", gen(negative_prompt_2="d " * (MB // 2)),
             BAD, ("negative_prompt_2",)),
        Case("valid WebP init image is accepted", "Generate",
             img2img(payloads.image_bytes("WEBP", side=32)), frozenset({OK})),
    ]  # fmt: skip


def _concept_file_cases() -> list[Case]:
    strided = payloads.strided_pt
    return [
        Case(".pt: 4M×32 expanded view of 1 element", "RegisterConcept",
             register(strided(4_000_000)), BAD),
        Case(".pt: 50000×768 expanded view", "RegisterConcept",
             register(strided(50_000, 768)), BAD),
        Case("a1111 .pt: 4M×32 expanded view", "RegisterConcept",
             register(strided(4_000_000, layout="a1111")), BAD),
        Case("kohya .pt: 4M×32 expanded view", "RegisterConcept",
             register(strided(4_000_000, layout="kohya")), BAD),
        Case(".pt: overlapping as_strided rows", "RegisterConcept",
             register(payloads.overlapping_pt(1_000_000)), BAD),
        Case(".pt: meta tensor", "RegisterConcept", register(payloads.meta_pt()), BAD),
        Case(".pt: a billion shared list leaves", "RegisterConcept",
             register(payloads.shared_list_pt()), BAD),
        Case("pickle that runs code", "RegisterConcept",
             register(payloads.pickle_with_code()), BAD),
        Case("safetensors: header length 2**62", "RegisterConcept",
             register(payloads.safetensors_huge_length(), "h.safetensors"), BAD),
        Case("safetensors: shape [2**31, 32] over 128 B", "RegisterConcept",
             register(payloads.safetensors_lying_shape(), "l.safetensors"), BAD),
        Case("safetensors: JSON nested 100000 deep", "RegisterConcept",
             register(payloads.safetensors_deep_header(), "d.safetensors"), BAD),
        Case("safetensors: non-numeric steps '²'", "RegisterConcept",
             register(payloads.safetensors_metadata("<meta-steps>", {"textinv.steps": "²"}),
                      "m.safetensors"), frozenset({OK, Code.INVALID_ARGUMENT})),
        Case("safetensors: format_version '٣'x1000", "RegisterConcept",
             register(payloads.safetensors_metadata(
                 "<meta-v>", {"textinv.format_version": "٣" * 1000}), "v.safetensors"),
             frozenset({OK, Code.INVALID_ARGUMENT})),
        Case("SDXL: empty clip_g", "RegisterConcept",
             register(payloads.sdxl_empty_clip_g(), "x.safetensors"), BAD),
        Case("token of 10 KB", "RegisterConcept",
             register(payloads.concept_file(), token="<" + "t" * 10_000 + ">"), BAD, ("token",)),
        Case("filename of 10 KB (its stem is the token)", "RegisterConcept",
             register(payloads.concept_file(), "f" * 10_000 + ".pt"), BAD),
        Case("file over max_concept_file_bytes", "RegisterConcept",
             register(bytes(2 * MB)), BAD),
        Case("request over max_request_bytes", "RegisterConcept",
             register(bytes(5 * MB)), frozenset({Code.RESOURCE_EXHAUSTED})),
        Case("empty file", "RegisterConcept", register(b""), BAD),
    ]  # fmt: skip


def _concept_read_cases() -> list[Case]:
    unknown = frozenset({Code.NOT_FOUND, Code.INVALID_ARGUMENT})
    return [
        Case("concepts: page token '²'", "ListConcepts",
             lambda _: concepts_pb2.ListConceptsRequest(page_token=page_token("²")),
             frozenset({OK, Code.INVALID_ARGUMENT})),
        Case("concepts: page token of 1 MB", "ListConcepts",
             lambda _: concepts_pb2.ListConceptsRequest(page_token="A" * MB), BAD, ("page_token",)),
        Case("concepts: page_size 2**32-1", "ListConcepts",
             lambda _: concepts_pb2.ListConceptsRequest(page_size=2**32 - 1),
             frozenset({OK, Code.INVALID_ARGUMENT})),
        Case("get: token of 10 KB", "GetConcept",
             lambda _: concepts_pb2.GetConceptRequest(token="<" + "g" * 10_000 + ">"), unknown),
        Case("get: the file of a concept", "GetConcept",
             lambda c: concepts_pb2.GetConceptRequest(token=c.concept_token, include_file=True),
             frozenset({OK})),
        Case("delete: token of 10 KB", "DeleteConcept",
             lambda _: concepts_pb2.DeleteConceptRequest(token="d" * 10_000), unknown),
        Case("delete: unknown token", "DeleteConcept",
             lambda _: concepts_pb2.DeleteConceptRequest(token="<never-was>"),
             frozenset({Code.NOT_FOUND}), ("<never-was>",)),
    ]  # fmt: skip


def job_with_request_id(request_id: str) -> Callable[[Context], jobs_pb2.CreateInversionJobRequest]:
    make = job()

    def request(context: Context) -> jobs_pb2.CreateInversionJobRequest:
        message = make(context)
        message.request_id = request_id
        return message

    return request


def _job_parameter_cases() -> list[Case]:
    png = payloads.image_bytes("PNG")
    return [
        Case("request_id of 1 MB", "CreateInversionJob", job_with_request_id("r" * MB), BAD,
             ("request_id",)),
        Case("request_id with a newline", "CreateInversionJob", job_with_request_id("a\nb"), BAD,
             ("request_id",)),
        Case("num_vectors 10**9", "CreateInversionJob", job(num_vectors=10**9), BAD,
             ("num_vectors",)),
        Case("num_vectors 17", "CreateInversionJob", job(num_vectors=17), BAD, ("num_vectors",)),
        Case("steps 2**31", "CreateInversionJob", job(steps=2**31), BAD, ("steps",)),
        Case("resolution 2**20", "CreateInversionJob", job(resolution=2**20), BAD, ("resolution",)),
        Case("resolution 12", "CreateInversionJob", job(resolution=12), BAD, ("resolution",)),
        # Messages name the server's limits (--max-job-steps 50, max_training_resolution 1024),
        # not the trainer's wider ones.
        Case("steps 10**9 names max_job_steps", "CreateInversionJob", job(steps=10**9), BAD,
             ("params.steps must be 1..50,",)),
        Case("resolution 2048 names max_training_resolution", "CreateInversionJob",
             job(resolution=2048), BAD, ("8..1024,",)),
        Case("batch_size 64 at resolution 1024 (over max_training_pixels_per_step)",
             "CreateInversionJob", job(batch_size=64, resolution=1024), BAD,
             ("params.batch_size", "params.resolution", str(4 * 512 * 512))),
        Case("batch_size 10**6", "CreateInversionJob", job(batch_size=10**6), BAD, ("batch_size",)),
        Case("grad_accum 2**31", "CreateInversionJob", job(grad_accum=2**31), BAD, ("grad_accum",)),
        Case("warmup_steps 2**32-1", "CreateInversionJob", job(warmup_steps=2**32 - 1), BAD,
             ("warmup_steps",)),
        Case("learning_rate -1", "CreateInversionJob", job(learning_rate=-1.0), BAD,
             ("learning_rate",)),
        Case("learning_rate NaN", "CreateInversionJob", job(learning_rate=float("nan")), BAD,
             ("learning_rate",)),
        Case("learning_rate inf", "CreateInversionJob", job(learning_rate=float("inf")), BAD,
             ("learning_rate",)),
        Case("precision 99", "CreateInversionJob", job(precision=99), BAD, ("precision",)),
        Case("property 99", "CreateInversionJob", job(property=99), BAD, ("property",)),
        Case("lr_schedule 99", "CreateInversionJob", job(lr_schedule=99), BAD, ("lr_schedule",)),
        Case("init_text of 1 MB", "CreateInversionJob", job(init_text="toy " * (MB // 4)), BAD,
             ("init_text",)),
        Case("job token of 10 KB", "CreateInversionJob", job(token="<" + "j" * 10_000 + ">"), BAD,
             ("token",)),
        Case("caption of 1 MB", "CreateInversionJob",
             job([training_image(png, caption="a photo of {} " + "c" * MB)]), BAD, ("caption",)),
        Case("image filename of 10 KB", "CreateInversionJob",
             job([training_image(png, filename="n" * 10_000 + ".png")]), BAD, ("filename",)),
    ]  # fmt: skip


def _job_image_cases() -> list[Case]:
    def one(data: bytes, filename: str = "a.png") -> Callable[[Context], Any]:
        return job([training_image(data, filename)])

    jpeg = payloads.image_bytes("JPEG")
    return [
        Case("PNG claiming 60000×60000", "CreateInversionJob",
             one(payloads.png_bomb(60_000, 60_000)), BAD, ("a.png",)),
        Case("PNG claiming 9000×9000 (under PIL's bomb limit)", "CreateInversionJob",
             one(payloads.png_bomb(9_000, 9_000)), BAD, ("a.png",)),
        Case("PNG claiming 3000×3000 (over max_training_image_pixels)", "CreateInversionJob",
             one(payloads.png_bomb(3_000, 3_000)), BAD, ("a.png", str(2048 * 2048))),
        Case("GIF upload", "CreateInversionJob", one(payloads.image_bytes("GIF"), "a.gif"), BAD,
             ("a.gif",)),
        Case("TIFF upload", "CreateInversionJob", one(payloads.image_bytes("TIFF"), "a.tif"), BAD,
             ("a.tif",)),
        Case("BMP upload", "CreateInversionJob", one(payloads.image_bytes("BMP"), "a.bmp"), BAD,
             ("a.bmp",)),
        Case("truncated PNG", "CreateInversionJob",
             one(payloads.truncated(payloads.image_bytes("PNG"))), BAD, ("a.png",)),
        Case("truncated JPEG", "CreateInversionJob", one(payloads.truncated(jpeg), "a.jpg"), BAD,
             ("a.jpg",)),
        Case("a 1×1 PNG", "CreateInversionJob", one(payloads.image_bytes("PNG", side=1)), BAD,
             ("a.png",)),
        Case("valid JPEG is accepted", "CreateInversionJob", one(jpeg, "a.jpg"), frozenset({OK})),
        Case("valid WebP is accepted", "CreateInversionJob",
             one(payloads.image_bytes("WEBP"), "a.webp"), frozenset({OK})),
        Case("5 images over max_images_per_job 4", "CreateInversionJob",
             job([training_image(jpeg, "a.jpg")] * 5), BAD, ("images",)),
    ]  # fmt: skip


def _job_read_cases() -> list[Case]:
    unknown = frozenset({Code.NOT_FOUND, Code.INVALID_ARGUMENT})
    return [
        Case("get: a cancelled job with include_file", "GetJob",
             lambda c: jobs_pb2.GetJobRequest(job_id=c.job_id, include_file=True),
             frozenset({OK}), check=empty_file),
        Case("get: job id of 10 KB", "GetJob",
             lambda _: jobs_pb2.GetJobRequest(job_id="i" * 10_000), unknown),
        Case("list: states [0]", "ListJobs",
             lambda _: jobs_pb2.ListJobsRequest(states=[0]),  # type: ignore[list-item]
             frozenset({OK}), check=no_jobs),
        Case("list: states [99]", "ListJobs",
             lambda _: jobs_pb2.ListJobsRequest(states=[99]),  # type: ignore[list-item]
             BAD, ("states",)),
        Case("list: page token '²'", "ListJobs",
             lambda _: jobs_pb2.ListJobsRequest(page_token=page_token("²")), BAD, ("page_token",)),
        Case("list: page token of 30 digits", "ListJobs",
             lambda _: jobs_pb2.ListJobsRequest(page_token=page_token("9" * 30)),
             frozenset({OK, Code.INVALID_ARGUMENT})),
        Case("list: page_size 2**32-1", "ListJobs",
             lambda _: jobs_pb2.ListJobsRequest(page_size=2**32 - 1),
             frozenset({OK, Code.INVALID_ARGUMENT})),
        Case("cancel: unknown job", "CancelJob", lambda _: jobs_pb2.CancelJobRequest(job_id="nope"),
             frozenset({Code.NOT_FOUND}), ("nope",)),
        Case("cancel: job id of 10 KB", "CancelJob",
             lambda _: jobs_pb2.CancelJobRequest(job_id="k" * 10_000), unknown),
        Case("watch: unknown job", "WatchJob", lambda _: jobs_pb2.WatchJobRequest(job_id="nope"),
             frozenset({Code.NOT_FOUND}), ("nope",)),
        Case("watch: a cancelled job sends its final state", "WatchJob",
             lambda c: jobs_pb2.WatchJobRequest(job_id=c.job_id), frozenset({OK}),
             check=final_state_only),
        Case("server info reports the flags", "GetServerInfo",
             lambda _: server_info_pb2.GetServerInfoRequest(), frozenset({OK}),
             check=reports_the_flags),
    ]  # fmt: skip


CASES: list[Case] = (
    _generate_cases()
    + _concept_file_cases()
    + _concept_read_cases()
    + _job_parameter_cases()
    + _job_image_cases()
    + _job_read_cases()
)
