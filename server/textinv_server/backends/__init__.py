"""The small interface the generation pipeline runs over, and the factory for its three backends.

A backend owns the three compute graphs (text encoder on embeddings, UNet, VAE decoder) and where
they run. Everything else (tokenizing, the concept splice, schedulers, noise, guidance, PNG) is
the pipeline's, written once. Tensors cross the interface as ``torch.Tensor`` in float32 on
``backend.device``; a backend casts to its own precision inside (so fp16 engines change nothing
here) and may keep the latents on its device between calls (no host copy inside the loop).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from textinv.choices import coerce_choices
from textinv.errors import InvalidInputError
from textinv.hardware import PrecisionChoice
from textinv_client.choices import Precision
from textinv_server.choices import BackendName, Provider

__all__ = [
    "Backend",
    "BackendName",
    "BackendOptions",
    "Provider",
    "ShapeLimits",
    "TorchOptions",
]


@dataclass(frozen=True)
class ShapeLimits:
    """What one backend call can take: image sides in pixels, and images per UNet call.

    ``max_images`` counts images, not UNet rows: under classifier-free guidance each image takes
    two rows, which is how the export profile's UNet batch is sized.
    """

    min_size: int = 8
    max_size: int = 2048
    size_multiple: int = 8
    max_images: int = 64
    # 77-token chunks the UNet's encoder_hidden_states may hold; None: any (the torch backend).
    max_prompt_chunks: int | None = None
    # Whether the text encoder takes a per-row clip_skip (exports made before it do not).
    takes_clip_skip: bool = True
    # Whether a VAE encoder is loaded, for img2img (an export may leave it out).
    takes_init_image: bool = True

    def check(self, width: int, height: int, images: int) -> None:
        for axis, size in (("width", width), ("height", height)):
            if not self.min_size <= size <= self.max_size or size % self.size_multiple:
                raise InvalidInputError(
                    f"{axis} {size} is outside this backend's profile: multiples of "
                    f"{self.size_multiple} from {self.min_size} to {self.max_size}"
                )
        if images > self.max_images:
            raise InvalidInputError(
                f"{images} images in one batch exceed this backend's profile "
                f"(at most {self.max_images})"
            )


class Backend(Protocol):
    """Three compute graphs on one device. Shapes: B rows, T = 77 tokens, D text width,
    C latent channels, h × w latent cells, H × W pixels."""

    name: BackendName
    device: torch.device
    limits: ShapeLimits
    model_hash: str
    precision: PrecisionChoice  # what the graphs compute in, and why

    def encode_text(
        self, inputs_embeds: torch.Tensor, eos_positions: torch.Tensor, clip_skip: torch.Tensor
    ) -> torch.Tensor:
        """``inputs_embeds [B, T, D]``, ``eos_positions [B]``, ``clip_skip int64 [B]`` (layers
        to skip, 0 without ``limits.takes_clip_skip``) → ``last_hidden_state [B, T, D]``."""
        ...

    def predict_noise(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``sample [B, C, h, w]``, ``timestep float32 [B]``, ``[B, T, D]`` → ``[B, C, h, w]``.
        ``added``: SDXL's added conditioning, ``text_embeds [B, P]`` and ``time_ids [B, 6]``."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled ``latents [B, C, h, w]`` → ``images [B, 3, H, W]`` in about [-1, 1]."""
        ...

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, 3, H, W]`` in [-1, 1] → the VAE posterior's ``[B, 2C, h, w]`` float32
        (mean, then log-variance, on channels; unscaled). Only with ``limits.takes_init_image``."""
        ...

    def synchronize(self) -> None:
        """Wait for queued device work (stage timings only; a no-op on the CPU)."""
        ...


class SdxlTextBackend(Backend, Protocol):
    """A backend that runs SDXL's two text encoders (``textinv.sdxl_text``)."""

    def encode_text_sdxl(
        self,
        inputs_embeds: torch.Tensor,
        inputs_embeds_2: torch.Tensor,
        eos_positions: torch.Tensor,
        clip_skip: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T, D1]``, ``[B, T, D2]``, the second encoder's end-of-text positions ``[B]``,
        clip skips ``[B]`` → ``(prompt_embeds [B, T, D1 + D2], text_embeds [B, P])``."""
        ...


@dataclass(frozen=True)
class TorchOptions:
    """The torch backend's speed options. All off by default; each is correct on the CPU too,
    except ``cuda_graph``, which needs CUDA and is refused elsewhere."""

    # None keeps the model's own dtype; otherwise the modules are cast in place at load. auto:
    # bf16 where the device has a fast bf16 path (AMX-BF16 or AVX512-BF16 on a CPU), else fp32
    # on a CPU (textinv.hardware.resolve_precision).
    weights: Precision | None = None
    # NHWC convolutions (cuDNN's tensor-core layout) for the UNet.
    channels_last: bool = False
    # torch.compile the UNet, one static graph per input shape (torch_backend says why);
    # "inductor" on CUDA, "eager" (dynamo tracing only) for dry runs.
    compile: bool = False
    compile_backend: str = "inductor"
    # Capture the UNet as a CUDA graph per static input shape and replay it every step.
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        coerce_choices(self)


@dataclass(frozen=True)
class BackendOptions:
    """How to load a backend. ``engines`` is the export stage's folder (its manifest inside)."""

    engines: Path | None = None
    # torch: where the model runs. The onnxruntime GPU providers and tensorrt: which GPU
    # ("cuda:N"; "cpu" or "cuda" mean GPU 0), where backend.device then is.
    device: str = "cpu"
    # onnxruntime's execution provider.
    provider: Provider = Provider.CPU
    # CPU threads per session (onnxruntime) or per process (torch); 0 = the library's default.
    threads: int = 0
    # torch: the weights' precision (fp16 for CUDA; the CPU has no fast half path).
    precision: Precision = Precision.FP32
    # Hash every engine file against the manifest at load (seconds for SD 1.5), or sizes only.
    verify_checksums: bool = True
    # torch backend only: weights dtype, channels-last, torch.compile, CUDA graphs.
    torch_options: TorchOptions = TorchOptions()

    def __post_init__(self) -> None:
        coerce_choices(self)
