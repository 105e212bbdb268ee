"""``concepts add|ls|get|rm``: manage a server's registered concepts."""

from __future__ import annotations

import argparse
from pathlib import Path

from textinv_client.command_support import (
    EXIT_OK,
    SubParsers,
    add_command,
    format_time,
    print_json,
    print_listing,
    reports_errors,
)
from textinv_client.connection_flags import client_from_args
from textinv_client.types import ConceptInfo


def describe_concept(concept: ConceptInfo) -> str:
    return (
        f"{concept.token}: {concept.num_vectors} vector(s) x {concept.embedding_dim}, "
        f"from {concept.source_format or 'unknown format'}"
    )


@reports_errors
def concepts_add(args: argparse.Namespace) -> int:
    data = args.file.read_bytes()
    with client_from_args(args) as textinv:
        concept = textinv.register_concept(
            data, filename=args.file.name, token=args.token, replace=args.replace
        )
    print(f"registered {describe_concept(concept)}")
    return EXIT_OK


@reports_errors
def concepts_ls(args: argparse.Namespace) -> int:
    with client_from_args(args) as textinv:
        concepts = textinv.list_concepts()
    print_listing(
        concepts,
        as_json=args.json,
        header=("TOKEN", "VECTORS", "DIM", "FORMAT", "CREATED", "JOB"),
        row=lambda c: (
            c.token,
            c.num_vectors,
            c.embedding_dim,
            c.source_format,
            format_time(c.created_at),
            c.job_id,
        ),
    )
    return EXIT_OK


@reports_errors
def concepts_get(args: argparse.Namespace) -> int:
    with client_from_args(args) as textinv:
        concept = textinv.get_concept(args.token)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_bytes(textinv.download_concept(args.token))
    if args.json:
        print_json(concept)
    else:
        print(describe_concept(concept))
        created = format_time(concept.created_at)
        print(f"  sha256 {concept.sha256}, {concept.size_bytes} bytes, {created}")
    if args.out is not None:
        print(f"wrote {args.out} (diffusers format)")
    return EXIT_OK


@reports_errors
def concepts_rm(args: argparse.Namespace) -> int:
    with client_from_args(args) as textinv:
        concept = textinv.delete_concept(args.token)
    print(f"deleted {concept.token}")
    return EXIT_OK


def add_concepts_commands(subparsers: SubParsers) -> None:
    concepts = subparsers.add_parser("concepts", help="manage a server's registered concepts")
    commands = concepts.add_subparsers(dest="concepts_command", metavar="COMMAND", required=True)

    add = add_command(commands, "add", concepts_add, "register a concept file on the server")
    add.add_argument("file", type=Path, help="concept file: safetensors, .bin or .pt")
    add.add_argument("--token", help="register under this token instead of the file's")
    add.add_argument("--replace", action="store_true", help="replace a concept with that token")

    ls = add_command(commands, "ls", concepts_ls, "list the registered concepts")
    ls.add_argument("--json", action="store_true", help="print JSON")

    get = add_command(commands, "get", concepts_get, "show a concept; --out downloads it")
    get.add_argument("token")
    get.add_argument("--out", type=Path, help="write the concept here (diffusers safetensors)")
    get.add_argument("--json", action="store_true", help="print JSON")

    rm = add_command(commands, "rm", concepts_rm, "delete a concept")
    rm.add_argument("token")
