"""The embedded shapes-world model: a small Stable Diffusion trained by ``textinv toy train``.

Everything the demo needs, without importing torch at package import:

- ``default_model_path()``: the shipped model, in the diffusers layout (fp16);
- ``DEMO_CONCEPT`` and ``concept_image_paths(name)``: a held-out concept and its 4 bundled images;
- ``textinv.toy.world``: the renderer; ``textinv.toy.classifier``: the fidelity classifier;
- ``textinv.toy.evaluate.evaluate(EvalConfig(...))``: the fidelity table.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).parent
MODEL_DIR = PACKAGE_DIR / "model"
ASSETS_DIR = PACKAGE_DIR / "assets"
# Classifier-free guidance that suits the embedded model: above about 4 its images oversaturate.
DEFAULT_GUIDANCE = 3.0
DEMO_CONCEPT = "toy-stripes"  # learned by the demo; its init word is world.HELD_OUT[...].init_word


def default_model_path() -> Path:
    """The embedded model's folder (what every command uses when no ``--model`` is given)."""
    if not (MODEL_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the embedded model is missing from {str(MODEL_DIR)!r}; train it with "
            "`textinv toy train` and ship it with `python -m textinv.toy.ship`"
        )
    return MODEL_DIR


def concept_image_paths(name: str = DEMO_CONCEPT) -> list[Path]:
    """The bundled training images of a held-out concept (4 PNGs, 32×32)."""
    folder = ASSETS_DIR / name.strip("<>")
    paths = sorted(folder.glob("*.png"))
    if not paths:
        known = sorted(p.name for p in ASSETS_DIR.iterdir() if p.is_dir())
        raise LookupError(f"no bundled images for concept {name!r}; bundled: {', '.join(known)}")
    return paths
