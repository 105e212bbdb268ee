"""``textinv bench store``: its figures and table on synthetic numbers, its refusals, and one small
run on the tiny model against a real PostgreSQL (three real replicas)."""

from __future__ import annotations

import math
from pathlib import Path

import psycopg
import pytest

from textinv.cli import main
from textinv.cli.bench.serve_load import summarize
from textinv.cli.bench.store import StoreBenchSettings, measure_store
from textinv.cli.bench.store_print import (
    propagation_figures,
    ratio,
    seen_figures,
    spread,
    table_lines,
    throughput_figures,
)
from textinv.cli.bench.store_replicas import PropagationSamples, Seen
from textinv.errors import InvalidInputError


def test_spread_is_the_median_and_the_99th_percentile() -> None:
    figures = spread([float(v) for v in range(1, 101)])
    assert figures["p50_ms"] == 50.5
    assert figures["p99_ms"] == pytest.approx(99.01)
    assert figures["n"] == 100


def test_ratio_refuses_a_zero_baseline() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))


def test_seen_figures_count_the_changes_not_seen_apart() -> None:
    seen = [Seen(10.0, 1, True), Seen(30.0, 3, True), Seen(10_000.0, 40, False)]
    figures = seen_figures(seen, {"p50_ms": 10.0, "p99_ms": 20.0})
    assert figures["n"] == 2  # the unseen one is not a latency
    assert figures["p50_ms"] == 20.0
    assert figures["not_seen"] == 1
    assert figures["first_probe_saw_it"] == 1
    assert figures["max_probes"] == 40
    assert figures["p50_over_baseline"] == 2.0


def test_deletions_are_compared_with_a_not_found_probe() -> None:
    samples = PropagationSamples(
        missed=[Seen(12.0, 1, True)] * 4,
        cold=[Seen(11.0, 1, True)] * 4,
        deleted=[Seen(3.0, 1, True)] * 4,
        baseline_ms=[10.0] * 4,
        missing_ms=[2.0] * 4,
    )
    figures = propagation_figures(samples)
    assert figures["registered_after_miss"]["p50_over_baseline"] == pytest.approx(1.2)
    assert figures["deleted"]["p50_over_baseline"] == pytest.approx(1.5)
    assert figures["goal_ms"] == 100.0


def test_the_table_shows_every_figure_and_the_goal() -> None:
    samples = PropagationSamples(
        [Seen(42.0, 1, True)], [Seen(43.0, 2, True)], [Seen(5.0, 1, True)], [40.0], [4.0]
    )
    loads = {
        "one": summarize("one", 8, [100.0] * 10, 1.0),
        "all": summarize("all", 8, [150.0] * 10, 2.0),
    }
    costs = {"few": 10, "many": 1000, "fill_1000_s": 0.5}
    for kind in ("register", "generate_warm", "generate_cold"):
        costs |= {f"{kind}_10_concepts_ms": 2.0, f"{kind}_1000_concepts_ms": 3.0}
        costs[f"{kind}_ratio"] = 1.5
    report = {
        "machine": {"processor": "Some CPU (AVX2)", "threads": 2, "torch": 2},
        "settings": {"model": "embedded", "side": 16},
        "propagation": propagation_figures(samples),
        "host_costs": costs,
        "throughput": throughput_figures(loads, 3),
    }
    assert report["throughput"]["ratio"] == 0.5
    text = "\n".join(table_lines(report))
    assert "Some CPU (AVX2); 2 threads" in text
    assert "within 100 ms; worst p99 43.0 ms" in text
    assert "1.50×" in text
    assert "ratio 3 / 1: 0.50×" in text
    assert "not a speed-up" in text


def test_settings_refuse_what_cannot_be_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="--few"):
        StoreBenchSettings(few=2)
    with pytest.raises(ValueError, match="--replicas"):
        StoreBenchSettings(replicas=1)
    monkeypatch.delenv("TEXTINV_STORE", raising=False)
    with pytest.raises(InvalidInputError, match="postgresql://"):
        StoreBenchSettings().store_url()
    monkeypatch.setenv("TEXTINV_STORE", "postgresql://u@h/db")
    assert StoreBenchSettings().store_url() == "postgresql://u@h/db"


def test_an_unreachable_store_exits_2_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "store", "--store", "postgresql://nobody@127.0.0.1:1/none"])
    assert code == 2
    assert "cannot be reached" in capsys.readouterr().err


def test_a_small_run_measures_every_figure(tiny_model_dir: Path, pg_url: str) -> None:
    settings = StoreBenchSettings(
        store=pg_url,
        model=str(tiny_model_dir),
        registrations=5,
        concepts=50,
        repeats=5,
        requests=16,
        replica_threads=1,
    )
    report = measure_store(settings, progress=lambda _: None)
    assert set(report) == {"machine", "settings", "host_costs", "propagation", "throughput"}
    propagation = report["propagation"]
    for name in ("registered_after_miss", "registered_cold", "deleted"):
        assert propagation[name]["n"] == 5, name  # every change was seen on the other replica
        assert propagation[name]["not_seen"] == 0, name
        assert 0 < propagation[name]["p50_ms"] <= propagation[name]["p99_ms"], name
    assert propagation["baseline_probe"]["p50_ms"] > 0
    costs = report["host_costs"]
    for kind in ("register", "generate_warm", "generate_cold"):
        assert costs[f"{kind}_10_concepts_ms"] > 0 and costs[f"{kind}_50_concepts_ms"] > 0
        assert costs[f"{kind}_ratio"] > 0
    throughput = report["throughput"]
    for point in ("one_replica", "all_replicas"):
        assert throughput[point]["failures"] == 0 and throughput[point]["throughput_rps"] > 0
    assert "goal" in "\n".join(table_lines(report))
    with psycopg.connect(pg_url) as conn:  # what the run wrote it deleted again
        left = conn.execute("SELECT count(*) FROM concepts").fetchone()
        tenants = conn.execute("SELECT count(*) FROM tenants WHERE tenant LIKE 'bench-%'")
        assert left == (0,) and tenants.fetchone() == (0,)
