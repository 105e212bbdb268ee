"""The paper's CLIP image and text similarity, on a tiny random CLIP model saved to a folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig

from textinv.testing import write_clip_tokenizer
from textinv.toy import world
from textinv.toy.evaluate import ClipScorer, DinoScorer


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    write_clip_tokenizer(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    config = CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16
    )
    CLIPModel(config).save_pretrained(folder)
    return folder


def test_clip_similarities_from_a_local_folder(tiny_clip_dir: Path) -> None:
    scorer = ClipScorer.load(tiny_clip_dir)
    scenes = world.sample_scenes(seed=5, count=4)
    images = [world.render(s) for s in scenes]
    embeddings = scorer.embed_images(images)
    assert embeddings.shape == (4, 16)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(4), atol=1e-5)
    # An image set against itself: the diagonal is 1, so the mean exceeds every off-diagonal.
    same = scorer.image_similarity(images[:1], images[:1])
    assert same == pytest.approx(1.0, abs=1e-5)
    assert scorer.image_similarity(images[:1], images[1:]) < same
    text = scorer.text_similarity(images, "a photo of a red star")
    assert -1.0 <= text <= 1.0
    assert text != scorer.text_similarity(images, "a photo of a dog on the beach")


def test_a_missing_clip_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ClipScorer.load(tmp_path / "nowhere")


def test_dino_similarity_from_a_local_vit_folder(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=32,
        patch_size=8,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "dino")
    scorer = DinoScorer.load(tmp_path / "dino")
    images = [world.render(s) for s in world.sample_scenes(seed=6, count=3)]
    assert scorer.image_similarity(images[:1], images[:1]) == pytest.approx(1.0, abs=1e-5)
    assert scorer.image_similarity(images[:1], images[1:]) < 1.0 - 1e-4
