"""One inversion run's settings, frozen, and the checks that run before anything is loaded.

``textinv invert`` derives its flags from these fields (``textinv_client.flags``): each field's
metadata holds its help text, its flag's name where it differs from the field's, and its ``--help``
group. A closed choice is a ``textinv_client.choices`` Enum; callers may still spell it as a
string ("fp32"), which ``__post_init__`` parses (a bad spelling is bad input that names it:
``textinv.choices.coerce_choices``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from textinv.choices import coerce_choices
from textinv.concept_tokens import MAX_VECTORS, normalize_token
from textinv.data import DEFAULT_MAX_IMAGES, CropMode
from textinv.errors import InvalidInputError, quote
from textinv.trainer.run_files import CONCEPT_FILE, list_checkpoints
from textinv_client.choices import Choice, ConceptProperty, LrSchedule, Precision
from textinv_client.flags import flag, flag_fields, flag_name

MAX_TRAIN_VECTORS = MAX_VECTORS  # K: the concept files' own limit
# A model name that needs no folder: SD 1.5's exact shapes with seeded random weights.
SD15_SHAPE = "sd15-shape"

_INIT_HELP = (
    "initializer text, e.g. 'toy'. With K vectors and M init tokens, vector i starts as the mean "
    "of init tokens floor(i*M/K) .. floor((i+1)*M/K)-1 (at least one): M ≤ K copies the tokens in "
    "order, repeating them; M > K averages neighbours"
)
_EARLY_STOP_HELP = (
    "DVAR early stop: stop when the variance of the last WINDOW evaluation losses falls below "
    "--early-stop-threshold × the variance of all of them; 0: off"
)


class InitMethod(Choice):
    """Where an inversion run's vectors start: the init word's rows of the token table (the
    paper), or the frozen text encoder's output at the init word (Cross Initialization, Pang et
    al., CVPR 2024). A trainer setting only: jobs on the wire start from the table."""

    __choice_name__ = "init method"

    TOKEN = "token"
    CROSS = "cross"


@dataclass(frozen=True)
class InvertConfig:
    """Everything one inversion run needs; ``textinv invert``'s flags are these fields."""

    images: str = field(
        metadata=flag(
            "folder of training images; NAME.txt beside NAME.png is its caption, '{}' = token"
        )
    )
    token: str = field(metadata=flag("the new word, e.g. '<cat-toy>'"))
    init: str = field(metadata=flag(_INIT_HELP))
    out: str = field(metadata=flag("output folder"))
    model: str | None = field(
        default=None,
        metadata=flag(
            "a diffusers SD 1.x/2.x/SDXL folder, a single .safetensors file, a hub id, or "
            "sd15-shape / sdxl-shape (random weights of those shapes); default: the embedded model"
        ),
    )
    vectors: int = field(default=1, metadata=flag(f"K, vectors per token (1..{MAX_TRAIN_VECTORS})"))
    learnable_property: ConceptProperty = field(
        default=ConceptProperty.OBJECT,
        metadata=flag(
            "which of the paper's template lists the prompts come from", name="--property"
        ),
    )
    steps: int = field(default=3000, metadata=flag("optimizer steps"))
    batch_size: int = field(default=1, metadata=flag("images per micro-batch"))
    grad_accum: int = field(default=4, metadata=flag("micro-batches per optimizer step"))
    lr: float = field(default=2e-3, metadata=flag("learning rate"))
    # diffusers' --scale_lr
    scale_lr: bool = field(
        default=False, metadata=flag("multiply --lr by batch size × grad accumulation")
    )
    lr_schedule: LrSchedule = field(
        default=LrSchedule.CONSTANT,
        metadata=flag("constant, or cosine decay to 0 after the warm-up"),
    )
    warmup: int = field(default=0, metadata=flag("linear warm-up steps"))
    weight_decay: float = field(default=1e-2, metadata=flag("AdamW's"))
    resolution: int | None = field(  # None: the model's own (512 for SD 1.5)
        default=None,
        metadata=flag(
            "training side in px, a multiple of 8 (default: the model's, 512 for SD 1.5)"
        ),
    )
    precision: Precision = field(
        default=Precision.AUTO,
        metadata=flag(
            "the frozen model's precision; auto: bf16 where the device has a fast bf16 path, "
            "else fp32 (the vectors always train in fp32)"
        ),
    )
    seed: int = field(default=0, metadata=flag("seeds every random draw of the run"))
    checkpoint_every: int = field(
        default=500, metadata=flag("checkpoint every N steps (and at the end); 0: never")
    )
    resume: bool = field(default=False, metadata=flag("continue from OUT's newest checkpoint"))
    overwrite: bool = field(
        default=False, metadata=flag("replace a concept or checkpoints already in OUT")
    )
    # Data
    max_images: int = field(
        default=DEFAULT_MAX_IMAGES, metadata=flag("refuse more images", group="data")
    )
    crop: CropMode = field(
        default=CropMode.CENTER,
        metadata=flag(
            "center: the largest centred square; random: --num-crops squares", group="data"
        ),
    )
    crop_scale: tuple[float, float] = field(
        default=(0.8, 1.0),
        metadata=flag(
            "random crop side as a fraction of the shorter image side",
            metavar=("MIN", "MAX"),
            group="data",
        ),
    )
    num_crops: int = field(
        default=4, metadata=flag("random crops per image in the pool", group="data")
    )
    flip: bool = field(
        default=True,
        metadata=flag(
            "no horizontal flips in the pool (default: flip=%(default)s)",
            name="--no-flip",
            group="data",
        ),
    )
    alpha_mask: bool = field(
        default=False,
        metadata=flag(
            "use an image's alpha channel as a loss mask (default: composite it on white)",
            group="data",
        ),
    )
    # Method options
    min_snr_gamma: float | None = field(
        default=None, metadata=flag("min-SNR-γ loss weighting (e.g. 5)", group="method")
    )
    embedding_reg_weight: float = field(
        default=0.0, metadata=flag("L2 pull toward the initializer's embedding", group="method")
    )
    init_method: InitMethod = field(
        default=InitMethod.TOKEN,
        metadata=flag(
            "token: start from the init word's token-table rows (the paper); cross: from the "
            "frozen text encoder's output at the init word (Cross Initialization, Pang et al. "
            "2024), pulled back toward it by --cross-reg-weight",
            group="method",
        ),
    )
    cross_reg_weight: float = field(
        default=1e-5,
        metadata=flag(
            "with --init-method cross: λ of its regularizer, λ × the mean Euclidean distance of "
            "the vectors from their start",
            group="method",
        ),
    )
    gradient_checkpointing: bool = field(
        default=False, metadata=flag("trade UNet compute for memory", group="method")
    )
    trace: bool = field(
        default=True,
        metadata=flag(
            "run the frozen UNet eagerly, not as a trace replayed from C++ (CPU; the same "
            "kernels and numbers, less Python per step; default: trace=%(default)s)",
            name="--no-trace",
            group="method",
        ),
    )
    # Early stopping on the fixed evaluation batch (DVAR, Voronov et al. 2023)
    eval_every: int = field(  # 0: only when early stopping is on (then every 25 steps)
        default=0,
        metadata=flag(
            "log the loss on a fixed evaluation batch every N steps (0: only for --early-stop)",
            group="method",
        ),
    )
    eval_batch_size: int = 4
    early_stop: int = field(  # DVAR window, in evaluations
        default=0, metadata=flag(_EARLY_STOP_HELP, metavar="WINDOW", group="method")
    )
    early_stop_threshold: float = field(
        default=0.15, metadata=flag("DVAR's variance ratio", group="method")
    )
    # Validation grids
    validate_every: int = field(
        default=0,
        metadata=flag(
            "write OUT/validation/step-N.png every N steps (and at the end); 0: never",
            group="validation",
        ),
    )
    validation_prompt: str | None = field(
        default=None,
        metadata=flag(
            "'{}' stands for the token (default: 'a photo of a {}' or 'a painting in the style "
            "of {}')",
            group="validation",
        ),
    )
    num_validation_images: int = field(
        default=4, metadata=flag("images in each validation grid", group="validation")
    )
    validation_steps: int = field(
        default=25, metadata=flag("denoising steps per validation image", group="validation")
    )
    device: str = field(default="auto", metadata=flag("auto, cpu, cuda, cuda:1, ..."))

    def __post_init__(self) -> None:
        coerce_choices(self)  # callers may spell a choice as a string ("fp32"); keep the member
        if isinstance(self.token, str):  # the one spelling a prompt and a concept file will use
            object.__setattr__(self, "token", normalize_token(self.token))
        object.__setattr__(self, "crop_scale", tuple(self.crop_scale))

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values: choices as their spellings, ``crop_scale`` as a list."""
        data = dataclasses.asdict(self)
        data["crop_scale"] = list(self.crop_scale)
        return {k: v.value if isinstance(v, Enum) else v for k, v in data.items()}

    @property
    def effective_lr(self) -> float:
        return self.lr * (self.batch_size * self.grad_accum if self.scale_lr else 1)

    @property
    def effective_eval_every(self) -> int:
        if self.eval_every > 0:
            return self.eval_every
        return 25 if self.early_stop > 0 else 0


# Upper bounds: a value past one is refused before anything is built from it (a huge K or
# resolution must never allocate first). Each range is inclusive.
MAX_TRAIN_STEPS = 1_000_000
MAX_TRAIN_RESOLUTION = 2048
MAX_BATCH_SIZE = 64
MAX_GRAD_ACCUM = 1024
# The trainer seeds generators with seed + small offsets, so one bit of headroom below 2^64.
MAX_TRAIN_SEED = 2**63 - 1
MAX_INIT_CHARS = 1000
_INT_RANGES: dict[str, tuple[int, int]] = {
    "vectors": (1, MAX_TRAIN_VECTORS),
    "steps": (1, MAX_TRAIN_STEPS),
    "batch_size": (1, MAX_BATCH_SIZE),
    "grad_accum": (1, MAX_GRAD_ACCUM),
    "warmup": (0, MAX_TRAIN_STEPS),
    "checkpoint_every": (0, MAX_TRAIN_STEPS),
    "seed": (0, MAX_TRAIN_SEED),
    "max_images": (1, 10_000),
    "num_crops": (1, 64),
    "eval_every": (0, MAX_TRAIN_STEPS),
    "eval_batch_size": (1, MAX_BATCH_SIZE),
    "early_stop": (0, 10_000),
    "validate_every": (0, MAX_TRAIN_STEPS),
    "num_validation_images": (1, 16),
    "validation_steps": (1, 1000),
}
# (low, high, low excluded): finite floats only.
_FLOAT_RANGES: dict[str, tuple[float, float, bool]] = {
    "lr": (0.0, 10.0, True),
    "weight_decay": (0.0, 10.0, False),
    "embedding_reg_weight": (0.0, 1e6, False),
    "cross_reg_weight": (0.0, 1e6, False),
    "early_stop_threshold": (0.0, 1e6, False),
}


def check_config(config: InvertConfig, names: Mapping[str, str] | None = None) -> None:
    """Refuse bad values before anything is loaded, naming each as the caller knows it.

    ``names`` maps a field to the caller's name for it (the server passes ``params.num_vectors``
    for ``vectors``); a field it leaves out is named by its flag (``--vectors``). Every check is
    O(1) in the value: nothing is built from a value before it is known to be in range.
    """
    name = _namer(names or {})
    problems = [
        f"{name(key)} must be {low}..{high}, got {quote(value)}"
        for key, (low, high) in _INT_RANGES.items()
        if not _int_in(value := getattr(config, key), low, high)
    ]
    for key, (low, high, open_low) in _FLOAT_RANGES.items():
        if not _float_in(value := getattr(config, key), low, high, open_low):
            bounds = f"{'>' if open_low else '≥'} {low:g} and ≤ {high:g}"
            problems.append(f"{name(key)} must be a number {bounds}, got {quote(value)}")
    problems += _special_problems(config, name)
    if problems:
        raise InvalidInputError("; ".join(problems))


def _special_problems(config: InvertConfig, name: Callable[[str], str]) -> list[str]:
    """The checks that are not one range: optional values, pairs and text."""
    problems = []
    resolution = config.resolution
    if resolution is not None and not (
        _int_in(resolution, 8, MAX_TRAIN_RESOLUTION) and resolution % 8 == 0
    ):
        problems.append(
            f"{name('resolution')} must be a multiple of 8 in 8..{MAX_TRAIN_RESOLUTION}, "
            f"got {quote(resolution)}"
        )
    gamma = config.min_snr_gamma
    if gamma is not None and not _float_in(gamma, 0.0, 1e6, True):
        problems.append(f"{name('min_snr_gamma')} must be a number > 0, got {quote(gamma)}")
    low, high = config.crop_scale
    if not (_float_in(low, 0.0, 1.0, True) and _float_in(high, 0.0, 1.0, True) and low <= high):
        problems.append(f"{name('crop_scale')} needs 0 < min ≤ max ≤ 1, got {low!r} {high!r}")
    if not isinstance(config.init, str) or len(config.init) > MAX_INIT_CHARS:
        problems.append(
            f"{name('init')} must be text of at most {MAX_INIT_CHARS} characters, "
            f"got {quote(config.init)}"
        )
    elif not config.init.strip():
        problems.append(f"{name('init')}: the initializer text is empty; give a word such as 'toy'")
    if not isinstance(config.token, str) or not config.token.strip():
        problems.append(f"{name('token')} must not be empty, got {quote(config.token)}")
    prompt = config.validation_prompt
    if prompt is not None and len(prompt) > MAX_INIT_CHARS:
        problems.append(
            f"{name('validation_prompt')} must be at most {MAX_INIT_CHARS} characters, "
            f"got {quote(prompt)}"
        )
    if config.resume and config.overwrite:
        problems.append(f"{name('resume')} and {name('overwrite')} contradict each other; pass one")
    return problems


def _namer(names: Mapping[str, str]) -> Callable[[str], str]:
    flags = _flag_names()
    return lambda key: names.get(key) or flags.get(key, key)


@functools.cache
def _flag_names() -> dict[str, str]:
    """Each field's command-line flag (``vectors`` → ``--vectors``)."""
    return {item.name: flag_name(item, spec) for item, spec, _ in flag_fields(InvertConfig)}


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _float_in(value: object, low: float, high: float, open_low: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if not math.isfinite(value) or value > high:
        return False
    return value > low if open_low else value >= low


def check_output_folder(config: InvertConfig) -> None:
    """An output folder holding a concept or checkpoints needs ``--resume`` or ``--overwrite``."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output {str(out)!r} exists and is not a folder")
    if config.resume or config.overwrite:
        return
    if (out / CONCEPT_FILE).exists():
        raise InvalidInputError(
            f"output folder {str(out)!r} already holds a concept ({CONCEPT_FILE}); pass --resume "
            "to continue that run or --overwrite to replace it"
        )
    if list_checkpoints(out):
        raise InvalidInputError(
            f"output folder {str(out)!r} holds checkpoints of an earlier run; pass --resume to "
            "continue it or --overwrite to start over"
        )
