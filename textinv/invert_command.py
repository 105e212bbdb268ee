"""``textinv invert``: learn a concept from a folder of images (thin over ``textinv.trainer``)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from textinv.trainer import (
    LR_SCHEDULES,
    MAX_TRAIN_VECTORS,
    PRECISIONS,
    InvertConfig,
    Progress,
    invert,
)

_DEFAULTS = InvertConfig(images="", token="", init="", out="")


def add_invert_subcommand(subparsers: argparse._SubParsersAction) -> None:
    d = _DEFAULTS
    parser = subparsers.add_parser(
        "invert",
        help="learn a new word (a concept) from a few images",
        description=(
            "Textual Inversion: learn K new token vectors for TOKEN from the images in DIR, with "
            "the model frozen. Writes OUT/learned_embeds.safetensors (diffusers format: "
            "pipe.load_textual_inversion(path) loads it), OUT/config.json, OUT/log.jsonl and "
            "OUT/checkpoints/step-N.pt."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model",
        help="a diffusers SD 1.x/2.x folder, a hub id, or sd15-shape (random SD 1.5 shapes); "
        "default: the embedded model",
    )
    parser.add_argument(
        "--images",
        required=True,
        help="folder of training images; NAME.txt beside NAME.png is its caption, '{}' = token",
    )
    parser.add_argument("--token", required=True, help="the new word, e.g. '<cat-toy>'")
    parser.add_argument(
        "--init",
        required=True,
        help=(
            "initializer text, e.g. 'toy'. With K vectors and M init tokens, vector i starts "
            "as the mean of init tokens floor(i*M/K) .. floor((i+1)*M/K)-1 (at least one): "
            "M ≤ K copies the tokens in order, repeating them; M > K averages neighbours"
        ),
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--vectors",
        type=int,
        default=d.vectors,
        help=f"K, vectors per token (1..{MAX_TRAIN_VECTORS})",
    )
    parser.add_argument(
        "--property",
        choices=["object", "style"],
        default=d.learnable_property,
        help="which of the paper's template lists the prompts come from",
    )
    parser.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--grad-accum", type=int, default=d.grad_accum)
    parser.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    parser.add_argument(
        "--scale-lr", action="store_true", help="multiply --lr by batch size × grad accumulation"
    )
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule)
    parser.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW's")
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="training side in px, a multiple of 8 (default: the model's, 512 for SD 1.5)",
    )
    parser.add_argument("--precision", choices=list(PRECISIONS), default=d.precision)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        help="checkpoint every N steps (and at the end); 0: never",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUT's newest checkpoint"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a concept or checkpoints already in OUT"
    )
    data = parser.add_argument_group("data")
    data.add_argument("--max-images", type=int, default=d.max_images, help="refuse more images")
    data.add_argument("--crop", choices=["center", "random"], default=d.crop)
    data.add_argument(
        "--crop-scale",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=list(d.crop_scale),
        help="random crop side as a fraction of the shorter image side",
    )
    data.add_argument(
        "--num-crops", type=int, default=d.num_crops, help="random crops per image in the pool"
    )
    data.add_argument("--no-flip", action="store_true", help="no horizontal flips in the pool")
    data.add_argument(
        "--alpha-mask",
        action="store_true",
        help="use an image's alpha channel as a loss mask (default: composite it on white)",
    )
    method = parser.add_argument_group("method")
    method.add_argument(
        "--min-snr-gamma", type=float, default=None, help="min-SNR-γ loss weighting (e.g. 5)"
    )
    method.add_argument(
        "--embedding-reg-weight",
        type=float,
        default=d.embedding_reg_weight,
        help="L2 pull toward the initializer's embedding",
    )
    method.add_argument(
        "--gradient-checkpointing", action="store_true", help="trade UNet compute for memory"
    )
    method.add_argument(
        "--eval-every",
        type=int,
        default=d.eval_every,
        help="log the loss on a fixed evaluation batch every N steps (0: only for --early-stop)",
    )
    method.add_argument(
        "--early-stop",
        type=int,
        default=d.early_stop,
        metavar="WINDOW",
        help="DVAR early stop: stop when the variance of the last WINDOW evaluation losses falls "
        "below --early-stop-threshold × the variance of all of them; 0: off",
    )
    method.add_argument("--early-stop-threshold", type=float, default=d.early_stop_threshold)
    val = parser.add_argument_group("validation")
    val.add_argument(
        "--validate-every",
        type=int,
        default=d.validate_every,
        help="write OUT/validation/step-N.png every N steps (and at the end); 0: never",
    )
    val.add_argument(
        "--validation-prompt",
        default=None,
        help="'{}' stands for the token (default: 'a photo of a {}' or 'a painting in the style "
        "of {}')",
    )
    val.add_argument("--num-validation-images", type=int, default=d.num_validation_images)
    val.add_argument("--validation-steps", type=int, default=d.validation_steps)
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_invert)


def config_from_args(args: argparse.Namespace) -> InvertConfig:
    return InvertConfig(
        images=args.images,
        token=args.token,
        init=args.init,
        out=args.out,
        model=args.model,
        vectors=args.vectors,
        learnable_property=args.property,
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        scale_lr=args.scale_lr,
        lr_schedule=args.lr_schedule,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        resolution=args.resolution,
        precision=args.precision,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        overwrite=args.overwrite,
        max_images=args.max_images,
        crop=args.crop,
        crop_scale=(float(args.crop_scale[0]), float(args.crop_scale[1])),
        num_crops=args.num_crops,
        flip=not args.no_flip,
        alpha_mask=args.alpha_mask,
        min_snr_gamma=args.min_snr_gamma,
        embedding_reg_weight=args.embedding_reg_weight,
        gradient_checkpointing=args.gradient_checkpointing,
        eval_every=args.eval_every,
        early_stop=args.early_stop,
        early_stop_threshold=args.early_stop_threshold,
        validate_every=args.validate_every,
        validation_prompt=args.validation_prompt,
        num_validation_images=args.num_validation_images,
        validation_steps=args.validation_steps,
        device=args.device,
    )


class _ProgressBar:
    """A tqdm bar showing step, loss, steps/s and ETA; notes checkpoints and the end."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None

    def __call__(self, info: Progress) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=info.total_steps,
                initial=info.step - 1 if info.event == "step" else info.step,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
            )
        if info.event == "step":
            self.bar.update(info.step - self.bar.n)
            postfix = {"loss": f"{info.loss:.4f}", "lr": f"{info.lr:.2e}"}
            if info.eval_loss is not None:
                postfix["eval"] = f"{info.eval_loss:.4f}"
            self.bar.set_postfix(postfix, refresh=False)
        elif info.event in ("checkpoint", "validation"):
            self.bar.write(f"step {info.step}: {info.event} {info.path}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _StopOnInterrupt:
    """The first Ctrl-C asks the trainer to checkpoint and stop; the second interrupts."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: Any = None

    def __enter__(self) -> _StopOnInterrupt:
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to abort)", file=sys.stderr)

    def __call__(self) -> bool:
        return self.requested


def run_invert(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    bar = _ProgressBar(args.quiet)
    try:
        with _StopOnInterrupt() as stop:
            concept = invert(config, progress=bar, should_stop=stop)
    finally:
        bar.close()
    path = Path(config.out) / "learned_embeds.safetensors"
    done = "stopped at" if stop.requested else "after"
    print(
        f"learned {concept.token} ({concept.num_vectors}×{concept.width}) {done} "
        f"{concept.metadata.steps} steps: {path}"
    )
    return 0
