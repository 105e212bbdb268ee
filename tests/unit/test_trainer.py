"""The inversion trainer on the tiny model: frozen weights, resume, determinism, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from textinv.concepts import load_concept
from textinv.errors import InvalidInputError
from textinv.trainer import (
    CONCEPT_FILE,
    CONFIG_FILE,
    InvertConfig,
    Progress,
    Trainer,
    dvar_plateau,
    invert,
    iter_log,
    prepare,
    spread_initializer,
)
from textinv_client.choices import Precision


def make_images(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = rng.integers(0, 255, (72, 88, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"image-{index}.png")
    return folder


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_images(tmp_path_factory.mktemp("images"))


def config_for(image_dir: Path, out: Path, model_dir: Path, **changes: Any) -> InvertConfig:
    values: dict[str, Any] = {
        "images": str(image_dir),
        "token": "<tiny-toy>",
        "init": "toy",
        "out": str(out),
        "model": str(model_dir),
        "steps": 4,
        "batch_size": 1,
        "grad_accum": 1,
        "lr": 5e-3,
        "checkpoint_every": 0,
    }
    values.update(changes)
    return InvertConfig(**values)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def test_only_the_new_vectors_change(tiny_model, tiny_model_dir, image_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = {name: snapshot(getattr(tiny_model, name)) for name in ("text_encoder", "unet", "vae")}
    config = config_for(image_dir, tmp_path / "out", tiny_model_dir, steps=3, vectors=2)
    trainer = prepare(config, tiny_model)
    start = trainer.vectors.detach().clone()
    concept = trainer.train()
    assert not torch.equal(concept.vectors, start)  # it trained
    for name, state in before.items():
        after = getattr(tiny_model, name).state_dict()
        for key, value in state.items():
            assert torch.equal(value, after[key]), f"{name}.{key} changed"
    assert all(not p.requires_grad for p in tiny_model.unet.parameters())
    assert all(not p.requires_grad for p in tiny_model.text_encoder.parameters())
    # No gradient was computed for, or accumulated on, any frozen weight.
    for name in ("text_encoder", "unet", "vae"):
        assert all(p.grad is None for p in getattr(tiny_model, name).parameters()), name
    # The optimizer holds the K vectors and nothing else.
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert len(params) == 1 and params[0] is trainer.vectors
    assert params[0].shape == (2, tiny_model.text_width) and params[0].dtype == torch.float32


def test_output_files_and_diffusers_loads_the_concept(  # type: ignore[no-untyped-def]
    tiny_model, tiny_model_dir, image_dir, tmp_path
) -> None:
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "out"
    events: list[Progress] = []
    config = config_for(
        image_dir, out, tiny_model_dir, steps=4, vectors=2, checkpoint_every=2, eval_every=2
    )
    concept = invert(config, progress=events.append, model=tiny_model)
    assert concept.metadata.steps == 4 and concept.metadata.base_model_hash == tiny_model.model_hash

    stored = load_concept(out / CONCEPT_FILE)
    assert torch.equal(stored.vectors, concept.vectors) and stored.metadata.steps == 4
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["token"] == "<tiny-toy>" and resolved["resolution"] == 64
    records = list(iter_log(out))
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert set(records[0]) >= {"step", "loss", "lr", "seconds"} and "eval_loss" in records[1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2.pt", "step-4.pt"]
    state = torch.load(out / "checkpoints/step-4.pt", weights_only=True)
    assert torch.equal(state["vectors"], concept.vectors) and state["step"] == 4
    steps = [e.step for e in events if e.event == "step"]
    assert steps == [1, 2, 3, 4] and events[-1].event == "done"
    assert {e.event for e in events} == {"step", "checkpoint", "done"}

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipe.load_textual_inversion(str(out / CONCEPT_FILE))
    ids = pipe.tokenizer.convert_tokens_to_ids(["<tiny-toy>", "<tiny-toy>_1"])
    rows = pipe.text_encoder.get_input_embeddings().weight[ids]
    assert torch.equal(rows.detach(), concept.vectors)


def test_resume_is_bit_identical(tiny_model, tiny_model_dir, image_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    common = {
        "steps": 20,
        "vectors": 2,
        "batch_size": 2,
        "grad_accum": 2,
        "lr_schedule": "cosine",
        "warmup": 3,
        "checkpoint_every": 10,
    }
    whole = invert(
        config_for(image_dir, tmp_path / "a", tiny_model_dir, **common), model=tiny_model
    )

    # 10 steps, interrupted by should_stop (asked between micro-batches too), then --resume.
    out = tmp_path / "b"
    config = config_for(image_dir, out, tiny_model_dir, **common)
    steps: list[int] = [0]

    def stop_at_ten() -> bool:
        return steps[-1] >= 10

    half = invert(config, lambda p: steps.append(p.step), should_stop=stop_at_ten, model=tiny_model)
    assert half.metadata.steps == 10
    resumed = invert(dataclasses.replace(config, resume=True), model=tiny_model)
    assert resumed.metadata.steps == 20
    assert torch.equal(resumed.vectors, whole.vectors)
    assert [r["step"] for r in iter_log(out)] == list(range(1, 21))
    whole_log = list(iter_log(tmp_path / "a"))
    assert [r["loss"] for r in iter_log(out)] == [r["loss"] for r in whole_log]


def test_resume_extends_a_finished_run(tiny_model, tiny_model_dir, image_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    common = {"vectors": 1, "checkpoint_every": 10}
    whole = invert(
        config_for(image_dir, tmp_path / "a", tiny_model_dir, steps=20, **common), model=tiny_model
    )
    config = config_for(image_dir, tmp_path / "b", tiny_model_dir, steps=10, **common)
    invert(config, model=tiny_model)
    resumed = invert(dataclasses.replace(config, steps=20, resume=True), model=tiny_model)
    assert torch.equal(resumed.vectors, whole.vectors)
    # A resume with a setting that changes the trajectory is refused, naming it.
    with pytest.raises(InvalidInputError, match="lr"):
        invert(dataclasses.replace(config, steps=30, resume=True, lr=1.0), model=tiny_model)


def test_resume_compares_resolved_precision(
    tiny_model, tiny_model_dir, image_dir, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A run asked for fp32 resumes under auto where auto resolves to fp32 (this tiny model, any
    CPU); one that would resume in another precision is refused, naming it."""
    common = {"vectors": 1, "checkpoint_every": 10, "precision": Precision.FP32}
    config = config_for(image_dir, tmp_path / "run", tiny_model_dir, steps=10, **common)
    invert(config, model=tiny_model)
    written = json.loads((tmp_path / "run" / CONFIG_FILE).read_text())
    assert (written["precision"], written["precision_asked"]) == ("fp32", "fp32")
    auto = dataclasses.replace(config, steps=12, resume=True, precision=Precision.AUTO)
    assert invert(auto, model=tiny_model).metadata.steps == 12
    written = json.loads((tmp_path / "run" / CONFIG_FILE).read_text())
    assert (written["precision"], written["precision_asked"]) == ("fp32", "auto")
    with pytest.raises(InvalidInputError, match="precision"):
        bf16 = dataclasses.replace(auto, steps=14, precision=Precision.BF16)
        invert(bf16, model=tiny_model)


def test_seeded_runs_are_deterministic(tiny_model, tiny_model_dir, image_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    def run(name: str, seed: int) -> torch.Tensor:
        config = config_for(
            image_dir, tmp_path / name, tiny_model_dir, steps=3, seed=seed, crop="random"
        )
        return invert(config, model=tiny_model).vectors

    assert torch.equal(run("a", 1), run("b", 1))
    assert not torch.equal(run("c", 1), run("d", 2))


def test_should_stop_stops_cleanly(tiny_model, tiny_model_dir, image_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    events: list[Progress] = []
    config = config_for(image_dir, tmp_path / "out", tiny_model_dir, steps=50, checkpoint_every=25)
    concept = invert(config, progress=events.append, should_stop=lambda: True, model=tiny_model)
    assert concept.metadata.steps == 1
    assert events[-1].event == "stopped"
    assert (tmp_path / "out/checkpoints/step-1.pt").exists()
    assert load_concept(tmp_path / "out" / CONCEPT_FILE).metadata.steps == 1


def test_initializer_spreads_tokens() -> None:
    table = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 3)
    assert spread_initializer(table, [4], 3)[:, 0].tolist() == [4, 4, 4]
    assert spread_initializer(table, [1, 2], 4)[:, 0].tolist() == [1, 1, 2, 2]
    assert spread_initializer(table, [1, 2, 3], 2)[:, 0].tolist() == [1, 2.5]
    assert spread_initializer(table, [1, 2, 3, 4, 5], 1)[:, 0].tolist() == [3]


def test_multi_token_init(tiny_model, tiny_model_dir, image_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = config_for(image_dir, tmp_path / "o", tiny_model_dir, init="red toy", vectors=4)
    trainer = prepare(config, tiny_model)
    red, toy = tiny_model.tokenizer("red toy", add_special_tokens=False).input_ids
    table = tiny_model.token_embedding
    expected = torch.stack([table[red], table[red], table[toy], table[toy]])
    assert torch.equal(trainer.vectors.detach(), expected)


# ---------------------------------------------------------------------------------------------
# Bad input: each refused before training, naming the file or value.


def _bad_folder(tmp_path: Path, kind: str) -> Path:
    folder = make_images(tmp_path / f"images-{kind}", 2)
    if kind == "corrupt":
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    elif kind == "small":
        Image.new("RGB", (48, 200)).save(folder / "thumb.png")
    elif kind == "text":
        (folder / "readme.md").write_text("hi")
    elif kind == "empty":
        for path in folder.iterdir():
            path.unlink()
    return folder


BAD_INPUTS = [
    ("no images", {"images": "empty"}, "holds no images"),
    ("too many images", {"max_images": 1}, "cap is 1"),
    ("corrupt image", {"images": "corrupt"}, r"broken\.png.*not a readable image"),
    ("non-image file", {"images": "text"}, r"readme\.md.*not a readable image"),
    ("tiny image", {"images": "small"}, r"thumb\.png.*48×200"),
    ("token with space", {"token": "<a b>"}, "whitespace"),
    ("token in vocabulary", {"token": "toy"}, "collides with the tokenizer's vocabulary"),
    ("empty init", {"init": "  "}, "initializer text is empty"),
    ("init of nothing", {"init": "<|endoftext|>"}, "tokenizes to nothing"),
    ("K zero", {"vectors": 0}, r"--vectors must be 1\.\.16, got 0"),
    ("K 17", {"vectors": 17}, r"--vectors must be 1\.\.16, got 17"),
    ("resolution", {"resolution": 100}, "--resolution must be a multiple of 8.*got 100"),
    ("huge resolution", {"resolution": 2**20}, f"--resolution .*got {2**20}"),
    ("steps zero", {"steps": 0}, "--steps must be 1..1000000, got 0"),
    ("steps negative", {"steps": -5}, "got -5"),
    ("huge batch", {"batch_size": 10**6}, "--batch-size must be 1..64"),
    ("nan lr", {"lr": float("nan")}, "--lr must be a number > 0.*got nan"),
    ("missing model", {"model": "no-such-model"}, "no-such-model.*does not exist"),
]


@pytest.mark.parametrize(
    ("changes", "message"), [(c, m) for _, c, m in BAD_INPUTS], ids=[n for n, _, _ in BAD_INPUTS]
)
def test_bad_input_is_refused_before_training(  # type: ignore[no-untyped-def]
    tiny_model, tiny_model_dir, image_dir, tmp_path, monkeypatch, changes, message
) -> None:
    changes = dict(changes)
    if "images" in changes:
        changes["images"] = str(_bad_folder(tmp_path, changes["images"]))
    trained: list[int] = []

    def no_training(self: Trainer) -> float:
        trained.append(1)
        return 0.0

    monkeypatch.setattr(Trainer, "_optimizer_step", no_training)
    model = None if "model" in changes else tiny_model
    config = config_for(image_dir, tmp_path / "out", tiny_model_dir, **changes)
    with pytest.raises(InvalidInputError, match=message):
        invert(config, model=model)
    assert not trained and not (tmp_path / "out").exists()


def test_existing_concept_needs_resume_or_overwrite(  # type: ignore[no-untyped-def]
    tiny_model, tiny_model_dir, image_dir, tmp_path
) -> None:
    out = tmp_path / "out"
    config = config_for(image_dir, out, tiny_model_dir, steps=2, checkpoint_every=1)
    first = invert(config, model=tiny_model)
    with pytest.raises(InvalidInputError, match=r"already holds a concept.*--resume.*--overwrite"):
        invert(config, model=tiny_model)
    (out / CONCEPT_FILE).unlink()
    with pytest.raises(InvalidInputError, match="holds checkpoints"):
        invert(config, model=tiny_model)
    again = invert(dataclasses.replace(config, overwrite=True), model=tiny_model)
    assert torch.equal(first.vectors, again.vectors)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1.pt", "step-2.pt"]
    # Resuming a finished run writes the same concept again and trains no more.
    done = invert(dataclasses.replace(config, resume=True), model=tiny_model)
    assert torch.equal(done.vectors, first.vectors) and done.metadata.steps == 2


# ---------------------------------------------------------------------------------------------
# Method options


def test_v_prediction_min_snr_alpha_mask_and_regularization(  # type: ignore[no-untyped-def]
    tiny_model, tiny_model_dir, tmp_path
) -> None:
    folder = make_images(tmp_path / "images", 2)
    rgba = np.full((80, 80, 4), 200, dtype=np.uint8)
    rgba[:, :40, 3] = 0
    Image.fromarray(rgba, "RGBA").save(folder / "cutout.png")
    (folder / "cutout.txt").write_text("a {} on a white background")
    v_model = dataclasses.replace(
        tiny_model,
        scheduler_config={**tiny_model.scheduler_config, "prediction_type": "v_prediction"},
    )
    config = config_for(
        folder,
        tmp_path / "out",
        tiny_model_dir,
        steps=3,
        min_snr_gamma=5.0,
        alpha_mask=True,
        embedding_reg_weight=0.1,
        gradient_checkpointing=True,
        crop="random",
        num_crops=2,
    )
    trainer = prepare(config, v_model)
    assert trainer.prediction_type == "v_prediction"
    assert trainer.cache.mask is not None and trainer.cache.num_variants == 4
    names = [p.name for p in sorted(folder.iterdir()) if p.suffix == ".png"]
    captioned = names.index("cutout.png")
    assert len(trainer.prompts[captioned]) == 1  # the captioned image uses its caption only
    assert all(len(p) == 27 for i, p in enumerate(trainer.prompts) if i != captioned)
    concept = trainer.train()
    assert torch.isfinite(concept.vectors).all()
    assert all(np.isfinite(r["loss"]) for r in iter_log(tmp_path / "out"))
    assert not tiny_model.unet.is_gradient_checkpointing  # restored


def test_bf16_autocast_keeps_fp32_vectors(tiny_model, tiny_model_dir, image_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = config_for(image_dir, tmp_path / "out", tiny_model_dir, steps=2, precision="bf16")
    trainer = prepare(config, tiny_model)
    concept = trainer.train()
    assert trainer.vectors.dtype == torch.float32 and torch.isfinite(concept.vectors).all()


def test_early_stop_on_a_plateau(tiny_model, tiny_model_dir, image_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert not dvar_plateau([3, 2, 1], 2, 0.15)  # not enough history
    assert dvar_plateau([5, 4, 3, 2, 1, 1.0, 1.0, 1.001], 3, 0.15)
    assert not dvar_plateau([8, 7, 6, 5, 4, 3, 2, 1], 3, 0.15)
    events: list[Progress] = []
    config = config_for(
        image_dir,
        tmp_path / "out",
        tiny_model_dir,
        steps=200,
        lr=1e-12,  # the loss cannot move: a plateau from the start
        eval_every=1,
        early_stop=3,
    )
    concept = invert(config, progress=events.append, model=tiny_model)
    assert events[-1].event == "early_stop"
    assert concept.metadata.steps is not None and concept.metadata.steps < 200


def test_validation_grid(tiny_model, tiny_model_dir, image_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = config_for(
        image_dir,
        tmp_path / "out",
        tiny_model_dir,
        steps=2,
        validate_every=2,
        num_validation_images=4,
        validation_steps=2,
    )
    invert(config, model=tiny_model)
    grid = Image.open(tmp_path / "out/validation/step-2.png")
    assert grid.size == (128, 128)


def test_cli_invert(tiny_model_dir, image_dir, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from textinv.cli import main

    out = tmp_path / "out"
    argv = [
        "invert",
        "--model",
        str(tiny_model_dir),
        "--images",
        str(image_dir),
        "--token",
        "<cli-toy>",
        "--init",
        "toy",
        "--out",
        str(out),
        "--steps",
        "2",
        "--grad-accum",
        "1",
        "--vectors",
        "2",
        "--quiet",
    ]
    assert main(argv) == 0
    assert "learned <cli-toy> (2×32) after 2 steps" in capsys.readouterr().out
    assert load_concept(out / CONCEPT_FILE).num_vectors == 2
    assert main(argv) == 2
    assert "already holds a concept" in capsys.readouterr().err
    assert main([*argv, "--resume", "--steps", "3"]) == 0
    assert load_concept(out / CONCEPT_FILE).metadata.steps == 3
    assert main([*argv[:-1], "--overwrite", "--vectors", "17"]) == 2
    assert "--vectors must be 1..16, got 17" in capsys.readouterr().err


def test_check_config_names_fields_as_the_caller_knows_them() -> None:
    from textinv.trainer import check_config

    config = InvertConfig(images="", token="<t>", init="toy", out="", vectors=100, warmup=-1)
    with pytest.raises(InvalidInputError) as by_flag:
        check_config(config)
    assert "--vectors must be 1..16, got 100" in str(by_flag.value)
    assert "--warmup must be 0..1000000, got -1" in str(by_flag.value)
    with pytest.raises(InvalidInputError) as by_field:
        check_config(config, {"vectors": "params.num_vectors", "warmup": "params.warmup_steps"})
    assert "params.num_vectors must be 1..16, got 100" in str(by_field.value)
    assert "params.warmup_steps must be 0..1000000, got -1" in str(by_field.value)
    assert "--vectors" not in str(by_field.value)


def test_check_config_quotes_only_a_prefix_of_a_huge_value() -> None:
    from textinv.trainer import check_config

    config = InvertConfig(images="", token="<t>", init="x" * 1_000_000, out="", vectors=10**18)
    with pytest.raises(InvalidInputError) as caught:
        check_config(config)
    assert len(str(caught.value)) < 400
    assert "1000000 characters" in str(caught.value)
