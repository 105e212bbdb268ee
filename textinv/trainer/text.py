"""The frozen text side of an inversion run: SD 1.x/2.x's one text encoder, or SDXL's two.

An SD 1.x/2.x concept is one set of vectors ``[K, D]``; an SDXL concept two, ``[K, D1]`` for the
first encoder's table and ``[K, D2]`` for the second's, which learn together (as kohya's
``sdxl_train_textual_inversion.py`` trains both). Each set is spliced into its own encoder's
input after the table lookup; the conditioning is what the UNet takes: the hidden states
``[B, 77, D]`` (SDXL: both encoders' penultimate states, ``[B, 77, D1 + D2]``) and, for SDXL, the
pooled ``text_embeds [B, P]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from textinv.model import BaseModel
from textinv.prompts import PromptEmbeddings, PromptEncoder, TokenizedPrompt
from textinv.sdxl_text import SdxlTextEncoders
from textinv.text_encoder import EmbeddingsTextEncoder
from textinv.trainer.traced import Traced

VectorSets = tuple[torch.Tensor, ...]  # one [K, D_i] per text encoder


@dataclass(frozen=True)
class Conditioning:
    """What the UNet is conditioned on: ``hidden [B, 77, D]``, SDXL's ``pooled [B, P]``."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None


class TrainingText:
    """The model's tokenizer(s), token table(s) and frozen text encoder(s), driven by
    embeddings (DESIGN decision 1)."""

    def __init__(self, model: BaseModel, *, trace: bool = False) -> None:
        first = PromptEncoder(model.tokenizer, model.token_embedding)
        self.module: torch.nn.Module
        if model.text_encoder_2 is None:
            self.encoders: tuple[PromptEncoder, ...] = (first,)
            self.module = EmbeddingsTextEncoder(model.text_encoder)
        else:
            assert model.tokenizer_2 is not None
            table_2 = model.text_encoder_2.get_input_embeddings().weight
            self.encoders = (first, PromptEncoder(model.tokenizer_2, table_2))
            self.module = SdxlTextEncoders(model.text_encoder, model.text_encoder_2)
        self.encode = Traced(self.module, "text encoder", enabled=trace)  # on CPU: traced.py
        # Each encoder's own CLIP transformer, over embeddings, for Cross Initialization.
        self.transformers: tuple[EmbeddingsTextEncoder, ...] = (
            (self.module,)
            if isinstance(self.module, EmbeddingsTextEncoder)
            else (self.module.first.encoder, self.module.second.encoder)
        )

    @property
    def is_sdxl(self) -> bool:
        return len(self.encoders) == 2

    @torch.no_grad()
    def final_states(self, index: int, ids: Sequence[int]) -> torch.Tensor:
        """Encoder ``index``'s final, normalized output [M, D] (fp32, CPU) at the M tokens
        ``ids`` of the unpadded sequence ``<bos> ids <eos>``: where Cross Initialization starts
        the vectors (its code's ``token_cross_init``)."""
        prompts, transformer = self.encoders[index], self.transformers[index]
        weight = next(transformer.parameters())
        sequence = torch.tensor([prompts.bos_id, *ids, prompts.eos_id])
        embeds = prompts.table[sequence.to(prompts.table.device)][None]  # [1, M + 2, D]
        eos = torch.tensor([len(sequence) - 1], device=weight.device)
        last, _ = transformer(embeds.to(weight.device, weight.dtype), eos)  # [1, M + 2, D]
        return last[0, 1:-1].float().cpu()

    def tokenize(self, prompt: str, token: str, num_vectors: int) -> tuple[TokenizedPrompt, ...]:
        """``prompt`` tokenized once per encoder (the tokenizers may differ, e.g. in padding)."""
        sizes = {token: num_vectors}
        return tuple(encoder.tokenize(prompt, sizes) for encoder in self.encoders)

    def condition(
        self,
        prompts: Sequence[tuple[TokenizedPrompt, ...]],
        token: str,
        vectors: VectorSets,
        device: torch.device,
    ) -> Conditioning:
        """The conditioning of tokenized ``prompts`` (one tuple per sample) with ``vectors``."""
        embeds = [
            encoder.embed_tokenized([p[i] for p in prompts], {token: vectors[i]})
            for i, encoder in enumerate(self.encoders)
        ]
        return self._encode(embeds, device)

    def condition_texts(
        self, texts: Sequence[str], token: str, vectors: VectorSets, device: torch.device
    ) -> Conditioning:
        """The same for plain texts (the validation prompts)."""
        embeds = [
            encoder.embed(texts, {token: vectors[i]}) for i, encoder in enumerate(self.encoders)
        ]
        return self._encode(embeds, device)

    def _encode(self, embeds: list[PromptEmbeddings], device: torch.device) -> Conditioning:
        last = embeds[-1]  # SDXL pools at the second tokenizer's end-of-text positions
        inputs = [e.inputs_embeds.to(device) for e in embeds]
        hidden, pooled = self.encode(*inputs, last.eos_positions.to(device))
        return Conditioning(hidden, pooled if self.is_sdxl else None)
