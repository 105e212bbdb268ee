"""The ``torch`` backend: the base model's own modules, eager, on the CPU or a CUDA device.

The text encoder runs through ``EmbeddingsTextEncoder`` (embeddings in, never token ids). On
CUDA the modules may hold fp16/bf16 weights and the UNet may run channels-last; the interface
stays float32 and casts at the boundary.
"""

from __future__ import annotations

import torch

from server.backends import BackendName, ShapeLimits
from textinv.model import BaseModel
from textinv.text_encoder import EmbeddingsTextEncoder


class TorchBackend:
    name = BackendName.TORCH

    def __init__(
        self,
        model: BaseModel,
        *,
        channels_last: bool = False,
        limits: ShapeLimits | None = None,
    ) -> None:
        self.model_hash = model.model_hash
        self.device = model.unet.device
        self.dtype = model.unet.dtype
        self.limits = limits or ShapeLimits()
        self.text_encoder = EmbeddingsTextEncoder(model.text_encoder).eval()
        self.unet = model.unet
        self.vae = model.vae
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def encode_text(self, inputs_embeds: torch.Tensor, eos_positions: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.text_encoder(
            inputs_embeds.to(self.device, self.dtype), eos_positions.to(self.device)
        )
        return hidden.float()  # [B, T, D]

    @torch.inference_mode()
    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        sample = sample.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)
        noise = self.unet(
            sample,
            timestep.to(self.device),
            encoder_hidden_states=encoder_hidden_states.to(self.device, self.dtype),
            return_dict=False,
        )[0]
        return noise.float()  # [B, C, h, w]

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(latents.to(self.device, self.dtype), return_dict=False)[0]
        return images.float()  # [B, 3, H, W]

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
