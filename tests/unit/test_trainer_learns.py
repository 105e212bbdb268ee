"""Evidence that the trainer learns: invert images rendered from known vectors.

On the tiny model: take target vectors, render 4 images with them through diffusers
(``load_textual_inversion`` + ``StableDiffusionPipeline``), invert from a different init word, and
compare losses on the trainer's fixed evaluation batch (fixed latents, noise and timesteps): the
learned vectors' loss must fall clearly below the init word's and close to the target's.

The seeded tiny UNet barely listens to its text (random cross-attention adds little to the
residual stream: the init/target loss gap is ~1e-5), so this test amplifies every cross-attention
output by ``GAIN`` in both the renderer and the trained model. Then the text matters, and the gap
is measurable.
"""

from __future__ import annotations

from pathlib import Path

import torch

from textinv.concepts import Concept, save_concept
from textinv.trainer import InvertConfig, prepare

GAIN = 20.0


def amplify_cross_attention(unet: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                module.to_out[0].weight.mul_(GAIN)
                module.to_out[0].bias.mul_(GAIN)


def render_target_images(model_dir: Path, target: torch.Tensor, folder: Path) -> Path:
    from diffusers import StableDiffusionPipeline

    concept_path = save_concept(Concept("<target>", target), folder / "target.safetensors")
    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None)
    amplify_cross_attention(pipe.unet)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(str(concept_path))
    images = pipe(
        ["a photo of a <target>"] * 4,
        num_inference_steps=8,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
    ).images
    image_dir = folder / "images"
    image_dir.mkdir()
    for index, image in enumerate(images):
        image.save(image_dir / f"render-{index}.png")
    return image_dir


def test_inversion_recovers_the_rendering_concept(tiny_model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from textinv.model import load_base_model

    model = load_base_model(tiny_model_dir)  # our own copy: its UNet is changed below
    amplify_cross_attention(model.unet)
    table = model.token_embedding
    generator = torch.Generator().manual_seed(1)
    target = torch.randn(1, table.shape[1], generator=generator) * float(table.std()) * 20
    image_dir = render_target_images(tiny_model_dir, target, tmp_path)
    config = InvertConfig(
        images=str(image_dir),
        token="<learned>",
        init="dog",
        out=str(tmp_path / "out"),
        model=str(tiny_model_dir),
        steps=15,
        batch_size=4,
        grad_accum=1,
        lr=0.05,
        flip=False,
        checkpoint_every=0,
        eval_batch_size=8,
        seed=0,
    )
    trainer = prepare(config, model)
    init_loss = trainer.evaluation_loss()
    target_loss = trainer.evaluation_loss(target)
    trainer.train()
    learned_loss = trainer.evaluation_loss()
    gap = init_loss - target_loss
    print(f"eval loss: init {init_loss:.5f}, target {target_loss:.5f}, learned {learned_loss:.5f}")
    assert gap > 0, "the rendering vectors must explain their own images better than 'dog'"
    assert learned_loss < init_loss - 0.7 * gap  # clearly below the init word's loss
    assert learned_loss < target_loss + 0.3 * gap  # and close to (or below) the target's


def test_inversion_recovers_a_word_on_the_embedded_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same evidence on a model that listens to its text: the target is the embedding of
    "star", the images are the embedded model's renders of it, and the inversion starts from
    "circle"."""
    from diffusers import StableDiffusionPipeline

    from textinv.model import load_base_model
    from textinv.toy import DEFAULT_GUIDANCE, default_model_path

    model = load_base_model(None)
    star = model.tokenizer("star", add_special_tokens=False).input_ids
    target = model.token_embedding[star].detach().clone()  # [1, D]
    concept_path = save_concept(Concept("<target>", target), tmp_path / "target.safetensors")
    pipe = StableDiffusionPipeline.from_pretrained(
        default_model_path(), safety_checker=None, torch_dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(str(concept_path))
    images = pipe(
        ["a red <target> on a blue background"] * 4,
        num_inference_steps=20,
        guidance_scale=DEFAULT_GUIDANCE,
        generator=torch.Generator().manual_seed(0),
    ).images
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for index, image in enumerate(images):
        # The trainer's images must be at least 64 px; the model's side is 32.
        image.resize((64, 64)).save(image_dir / f"render-{index}.png")
    config = InvertConfig(
        images=str(image_dir),
        token="<learned>",
        init="circle",
        out=str(tmp_path / "out"),
        model=None,  # the embedded model
        steps=150,
        batch_size=4,
        grad_accum=1,
        lr=2e-3,
        flip=False,
        checkpoint_every=0,
        eval_batch_size=16,
        seed=0,
    )
    trainer = prepare(config, model)
    init_loss = trainer.evaluation_loss()
    target_loss = trainer.evaluation_loss(target)
    trainer.train()
    learned_loss = trainer.evaluation_loss()
    gap = init_loss - target_loss
    print(f"eval loss: init {init_loss:.5f}, target {target_loss:.5f}, learned {learned_loss:.5f}")
    assert gap > 0, "the rendering word must explain its own images better than 'circle'"
    assert learned_loss < init_loss - 0.7 * gap
    assert learned_loss < target_loss + 0.3 * gap
