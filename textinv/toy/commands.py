"""``textinv toy ...``: the commands that belong to the embedded shapes-world model only."""

from __future__ import annotations

import argparse


def add_toy_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """``textinv toy train`` (the model from scratch) and ``textinv toy eval`` (a concept's
    fidelity, measured with the world's own classifier)."""
    from textinv.toy.evaluate import add_eval_subcommand
    from textinv.toy.train import add_train_subcommand

    toy = subparsers.add_parser(
        "toy", help="the embedded shapes-world model: train it, evaluate on it"
    )
    toy_subparsers = toy.add_subparsers(dest="toy_command", required=True, metavar="WHAT")
    add_train_subcommand(toy_subparsers)
    add_eval_subcommand(toy_subparsers)
