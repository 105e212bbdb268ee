"""The ``torch`` backend: the base model's own modules, on the CPU or a CUDA device.

The text encoder runs through ``EmbeddingsTextEncoder`` (embeddings in, never token ids). The
interface stays float32 and the backend casts at the boundary. The fast CUDA path
(``TorchOptions``), as stable-fast and the TensorRT demo take it:

- bf16/fp16 weights, cast in place at load (the model's modules are the backend's from then on);
- SDPA attention: diffusers' default ``AttnProcessor2_0`` (``F.scaled_dot_product_attention``,
  flash or memory-efficient kernels on CUDA); checked at load and set wherever it is missing;
- channels-last UNet (NHWC convolutions, the layout tensor cores want);
- ``cudnn.benchmark`` on CUDA (set whenever the backend's device is CUDA; see ``TorchBackend``);
- ``torch.compile`` of the UNet, one static graph per input shape (``dynamic=False``): CUDA graphs
  want static shapes, a server sees a handful of them (fixed per batch: images × size × guidance),
  and static kernels are the fastest inductor makes. A new shape compiles anew (for SD 1.5's
  UNet a minute or more cold, less from inductor's on-disk cache; a server should warm up the
  shapes it serves), up to dynamo's ``recompile_limit`` (8 in torch 2.13, as
  ``CudaGraphUNet.max_graphs``); past it dynamo runs the UNet eagerly. Marking batch and size
  dynamic instead would compile once, into kernels for any shape, which the CUDA-graph capture
  below pins to one shape each anyway. The stable-fast configuration is the two together:
  compile, then CUDA graphs;
- the UNet captured as a CUDA graph per static input shape and replayed every step: one launch
  instead of about a thousand kernels, and no Python on the step's critical path.

Classifier-free guidance's two halves arrive as one batch (the pipeline's one UNet call).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from textinv.dtypes import precision_of, torch_dtype
from textinv.errors import InvalidInputError
from textinv.hardware import PrecisionChoice, log_precision, resolve_model_precision
from textinv.model import BaseModel
from textinv.sdxl_text import SdxlTextEncoders
from textinv.text_encoder import EmbeddingsTextEncoder
from textinv_client.choices import Precision
from textinv_server.backends import BackendName, ShapeLimits, TorchOptions

log = logging.getLogger(__name__)

# (sample [B, C, h, w], timestep [B], encoder_hidden_states [B, T, D]) -> noise [B, C, h, w]
# (sample, timestep, encoder_hidden_states[, text_embeds, time_ids]) → noise_pred; SDXL's UNet
# takes the last two (its added conditioning) as well.
UNetForward = Callable[..., torch.Tensor]
SDPA_PROCESSOR = "AttnProcessor2_0"
ADDED_CONDITIONS = ("text_embeds", "time_ids")  # SDXL's added_cond_kwargs


class TorchBackend:
    name = BackendName.TORCH

    def __init__(
        self,
        model: BaseModel,
        *,
        options: TorchOptions | None = None,
        channels_last: bool = False,
        limits: ShapeLimits | None = None,
    ) -> None:
        options = options or TorchOptions()
        if channels_last:
            options = replace(options, channels_last=True)
        self.options = options
        self.model_hash = model.model_hash
        self.device = model.unet.device
        if options.cuda_graph and self.device.type != "cuda":
            raise InvalidInputError(
                f"cuda_graph needs the model on a CUDA device; it is on {self.device}"
            )
        if self.device.type == "cuda":
            # Shapes are fixed per batch and recur every step, so cuDNN's autotuning (it times
            # the convolution algorithms for each new shape once, then reuses the fastest) pays
            # after the first step. Process-wide, as torch has it.
            torch.backends.cudnn.benchmark = True
        self.precision = weights_precision(options.weights, model)
        log_precision(self.precision, "the torch backend")
        if torch_dtype(self.precision.precision) != model.unet.dtype:
            for module in model.modules:
                module.to(torch_dtype(self.precision.precision))
        self.dtype = model.unet.dtype
        # SDXL's VAE overflows in fp16: it stays in fp32, as diffusers upcasts it.
        if model.is_sdxl and self.dtype == torch.float16 and model.vae.config.force_upcast:
            model.vae.float()
        self.vae_dtype = model.vae.dtype
        self.limits = limits or ShapeLimits()
        self.attention = use_sdpa(model.unet, model.vae)
        self.text_encoder = EmbeddingsTextEncoder(model.text_encoder).eval()
        self.sdxl_text = None
        if model.text_encoder_2 is not None:
            self.sdxl_text = SdxlTextEncoders(model.text_encoder, model.text_encoder_2).eval()
        self.unet = model.unet
        self.vae = model.vae
        self.memory_format = torch.contiguous_format
        if options.channels_last:
            self.memory_format = torch.channels_last
            self.unet.to(memory_format=torch.channels_last)
        self._unet_forward = self._build_unet_forward()

    def _build_unet_forward(self) -> UNetForward:
        module: Callable[..., tuple[torch.Tensor, ...]] = self.unet
        if self.options.compile:
            # One static graph per input shape (module docstring: why not dynamic).
            module = torch.compile(self.unet, backend=self.options.compile_backend, dynamic=False)

        def forward(
            sample: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor, *added: torch.Tensor
        ) -> torch.Tensor:
            extra = dict(zip(ADDED_CONDITIONS, added, strict=True)) if added else None
            out = module(sample, t, hidden, added_cond_kwargs=extra, return_dict=False)
            return out[0]

        return CudaGraphUNet(forward) if self.options.cuda_graph else forward

    @torch.inference_mode()
    def encode_text(
        self, inputs_embeds: torch.Tensor, eos_positions: torch.Tensor, clip_skip: torch.Tensor
    ) -> torch.Tensor:
        hidden, _ = self.text_encoder(
            inputs_embeds.to(self.device, self.dtype),
            eos_positions.to(self.device),
            clip_skip.to(self.device),
        )
        return hidden.float()  # [B, T, D]

    @torch.inference_mode()
    def encode_text_sdxl(
        self,
        inputs_embeds: torch.Tensor,
        inputs_embeds_2: torch.Tensor,
        eos_positions: torch.Tensor,
        clip_skip: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.sdxl_text is not None, "the pipeline checks that the model is SDXL"
        hidden, pooled = self.sdxl_text(
            inputs_embeds.to(self.device, self.dtype),
            inputs_embeds_2.to(self.device, self.dtype),
            eos_positions.to(self.device),
            clip_skip.to(self.device),
        )
        return hidden.float(), pooled.float()  # [B, T, D1 + D2], [B, P]

    @torch.inference_mode()
    def predict_noise(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        sample = sample.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)
        hidden = encoder_hidden_states.to(self.device, self.dtype)
        # SDXL: text_embeds and time_ids, in ADDED_CONDITIONS' order
        extra = [added[name].to(self.device, self.dtype) for name in ADDED_CONDITIONS if added]
        noise = self._unet_forward(sample, timestep.to(self.device), hidden, *extra)
        # A copy, always: a CUDA graph's output buffer is overwritten by the next replay.
        return noise.to(torch.float32, copy=True).contiguous()  # [B, C, h, w]

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(images.to(self.device, self.vae_dtype)).latent_dist
        return posterior.parameters.float()  # [B, 2C, h, w]

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(latents.to(self.device, self.vae_dtype), return_dict=False)[0]
        return images.float()  # [B, 3, H, W]

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def weights_precision(weights: Precision | None, model: BaseModel) -> PrecisionChoice:
    """The precision the backend runs ``model`` in: ``weights`` resolved for its device (``auto``
    follows the processor), or, for None, the dtype it was loaded in."""
    if weights is None:
        return PrecisionChoice(precision_of(model.unet.dtype), "as loaded")
    return resolve_model_precision(weights, model.unet)


def use_sdpa(*modules: torch.nn.Module) -> tuple[str, ...]:
    """Make every attention layer use SDPA (``AttnProcessor2_0``); returns the processor names
    found before (diffusers picks it by default where ``F.scaled_dot_product_attention`` exists,
    so this normally changes nothing and only checks)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    found: set[str] = set()
    for module in modules:
        processors = getattr(module, "attn_processors", None)
        if not processors:
            continue
        names = {type(p).__name__ for p in processors.values()}
        found |= names
        if names != {SDPA_PROCESSOR}:
            log.info("%s: attention %s replaced by SDPA", type(module).__name__, sorted(names))
            module.set_attn_processor(AttnProcessor2_0())  # type: ignore[operator]
    return tuple(sorted(found))


@dataclass
class _Captured:
    """One captured graph and its static tensors (inputs are copied in, output read out)."""

    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]  # sample, timestep, hidden states[, SDXL's added]
    output: torch.Tensor


class CudaGraphUNet:
    """A UNet forward captured once per static input shape, then replayed (CUDA only).

    Shapes are fixed per batch (size, images, guidance), so a server sees a handful of them; the
    graphs share one memory pool and one capture stream. Beyond ``max_graphs`` shapes it runs
    eagerly. Capture and replay happen on the inputs' device, whatever the current one is.
    """

    def __init__(self, forward: UNetForward, *, warmup: int = 2, max_graphs: int = 8) -> None:
        self.forward = forward
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.graphs: dict[tuple[object, ...], _Captured] = {}
        self._pool: Any = None  # the first graph's memory pool, shared by the others
        # torch.cuda.graph's default capture stream is created once, on the device current at
        # first use; ours is on the inputs' device, and the same for every graph of the pool.
        self._stream: torch.cuda.Stream | None = None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``(sample, timestep, hidden states[, text_embeds, time_ids])`` → the noise."""
        sample = inputs[0]
        shapes = tuple(tuple(tensor.shape) for tensor in inputs)
        key = (shapes, sample.dtype, sample.is_contiguous())
        with torch.cuda.device(sample.device):
            captured = self.graphs.get(key)
            if captured is None:
                if len(self.graphs) >= self.max_graphs:
                    return self.forward(*inputs)
                captured = self.graphs[key] = self._capture(inputs)
            # Copies and replay on the current stream of the inputs' device, in order.
            for static, given in zip(captured.inputs, inputs, strict=True):
                static.copy_(given)
            captured.graph.replay()
            return captured.output

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> _Captured:
        """Called with the inputs' device current (``__call__``)."""
        device = inputs[0].device
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        stream, current = self._stream, torch.cuda.current_stream(device)
        # clone() keeps the memory format (channels-last stays channels-last).
        static = tuple(tensor.clone() for tensor in inputs)
        # Warm up on the side stream (cuDNN/cuBLAS pick algorithms, lazy init happens) first,
        # after the clones above (written on the current stream).
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.forward(*static)
        current.wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # torch.cuda.graph synchronizes the (current) device before it begins capturing.
        with torch.cuda.graph(graph, pool=self._pool, stream=stream):
            output = self.forward(*static)
        if self._pool is None:
            self._pool = graph.pool()
        return _Captured(graph, static, output)
