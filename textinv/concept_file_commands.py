"""The core package's subcommands: ``textinv concept inspect|convert``.

Thin: parse, call the library, print. Errors reach the user as one line (see ``textinv.cli``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from textinv.concepts import Concept, ConceptFormat, load_concept, save_concept

# The formats `concept convert --to` writes (we read every ConceptFormat).
WRITTEN_FORMATS = (ConceptFormat.DIFFUSERS, ConceptFormat.A1111)


def add_concept_subcommands(subparsers: argparse._SubParsersAction) -> None:
    concept = subparsers.add_parser("concept", help="inspect and convert concept files")
    actions = concept.add_subparsers(dest="concept_command", required=True, metavar="ACTION")

    inspect = actions.add_parser("inspect", help="print a concept file's token, K, D and metadata")
    inspect.add_argument("file", help="a concept file (.safetensors, .pt or .bin)")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(func=run_inspect)

    convert = actions.add_parser("convert", help="convert a concept file to another format")
    convert.add_argument("input", help="a concept file in any supported format")
    convert.add_argument("output", help="where to write (.safetensors, or .pt for a1111)")
    convert.add_argument(
        "--to",
        required=True,
        type=ConceptFormat.parse,
        choices=WRITTEN_FORMATS,
        metavar="{" + ",".join(WRITTEN_FORMATS) + "}",
        dest="to_format",
    )
    convert.set_defaults(func=run_convert)


def describe_concept(concept: Concept) -> dict[str, Any]:
    """The facts ``inspect`` prints, as a JSON-ready dict."""
    return {
        "token": concept.token,
        "num_vectors": concept.num_vectors,
        "width": concept.width,
        "format": concept.source_format.value,
        "width_2": None if concept.vectors_2 is None else int(concept.vectors_2.shape[1]),
        "norms": [round(float(n), 4) for n in concept.vectors.norm(dim=1)],
        "base_model_hash": concept.metadata.base_model_hash,
        "steps": concept.metadata.steps,
        "created_at": concept.metadata.created_at or None,
        "format_version": concept.metadata.format_version,
    }


def run_inspect(args: argparse.Namespace) -> int:
    facts = describe_concept(load_concept(args.file))
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        width = max(len(key) for key in facts)
        for key, value in facts.items():
            print(f"{key:<{width}}  {'-' if value is None else value}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    concept = load_concept(args.input)
    path = save_concept(concept, args.output, args.to_format)
    print(
        f"wrote {concept.token} ({concept.num_vectors}×{concept.width}) as {args.to_format}: {path}"
    )
    return 0
