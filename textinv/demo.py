"""``textinv demo``: the README's main job, end to end on a small model that needs no download.

It grows with the service: today it builds the seeded tiny model, writes a concept file, and shows
how a prompt with the learned word becomes the text encoder's input, checked against diffusers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_demo_subcommand(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="run the service end to end on a built-in model")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="where to write results")
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from textinv.concepts import Concept, ConceptMetadata, load_concept, save_concept
    from textinv.model import load_base_model
    from textinv.prompts import PromptEncoder
    from textinv.testing import build_tiny_model
    from textinv.text_encoder import EmbeddingsTextEncoder

    started = time.perf_counter()
    out: Path = args.out
    print(f"[1/3] building the seeded tiny model in {out / 'model'}")
    model = load_base_model(build_tiny_model(out / "model"))
    print(f"      model hash {model.model_hash[:16]}…, text width {model.text_width}")

    print("[2/3] writing a 2-vector concept <demo-toy>")
    vectors = torch.randn(2, model.text_width, generator=torch.Generator().manual_seed(0))
    metadata = ConceptMetadata(base_model_hash=model.model_hash)
    path = save_concept(
        Concept("<demo-toy>", vectors, metadata), out / "learned_embeds.safetensors"
    )
    concept = load_concept(path, expected_width=model.text_width)

    prompt = "a photo of a <demo-toy> on the beach"
    print(f"[3/3] encoding {prompt!r} with the concept spliced in on the host")
    encoder = PromptEncoder(model.tokenizer, model.token_embedding)
    embeddings = encoder.embed([prompt], {concept.token: concept.vectors})
    slots = encoder.tokenize(prompt, {concept.token: concept.num_vectors}).slots
    with torch.no_grad():
        hidden, _ = EmbeddingsTextEncoder(model.text_encoder)(
            embeddings.inputs_embeds, embeddings.eos_positions
        )
    print(f"      concept slots at positions {[s.position for s in slots]}")
    print(
        f"      inputs_embeds {list(embeddings.inputs_embeds.shape)} → hidden {list(hidden.shape)}"
    )
    print(f"done in {time.perf_counter() - started:.1f} s; files in {out}")
    return 0
