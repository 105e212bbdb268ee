"""docs/ARCHITECTURE.md is true: each hop it names exists, and real runs take each, in order.

The two traces (one ``Generate`` request, one training step) are tables of ``file`` and
``function``. Each named function must exist in that file. Then a real ``Generate`` against a real
server, and a real ``textinv invert``, run under a profiler that records the first call of each
project function: every hop must be among them, and the hops' first calls come in the order the
document gives.
"""

from __future__ import annotations

import ast
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from textinv.cli import main
from textinv_client import GenerateRequest, TextInvClient
from textinv_server.background import BackgroundServer

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
# | 3 | `server/textinv_server/servicer.py` | `TextInvServicer.Generate` | what happens |
HOP = re.compile(r"^\| (\d+) \| `([^`]+\.py)` \| `([\w.]+)` \|")
Hop = tuple[str, str]  # (file relative to the repository, qualified function name)


def traces() -> dict[str, list[Hop]]:
    """The document's traces by heading: ``{"One `Generate` request...": [(file, name), ...]}``."""
    found: dict[str, list[Hop]] = {}
    heading = ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            heading = line[3:]
        elif match := HOP.match(line):
            found.setdefault(heading, []).append((match[2], match[3]))
    return found


def trace(word: str) -> list[Hop]:
    (hops,) = [hops for heading, hops in traces().items() if word in heading]
    return hops


def defined_names(path: Path) -> set[str]:
    """Qualified names of the functions in a file: ``f``, ``Class.method``."""
    names: set[str] = set()

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(prefix + child.name)

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return names


def test_the_document_has_both_traces() -> None:
    # Guards the checks below against a pattern that silently matches nothing.
    assert len(trace("Generate")) >= 20 and len(trace("training step")) >= 15


@pytest.mark.parametrize("word", ["Generate", "training step"])
def test_every_named_file_and_function_exists(word: str) -> None:
    missing = [
        f"{file}:{name}"
        for file, name in trace(word)
        if not (ROOT / file).is_file() or name not in defined_names(ROOT / file)
    ]
    assert missing == []


class FirstCalls:
    """The first call of each project function since the last ``clear``, in call order."""

    def __init__(self) -> None:
        self.calls: list[Hop] = []
        self.lock = threading.Lock()

    def clear(self) -> None:
        with self.lock:
            self.calls = []

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(ROOT):
            hop = (path.relative_to(ROOT).as_posix(), frame.f_code.co_qualname)
            with self.lock:
                if hop not in self.calls:
                    self.calls.append(hop)


@contextmanager
def first_calls() -> Iterator[FirstCalls]:
    """Profile this thread and every thread started meanwhile (the server's among them)."""
    recorder = FirstCalls()
    threading.setprofile(recorder.profile)
    sys.setprofile(recorder.profile)
    try:
        yield recorder
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]


def assert_passes_in_order(hops: list[Hop], calls: list[Hop]) -> None:
    assert [hop for hop in hops if hop not in calls] == []
    order = [calls.index(hop) for hop in hops]
    out_of_order = [hops[i + 1] for i in range(len(order) - 1) if order[i + 1] < order[i]]
    assert out_of_order == []


def test_a_real_generate_passes_through_every_hop(
    start_textinv: Callable[..., BackgroundServer],
) -> None:
    request = GenerateRequest(prompt="a photo of a cat", steps=2, seed=1, width=32, height=32)
    with first_calls() as recorder:
        server = start_textinv()  # its threads start under the profiler
        with TextInvClient(server.target) as textinv:
            textinv.generate(request)  # start-up and warm-up paths run first
            recorder.clear()
            result = textinv.generate(request)
    assert result.images[0][:4] == b"\x89PNG"
    assert_passes_in_order(trace("Generate"), recorder.calls)


def test_a_real_training_step_passes_through_every_hop(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (3, 72, 88, 3), dtype=np.uint8)
    for index, image in enumerate(pixels):
        Image.fromarray(image).save(images / f"{index}.png")
    argv = [
        *("invert", "--model", str(tiny_model_dir), "--images", str(images)),
        *("--token", "<doc-toy>", "--init", "toy", "--out", str(tmp_path / "out")),
        *("--steps", "1", "--checkpoint-every", "0", "--validate-every", "0", "--quiet"),
    ]
    with first_calls() as recorder:
        assert main(argv) == 0
    assert_passes_in_order(trace("training step"), recorder.calls)


def test_the_order_check_sees_a_missing_or_swapped_hop() -> None:
    a, b, c = ("x.py", "a"), ("x.py", "b"), ("x.py", "c")
    assert_passes_in_order([a, c], [a, b, c])
    with pytest.raises(AssertionError):
        assert_passes_in_order([c, a], [a, b, c])
    with pytest.raises(AssertionError):
        assert_passes_in_order([a, ("y.py", "d")], [a, b, c])
