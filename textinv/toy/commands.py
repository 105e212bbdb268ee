"""``textinv toy ...``: the commands that belong to the embedded shapes-world model only.

The one place where they are registered. Their flags come from the configs' fields
(``textinv_client.flags``); the configs are torch-free, so building the parser imports no model
code, and each handler imports what it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from textinv.toy.evaluation.config import EvalConfig
from textinv.toy.training.config import ToyTrainConfig
from textinv_client.flags import add_flags, from_flags


def add_toy_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """``textinv toy train`` (the model from scratch) and ``textinv toy eval`` (a concept's
    fidelity, measured with the world's own classifier)."""
    toy = subparsers.add_parser(
        "toy", help="the embedded shapes-world model: train it, evaluate on it"
    )
    toy_subparsers = toy.add_subparsers(dest="toy_command", required=True, metavar="WHAT")
    train = toy_subparsers.add_parser("train", help="train the shapes-world model from scratch")
    add_train_arguments(train)
    train.set_defaults(func=run_train)
    evaluate = toy_subparsers.add_parser(
        "eval", help="measure a learned concept on the embedded model: reconstruction, editability"
    )
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=run_eval)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ToyTrainConfig)
    parser.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def run_train(args: argparse.Namespace) -> int:
    import torch

    from textinv.toy.train import train

    torch.set_num_threads(args.threads)
    folder = train(from_flags(ToyTrainConfig, args), resume=args.resume)
    print(f"model saved to {folder}")
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, EvalConfig, required=["concept"])
    parser.add_argument("--out", type=Path, help="write report.json and grid.png here")


def run_eval(args: argparse.Namespace) -> int:
    from textinv.toy.evaluate import evaluate, format_table, save_report

    config = from_flags(EvalConfig, args)
    report = evaluate(config, progress=lambda message: print(message, flush=True))
    print(format_table(report))
    if args.out:
        report_path, grid_path = save_report(report, args.out)
        print(f"wrote {report_path} and {grid_path}")
    return 0
