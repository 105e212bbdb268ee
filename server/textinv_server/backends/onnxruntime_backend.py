"""The ``onnxruntime`` backend: the export stage's graphs, on the CPU, CUDA or TensorRT provider
(chosen and checked in ``ort_providers``).

It loads through the export manifest (``textinv_export.manifest.load_manifest``), which refuses
graphs exported from another model, or altered since; it checks only what it reads (the three
generation components, the VAE encoder where the export has one, and of each the files its
provider loads). Graph names, inputs and outputs
come from each component's spec in the manifest, never from constants here. The CPU and CUDA
providers run the graphs optimized for onnxruntime; the TensorRT provider parses the raw fp32
exports, as the export stage intends, with the spec's shape profile and the manifest's precision.

Every call binds tensors by address (I/O binding): the inputs where they are, on
``backend.device``, and the first output into a torch tensor allocated there from the spec's
output shapes. On the CPU that is the same code path the GPU providers run, with
``device_type="cpu"``; with the CUDA or TensorRT provider the latents stay on the GPU for the whole
loop (no host copy per step), and ``backend.device`` is ``cuda:N``.

On the CPU the UNet's and the text encoder's batch (guidance's unconditional and conditional
halves) is split in two, and the halves run at once, each on half the threads (``CpuThreads``).
At the sizes a CPU serves, most of the graph's operators are too small for onnxruntime to spread
one of them over several threads well; two independent halves keep every core busy. Each image's
numbers do not change: the batch's items never mix in these graphs.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

from textinv.choices import parse_input
from textinv.hardware import PrecisionChoice, physical_cores
from textinv_export.manifest import ComponentEntry, load_manifest
from textinv_export.specs import (
    Component,
    ComponentSpec,
    Shape,
    TensorSpec,
)
from textinv_server.backends import BackendName
from textinv_server.backends.exported import (
    IMG2IMG_COMPONENTS,
    generation_components,
    sdxl_text,
    shape_limits,
    text_encoder_inputs,
    unet_inputs,
)
from textinv_server.backends.ort_providers import (
    check_available,
    check_provider,
    loaded_files,
    provider_options,
)
from textinv_server.choices import Provider

log = logging.getLogger(__name__)
# The components whose batch the CPU provider splits (their batch is guidance's two halves);
# the VAE decoder's batch is the images, mostly one, so it keeps every thread for itself.
SPLIT_COMPONENTS = (Component.TEXT_ENCODER, Component.TEXT_ENCODER_2, Component.UNET)
BATCH_AXIS = "batch"  # the specs' name of the axis a split cuts
# Graph I/O dtypes as the specs name them (numpy names) → torch's.
_TORCH_DTYPES = {"float32": torch.float32, "int64": torch.int64}


@dataclass(frozen=True)
class CpuThreads:
    """How the CPU provider spends its threads on a split graph: ``workers`` parts of a batch
    run at once, each with ``threads_per_run`` intra-op threads (never more than asked in all)."""

    workers: int
    threads_per_run: int

    @classmethod
    def plan(cls, threads: int, split: bool = True) -> CpuThreads:
        """``threads`` (0: onnxruntime's default, the physical cores) in two halves when there
        are two to give."""
        total = threads if threads > 0 else physical_cores()
        workers = 2 if split and total >= 2 else 1
        return cls(workers, total // workers)

    def describe(self) -> str:
        if self.workers == 1:
            return f"one run of {self.threads_per_run} thread(s) per call"
        return f"batch split in {self.workers}, {self.threads_per_run} thread(s) each"


class _Graph:
    """One session with its component's spec, run on ``device`` through I/O binding.

    What a call needs from the spec is looked up once, here, and each output shape once per
    input shapes (a few, within the profile), so a bound call does no more Python work than a
    ``session.run`` with host arrays did. With a ``pool`` of ``workers - 1`` threads, a batch of
    two or more is cut into ``workers`` parts along ``BATCH_AXIS``, run at once (the first on
    the calling thread), each writing its rows of one output tensor.
    """

    def __init__(
        self,
        session: Any,
        spec: ComponentSpec,
        device: torch.device,
        pool: ThreadPoolExecutor | None = None,
        workers: int = 1,
        outputs: int = 1,
    ) -> None:
        self.session = session  # onnxruntime.InferenceSession
        self.spec = spec
        self.device = device
        self._where = (device.type, device.index or 0)  # onnxruntime's device_type, device_id
        # Per input, and per output generation reads (the first; SDXL's second text encoder
        # also its text_embeds; the SD text encoder's pooled output is not computed): name,
        # torch dtype, onnxruntime element type.
        self._inputs = [_tensor_types(t) for t in spec.inputs]
        self._outputs = [_tensor_types(t) for t in spec.outputs[:outputs]]
        self._output_shapes: dict[tuple[Shape, ...], list[Shape]] = {}  # by the inputs' shapes
        self._batched = [t.shape[:1] == (BATCH_AXIS,) for t in spec.inputs]
        splittable = pool is not None and all(
            t.shape[:1] == (BATCH_AXIS,) for t in spec.outputs[:outputs]
        )
        self._pool = pool if splittable else None
        self.workers = workers if splittable else 1

    def run(self, *tensors: torch.Tensor) -> torch.Tensor:
        """The spec's inputs in order → its first output, a tensor on ``device``."""
        return self.run_all(*tensors)[0]

    def run_all(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """The spec's inputs in order → the outputs it reads, tensors on ``device``."""
        # Each input on the device in its graph dtype (no copy when it is already so); `feeds`
        # keeps them alive until the run has read them.
        feeds = [
            t.to(self.device, dtype).contiguous()
            for t, (_, dtype, _) in zip(tensors, self._inputs, strict=True)
        ]
        outputs = [
            torch.empty(shape, dtype=dtype, device=self.device)
            for shape, (_, dtype, _) in zip(self._output_shape(feeds), self._outputs, strict=True)
        ]
        parts = self._parts(outputs[0].shape[0])
        if self._pool is None or len(parts) == 1:
            self._run_bound(feeds, outputs)
            return outputs
        # Rows [lo, hi) of every batched input → the same rows of the outputs (contiguous
        # views, so no concatenation afterwards); the other inputs go whole to every part.
        calls = [
            (
                [
                    self._rows(f, batched, lo, hi)
                    for f, batched in zip(feeds, self._batched, strict=True)
                ],
                [output[lo:hi] for output in outputs],
            )
            for lo, hi in parts
        ]
        others = [self._pool.submit(self._run_bound, *call) for call in calls[1:]]
        try:
            self._run_bound(*calls[0])
        finally:  # every part has finished (or failed) before the call returns or raises
            for other in others:
                other.result()
        return outputs

    def _parts(self, batch: int) -> list[tuple[int, int]]:
        """``[lo, hi)`` row ranges: ``workers`` near-equal parts, fewer for a small batch."""
        count = max(1, min(self.workers, batch))
        bounds = [batch * k // count for k in range(count + 1)]
        return list(itertools.pairwise(bounds))

    @staticmethod
    def _rows(feed: torch.Tensor, batched: bool, lo: int, hi: int) -> torch.Tensor:
        return feed[lo:hi] if batched else feed

    def _run_bound(self, feeds: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> None:
        binding = self.session.io_binding()
        for (name, _, element), feed in zip(self._inputs, feeds, strict=True):
            binding.bind_input(name, *self._where, element, feed.shape, feed.data_ptr())
        for (name, _, element), output in zip(self._outputs, outputs, strict=True):
            binding.bind_output(name, *self._where, element, output.shape, output.data_ptr())
        # GPU: torch wrote the inputs (and may still read the block `output` reuses) on its own
        # stream, and onnxruntime runs on streams it created non-blocking, unordered with torch's.
        # synchronize_inputs waits for the device with the CUDA provider but is a no-op with the
        # TensorRT provider (onnxruntime issue 32673), so wait for torch's stream here, for both.
        # The run returns with its stream synchronized (synchronize_outputs is the documented
        # counterpart): each call is a host wait, as onnxruntime's Python binding has it.
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)  # releases the GIL while it runs
        binding.synchronize_outputs()

    def _output_shape(self, feeds: list[torch.Tensor]) -> list[Shape]:
        key = tuple(tuple(feed.shape) for feed in feeds)
        shapes = self._output_shapes.get(key)
        if shapes is None:
            named = {spec.name: size for spec, size in zip(self.spec.inputs, key, strict=True)}
            every = self.spec.output_shapes(named)
            shapes = self._output_shapes[key] = [every[name] for name, _, _ in self._outputs]
        return shapes


def _tensor_types(spec: TensorSpec) -> tuple[str, torch.dtype, type]:
    """A graph tensor's name, torch dtype and numpy type (onnxruntime's ``element_type``)."""
    return spec.name, _TORCH_DTYPES[spec.dtype], np.dtype(spec.dtype).type


class OnnxRuntimeBackend:
    name = BackendName.ONNXRUNTIME

    def __init__(
        self,
        engines: str | Path,
        model_hash: str,
        *,
        provider: Provider | str = Provider.CPU,
        threads: int = 0,
        verify_checksums: bool = True,
        device_id: int = 0,
        split_batch: bool = True,
    ) -> None:
        self.provider = parse_input(Provider, provider)
        check_available(self.provider)  # before any hashing
        self.folder = Path(engines)
        self.manifest = load_manifest(
            self.folder,
            model_hash,
            verify_checksums=verify_checksums,
            components=generation_components(self.folder),
            files=loaded_files(self.provider),
            optional=IMG2IMG_COMPONENTS,
        )
        self.model_hash = model_hash
        gpu = self.provider is not Provider.CPU
        self.device = torch.device("cuda", device_id) if gpu else torch.device("cpu")
        self.precision = PrecisionChoice(self.manifest.precision, "the export's")
        self.limits = shape_limits(self.manifest)
        # CPU: the split graphs' halves share one pool thread (the caller runs the other half).
        self.cpu_threads = CpuThreads.plan(threads, split=split_batch and not gpu)
        workers = self.cpu_threads.workers
        self._pool = ThreadPoolExecutor(workers - 1, "onnxruntime-half") if workers > 1 else None
        self.text_encoder = self._graph(Component.TEXT_ENCODER, threads)
        self.text_encoder_2 = (  # SDXL's: its hidden states and text_embeds
            self._graph(Component.TEXT_ENCODER_2, threads, outputs=2)
            if self.manifest.model.is_sdxl
            else None
        )
        self.unet = self._graph(Component.UNET, threads)
        self.vae_decoder = self._graph(Component.VAE_DECODER, threads)
        self.vae_encoder = (
            self._graph(Component.VAE_ENCODER, threads) if self.limits.takes_init_image else None
        )
        if not gpu:
            log.info("onnxruntime on the CPU: %s", self.cpu_threads.describe())

    def _graph(self, component: Component, threads: int, outputs: int = 1) -> _Graph:
        entry: ComponentEntry = self.manifest.component(component)
        file = entry.source if self.provider is Provider.TENSORRT else entry.graph
        path = self.folder / file.path
        providers = provider_options(
            self.provider, entry, self.manifest.precision, self.folder, self.device.index or 0
        )
        split = self._pool is not None and component in SPLIT_COMPONENTS
        per_run = self.cpu_threads.threads_per_run if split else threads
        options = _session_options(per_run)
        session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        check_provider(session, self.provider, path)
        if not split:
            return _Graph(session, entry.spec, self.device, outputs=outputs)
        workers = self.cpu_threads.workers
        return _Graph(session, entry.spec, self.device, self._pool, workers, outputs)

    def encode_text(
        self, inputs_embeds: torch.Tensor, eos_positions: torch.Tensor, clip_skip: torch.Tensor
    ) -> torch.Tensor:
        inputs = text_encoder_inputs(
            self.text_encoder.spec, inputs_embeds, eos_positions, clip_skip
        )
        return self.text_encoder.run(*inputs)  # [B, T, D]

    def encode_text_sdxl(
        self,
        inputs_embeds: torch.Tensor,
        inputs_embeds_2: torch.Tensor,
        eos_positions: torch.Tensor,
        clip_skip: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.text_encoder_2 is not None, "the pipeline checks that the model is SDXL"
        first, second = self.text_encoder.run_all, self.text_encoder_2.run_all
        return sdxl_text(first, second, inputs_embeds, inputs_embeds_2, eos_positions, clip_skip)

    def predict_noise(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        spec = self.unet.spec
        inputs = unet_inputs(spec, sample, timestep, encoder_hidden_states, added)
        return self.unet.run(*inputs)  # [B, C, h, w]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae_decoder.run(latents)  # [B, 3, H, W]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        assert self.vae_encoder is not None, "the pipeline checks limits.takes_init_image"
        return self.vae_encoder.run(images)  # [B, 2C, h, w]

    def synchronize(self) -> None:
        """Each run returns with its outputs written (``synchronize_outputs``): nothing to wait
        for."""


def _session_options(threads: int) -> Any:
    options = onnxruntime.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: libraries stay quiet
    return options
