"""The pure parts of ``textinv bench serve``: the Poisson schedule, the summary of one point, the
refused/failed split, the open-loop rates, the flags' parsing, the printed rows and the plot."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import grpc
import pytest

from textinv.cli.bench.serve import (
    ServeBenchSettings,
    add_serve_bench,
    open_loop_rates,
    parse_levels,
    parse_rates,
)
from textinv.cli.bench.serve_load import (
    LoadResult,
    classify_failure,
    peak_in_flight,
    poisson_schedule,
    summarize,
)
from textinv.cli.bench.serve_print import result_lines
from textinv_client import DeadlineExceeded, Internal, ResourceExhausted, TextInvError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_the_poisson_schedule_is_seeded() -> None:
    assert poisson_schedule(5.0, 50, seed=3) == poisson_schedule(5.0, 50, seed=3)
    assert poisson_schedule(5.0, 50, seed=3) != poisson_schedule(5.0, 50, seed=4)


def test_the_poisson_schedule_has_exponential_gaps_of_the_right_mean() -> None:
    times = poisson_schedule(4.0, 20_000, seed=0)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert all(gap > 0 for gap in gaps) and len(gaps) == 20_000
    # Mean 1/rate = 0.25 s; the mean of 20,000 gaps has a standard error of 0.7%.
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.03)
    # Exponential: standard deviation equals the mean (evenly spaced sends would give 0).
    assert statistics.stdev(gaps) == pytest.approx(0.25, rel=0.05)


@pytest.mark.parametrize("rate", [0.0, -1.0, float("inf"), float("nan")])
def test_the_poisson_schedule_refuses_a_bad_rate(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        poisson_schedule(rate, 10, seed=0)


def test_the_summary_of_synthetic_latencies() -> None:
    latencies = [float(ms) for ms in range(1, 101)]  # 1..100 ms
    result = summarize("open-loop", 7, latencies, 20.0, refused=5, failed=3, offered_rps=6.0)
    assert (result.requests, result.failures, result.refused, result.other_failures) == (
        108, 8, 5, 3,
    )  # fmt: skip
    # statistics.quantiles(method="inclusive"): the q-th cut is 1 + q/100 × 99 on 1..100.
    assert result.p50_ms == pytest.approx(50.5)
    assert result.p95_ms == pytest.approx(95.05)
    assert result.p99_ms == pytest.approx(99.01)
    assert result.throughput_rps == pytest.approx(100 / 20.0)  # successes only
    assert result.refused_share == pytest.approx(5 / 108)
    assert result.failed_share == pytest.approx(3 / 108)
    assert result.offered_rps == 6.0 and len(result.latencies_ms) == 100


def test_the_summary_of_a_point_where_everything_was_refused() -> None:
    result = summarize("grpc", 2, [], 1.0, refused=4)
    assert (result.requests, result.p50_ms, result.p99_ms, result.throughput_rps) == (4, 0, 0, 0)
    assert result.refused_share == 1.0 and result.failed_share == 0.0


def test_a_single_latency_is_every_percentile() -> None:
    result = summarize("grpc", 1, [12.5], 1.0)
    assert result.p50_ms == result.p95_ms == result.p99_ms == 12.5


def test_only_the_queue_limit_counts_as_refused() -> None:
    assert classify_failure(TextInvError("full", grpc.StatusCode.RESOURCE_EXHAUSTED)) == "refused"
    assert classify_failure(ResourceExhausted("generation queue is full")) == "refused"
    assert classify_failure(DeadlineExceeded("late")) == "failed"
    assert classify_failure(Internal("boom")) == "failed"
    assert classify_failure(TextInvError("?", grpc.StatusCode.UNIMPLEMENTED)) == "failed"


def test_peak_in_flight() -> None:
    assert peak_in_flight([]) == 0
    assert peak_in_flight([(0.0, 1.0), (1.0, 2.0)]) == 1  # one ends as the next starts
    assert peak_in_flight([(0.0, 2.0), (1.0, 3.0), (1.5, 1.6), (2.5, 4.0)]) == 3


def _settings(**changes: Any) -> ServeBenchSettings:
    return ServeBenchSettings(model=None, **changes)


def test_the_open_loop_rates_are_multiples_of_the_throughput_at_one_client() -> None:
    closed = [
        summarize("in-process", 1, [10.0], 0.1),
        summarize("grpc", 1, [100.0, 100.0], 0.5),  # 4 req/s
        summarize("grpc", 4, [100.0] * 8, 0.5),
    ]
    assert open_loop_rates(_settings(), closed) == (2.0, 4.0, 6.0, 8.0)
    assert open_loop_rates(_settings(rates=(1.5, 3.0)), closed) == (1.5, 3.0)
    assert open_loop_rates(_settings(rate_factors=()), closed) == ()
    nothing_succeeded = [summarize("grpc", 1, [], 1.0, failed=3)]
    assert open_loop_rates(_settings(), nothing_succeeded) == ()


@pytest.mark.parametrize(
    ("text", "flag"),
    [("1,x", "--concurrency"), ("0,2", "--concurrency"), ("", "--concurrency"),
     ("2.5", "--concurrency")],
)  # fmt: skip
def test_bad_concurrency_names_the_flag(text: str, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        parse_levels(text)


@pytest.mark.parametrize("text", ["fast", "1,-2", "0", "inf", "nan", ",", "2;3"])
def test_bad_rates_name_the_flag(text: str) -> None:
    with pytest.raises(ValueError, match="--rates"):
        parse_rates(text)


def test_good_levels_and_rates_parse() -> None:
    assert parse_levels("1, 2,4,") == (1, 2, 4)
    assert parse_rates("0.5,3") == (0.5, 3.0)
    assert parse_rates(None) is None


def test_the_command_refuses_bad_rates_before_starting_a_server() -> None:
    parser = argparse.ArgumentParser()
    add_serve_bench(parser.add_subparsers())
    args = parser.parse_args(["serve", "--rates", "3,fast"])
    with pytest.raises(ValueError, match="--rates must be comma-separated numbers"):
        args.func(args)


def test_settings_refuse_bad_rates() -> None:
    with pytest.raises(ValueError, match="rates"):
        _settings(rates=(1.0, -1.0))


def _some_results() -> list[LoadResult]:
    return [
        summarize("in-process", 1, [90.0, 110.0], 0.2),
        summarize("grpc", 1, [100.0, 120.0], 0.22),
        summarize("grpc", 8, [300.0] * 8, 0.5, refused=2),
        summarize("unbatched", 8, [500.0] * 8, 1.0, failed=1),
        summarize("open-loop", 3, [150.0, 170.0, 400.0], 1.0, offered_rps=3.0),
    ]


def test_the_printed_rows_show_the_shares_and_the_comparisons() -> None:
    lines = result_lines(_some_results(), [1, 8], own_server=True)
    row = next(line for line in lines if line.startswith("grpc") and " 8 " in line)
    assert "20.0%" in row  # 2 of 10 refused
    assert any(line.startswith("gRPC overhead at concurrency 1") for line in lines)
    assert any(line.startswith("batching at concurrency 8: 2.00×") for line in lines)
    assert lines[-1].startswith("refused requests: 2 of 26; other failures: 1")


def test_a_running_server_run_says_the_comparisons_were_skipped() -> None:
    lines = result_lines(_some_results()[1:3], [1, 8], own_server=False)
    assert any("skipped" in line and "--server" in line for line in lines)
    assert not any(line.startswith("gRPC overhead") for line in lines)


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    from textinv.cli.bench.serve_plot import latency_vs_throughput

    path = latency_vs_throughput(_some_results(), tmp_path / "sub" / "p.png", "test")
    assert path.read_bytes().startswith(PNG_MAGIC)
