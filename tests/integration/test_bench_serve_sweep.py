"""``textinv bench serve`` end to end on the embedded model, with a tiny sweep: once starting its
own servers, once against a running server through ``--server`` (with an API key). Only the
results' structure is checked (counts add up, shares in [0, 1], the plot is a PNG); no timings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from textinv.cli.bench.serve import add_serve_bench
from textinv_client import TextInvClient
from textinv_server.background import BackgroundServer
from textinv_server.config import BatchingConfig, ServerConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
API_KEY = "bench-key-1"
TINY = ["--requests", "3", "--steps", "1", "--concurrency", "1,2"]


def bench_serve(argv: list[str]) -> int:
    """The real ``bench serve`` subcommand, parsed and run as ``textinv`` would."""
    parser = argparse.ArgumentParser(prog="textinv bench")
    add_serve_bench(parser.add_subparsers())
    args = parser.parse_args(["serve", *argv])
    return int(args.func(args))


def check_rows(rows: list[dict[str, Any]], requests: int) -> None:
    for row in rows:
        assert row["requests"] == requests == len(row["latencies_ms"]) + row["failures"], row
        assert 0 <= row["refused"] <= row["failures"]
        assert 0.0 <= row["refused"] / row["requests"] <= 1.0
        assert row["throughput_rps"] >= 0 and row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        if row["mode"] == "open-loop":
            assert row["offered_rps"] > 0 and 1 <= row["concurrency"] <= requests
        else:
            assert row["offered_rps"] is None


@pytest.mark.slow
def test_a_sweep_on_its_own_servers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot, out = tmp_path / "plot.png", tmp_path / "serve.json"
    assert bench_serve([*TINY, "--plot", str(plot), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    check_rows(rows, 3)
    points = {(r["mode"], r["concurrency"]) for r in rows if r["mode"] != "open-loop"}
    assert points == {("in-process", 1), ("grpc", 1), ("grpc", 2), ("unbatched", 1),
                      ("unbatched", 2)}  # fmt: skip
    # No --rates: 0.5, 1, 1.5 and 2× the closed-loop throughput at one client.
    base = next(r["throughput_rps"] for r in rows if (r["mode"], r["concurrency"]) == ("grpc", 1))
    offered = [r["offered_rps"] for r in rows if r["mode"] == "open-loop"]
    assert offered == pytest.approx([base * f for f in (0.5, 1.0, 1.5, 2.0)], abs=1e-3)
    assert plot.read_bytes().startswith(PNG_MAGIC)
    printed = capsys.readouterr().out
    assert printed.startswith("machine: ") and "torch threads: " in printed.splitlines()[0]
    assert "gRPC overhead at concurrency 1" in printed and "batching at concurrency 2" in printed


@pytest.mark.slow
def test_a_sweep_against_a_running_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A short queue, so the open loop may well be refused: counted, never an error.
    config = ServerConfig(
        model=None, data_dir=tmp_path / "data", port=0, api_keys=(API_KEY,),
        batching=BatchingConfig(max_batch=2, batch_wait_ms=5, max_queue=1),
    )  # fmt: skip
    out = tmp_path / "serve.json"
    with BackgroundServer(config) as server:
        with TextInvClient(server.target, api_key=API_KEY) as client:
            native = client.get_server_info().model
        assert native is not None
        argv = ["--server", server.target, "--api-key", API_KEY, "--rates", "40", "--json"]
        assert bench_serve([*TINY, *argv, str(out)]) == 0
    rows = json.loads(out.read_text())
    check_rows(rows, 3)
    assert [(r["mode"], r["concurrency"]) for r in rows if r["offered_rps"] is None] == [
        ("grpc", 1), ("grpc", 2),
    ]  # fmt: skip
    assert [r["offered_rps"] for r in rows if r["mode"] == "open-loop"] == [40.0]
    # The key was sent (else every call fails UNAUTHENTICATED), and nothing failed but refusals.
    assert all(r["failures"] == r["refused"] for r in rows)
    printed = capsys.readouterr().out
    assert f"{native.native_width}×{native.native_height} px" in printed  # GetServerInfo's size
    assert "skipped" in printed
    modes = {line.split()[0] for line in printed.splitlines() if line.strip()}
    assert "in-process" not in modes and "unbatched" not in modes
