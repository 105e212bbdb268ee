"""The figures of ``textinv bench store`` from its samples (percentiles, ratios) and the table it
prints; pure functions of the numbers, so they are tested on synthetic ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textinv.cli.bench.serve_load import LoadResult, summarize
from textinv.cli.bench.store_replicas import PropagationSamples, Seen

GOAL_MS = 100.0  # issue 14: a change is live (or gone) on every replica within 100 ms


def spread(values: Sequence[float]) -> dict[str, float]:
    """p50 and p99 (``serve_load.summarize``'s percentiles) and the count of ``values``."""
    point = summarize("", 1, values, 0.0)
    return {"p50_ms": point.p50_ms, "p99_ms": point.p99_ms, "n": len(values)}


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN when the denominator is not positive."""
    return numerator / denominator if denominator > 0 else float("nan")


def seen_figures(seen: Sequence[Seen], baseline: dict[str, float]) -> dict[str, Any]:
    """Percentiles of the changes that were seen, how many were not, the probes they took, and
    p50 / p99 against the probe's own round trip."""
    times = [each.ms for each in seen if each.seen]
    figures: dict[str, Any] = spread(times) if times else {"p50_ms": 0.0, "p99_ms": 0.0, "n": 0}
    figures["not_seen"] = sum(not each.seen for each in seen)
    figures["first_probe_saw_it"] = sum(each.seen and each.probes == 1 for each in seen)
    figures["max_probes"] = max((each.probes for each in seen), default=0)
    figures["p50_over_baseline"] = ratio(figures["p50_ms"], baseline["p50_ms"])
    figures["p99_over_baseline"] = ratio(figures["p99_ms"], baseline["p99_ms"])
    return figures


def propagation_figures(samples: PropagationSamples) -> dict[str, Any]:
    """Registrations against a successful probe's round trip, deletions against a NOT_FOUND
    one's (which makes no image, so it is much quicker)."""
    baseline, missing = spread(samples.baseline_ms), spread(samples.missing_ms)
    return {
        "goal_ms": GOAL_MS,
        "baseline_probe": baseline,
        "baseline_not_found_probe": missing,
        "registered_after_miss": seen_figures(samples.missed, baseline),
        "registered_cold": seen_figures(samples.cold, baseline),
        "deleted": seen_figures(samples.deleted, missing),
    }


def throughput_figures(results: dict[str, LoadResult], replicas: int) -> dict[str, Any]:
    one, every = results["one"], results["all"]
    return {
        "replicas": replicas,
        "concurrency": one.concurrency,
        "one_replica": _load(one),
        "all_replicas": _load(every),
        "ratio": ratio(every.throughput_rps, one.throughput_rps),
    }


def _load(result: LoadResult) -> dict[str, Any]:
    keys = ("requests", "failures", "p50_ms", "p99_ms", "throughput_rps")
    return {key: getattr(result, key) for key in keys}


def table_lines(report: dict[str, Any]) -> list[str]:
    """The report as ``bench store`` prints it."""
    m = report["machine"]
    lines = [f"machine: {m['processor']}; {m['threads']} threads; torch threads {m['torch']}"]
    lines.append(f"model: {report['settings']['model']}")
    if "propagation" in report:
        lines += _propagation_lines(report["propagation"], report["settings"])
    if "host_costs" in report:
        lines += _cost_lines(report["host_costs"])
    if "throughput" in report:
        lines += _throughput_lines(report["throughput"])
    return lines


def _propagation_lines(p: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    base = p["baseline_probe"]
    lines = [
        f"propagation between replicas (Generate on the other replica, 1 step, "
        f"{settings['side']}×{settings['side']} px):",
        f"{'':<26} {'p50 ms':>8} {'p99 ms':>8} {'p50/base':>9} {'p99/base':>9} "
        f"{'1st probe':>10} {'unseen':>7}",
    ]
    rows = (
        ("registered, after a miss", p["registered_after_miss"]),
        ("registered, cold", p["registered_cold"]),
        ("deleted", p["deleted"]),
    )
    for name, f in rows:
        lines.append(
            f"{name:<26} {f['p50_ms']:>8.1f} {f['p99_ms']:>8.1f} {f['p50_over_baseline']:>8.2f}× "
            f"{f['p99_over_baseline']:>8.2f}× {f['first_probe_saw_it']:>5}/{f['n']:<4} "
            f"{f['not_seen']:>7}"
        )
    missing = p["baseline_not_found_probe"]
    for name, b in (("base: probe, image made", base), ("base: probe, NOT_FOUND", missing)):
        lines.append(f"{name:<26} {b['p50_ms']:>8.1f} {b['p99_ms']:>8.1f}")
    worst = max(f["p99_ms"] for _, f in rows)
    lines += [
        "(each figure: from the change's acknowledgement on one replica to the end of the first "
        "probe on another that saw it, so it holds that probe's round trip; base: the probe "
        "alone; 1st probe: rounds where the first probe after the acknowledgement saw it)",
        f"goal: usable (or gone) on every replica within {p['goal_ms']:.0f} ms; worst p99 "
        f"{worst:.1f} ms, of which a probe's own round trip is p99 {base['p99_ms']:.1f} ms",
    ]
    return lines


def _cost_lines(c: dict[str, Any]) -> list[str]:
    few, many = c["few"], c["many"]
    lines = [
        f"host-side cost on PostgreSQL, median ms, {few} vs {many} concepts in the tenant:",
        f"{'':<26} {few:>10} {many:>10} {'ratio':>7}",
    ]
    for kind, name in (
        ("register", "RegisterConcept"),
        ("generate_warm", "Generate, cache warm"),
        ("generate_cold", "Generate, cache cold"),
    ):
        lines.append(
            f"{name:<26} {c[f'{kind}_{few}_concepts_ms']:>10.3f} "
            f"{c[f'{kind}_{many}_concepts_ms']:>10.3f} {c[f'{kind}_ratio']:>6.2f}×"
        )
    lines.append(
        f"(flat is the goal: a ratio near 1×; filling {many} took {c[f'fill_{many}_s']:.1f} s)"
    )
    return lines


def _throughput_lines(t: dict[str, Any]) -> list[str]:
    one, every = t["one_replica"], t["all_replicas"]
    return [
        f"throughput, closed loop at concurrency {t['concurrency']}:",
        f"{'':<26} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}",
        f"{'1 replica':<26} {one['throughput_rps']:>8.2f} {one['p50_ms']:>8.1f} "
        f"{one['p99_ms']:>8.1f} {one['failures']:>7}",
        f"{str(t['replicas']) + ' replicas (round_robin)':<26} {every['throughput_rps']:>8.2f} "
        f"{every['p50_ms']:>8.1f} {every['p99_ms']:>8.1f} {every['failures']:>7}",
        f"ratio {t['replicas']} / 1: {t['ratio']:.2f}× (every replica runs on this machine's "
        f"cores: on a 2-core machine this shows the overhead, not a speed-up)",
    ]
