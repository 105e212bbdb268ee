"""What ``textinv bench serve`` prints after measuring: one row per point, then the comparisons
(gRPC against in-process, batching on against off) and the refused and failed totals."""

from __future__ import annotations

from textinv.cli.bench.serve_load import LoadResult

HEADER = (
    f"{'mode':<11} {'conc':>4} {'offered':>8} {'reqs':>5} {'p50 ms':>9} {'p95 ms':>9} "
    f"{'p99 ms':>9} {'req/s':>7} {'refused':>8} {'failed':>7}"
)


def print_results(results: list[LoadResult], levels: list[int], *, own_server: bool) -> None:
    for line in result_lines(results, levels, own_server=own_server):
        print(line)


def result_lines(results: list[LoadResult], levels: list[int], *, own_server: bool) -> list[str]:
    lines = [HEADER, *(_row(r) for r in results)]
    lines.append(
        "conc: clients (closed loop), the most requests in flight (open loop); offered: the "
        "open loop's arrival rate, req/s; refused: RESOURCE_EXHAUSTED (queue limit); failed: "
        "any other error; req/s counts successes only"
    )
    if own_server:
        lines += _comparisons(results, levels)
    else:
        lines.append("skipped: the in-process baseline and batching off (--server: none started)")
    refused = sum(r.refused for r in results)
    other = sum(r.other_failures for r in results)
    sent = sum(r.requests for r in results)
    lines.append(
        f"refused requests: {refused} of {sent}; other failures: {other} "
        "(target 0 below the queue limit)"
    )
    return lines


def _row(r: LoadResult) -> str:
    offered = "-" if r.offered_rps is None else f"{r.offered_rps:.3g}"
    return (
        f"{r.mode:<11} {r.concurrency:>4} {offered:>8} {r.requests:>5} {r.p50_ms:>9.1f} "
        f"{r.p95_ms:>9.1f} {r.p99_ms:>9.1f} {r.throughput_rps:>7.2f} {r.refused_share:>8.1%} "
        f"{r.failed_share:>7.1%}"
    )


def _comparisons(results: list[LoadResult], levels: list[int]) -> list[str]:
    """The two ratios the targets name, from the closed-loop rows."""
    closed = {(r.mode, r.concurrency): r for r in results if r.offered_rps is None}
    lines = []
    local, remote = closed.get(("in-process", 1)), closed.get(("grpc", 1))
    if local and remote and remote.p50_ms > 0:
        overhead = (remote.p50_ms - local.p50_ms) / remote.p50_ms
        lines.append(
            f"gRPC overhead at concurrency 1: {overhead:+.1%} of p50 latency "
            f"({remote.p50_ms:.1f} ms vs {local.p50_ms:.1f} ms in-process; target ≤ 5%)"
        )
    for level in levels:
        on, off = closed.get(("grpc", level)), closed.get(("unbatched", level))
        if on and off and off.throughput_rps > 0:
            lines.append(
                f"batching at concurrency {level}: {on.throughput_rps / off.throughput_rps:.2f}× "
                f"the throughput of no batching ({on.throughput_rps:.2f} vs "
                f"{off.throughput_rps:.2f} req/s; target ≥ 1.5× at 8)"
            )
    return lines
