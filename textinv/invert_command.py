"""``textinv invert``: learn a concept from a folder of images (thin over ``textinv.trainer``)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from textinv.trainer import CONCEPT_FILE, InvertConfig, Progress, invert
from textinv_client.flags import add_flags, from_flags

# The config fields without which a run cannot start; every other flag has the field's default.
_REQUIRED = ("images", "token", "init", "out")


def add_invert_subcommand(subparsers: argparse._SubParsersAction) -> None:
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
    add_flags(parser, InvertConfig, required=_REQUIRED)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_invert)


def config_from_args(args: argparse.Namespace) -> InvertConfig:
    return from_flags(InvertConfig, args)


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
    path = Path(config.out) / CONCEPT_FILE
    done = "stopped at" if stop.requested else "after"
    print(
        f"learned {concept.token} ({concept.num_vectors}×{concept.width}) {done} "
        f"{concept.metadata.steps} steps: {path}"
    )
    return 0
