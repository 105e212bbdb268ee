"""The processor's achievable peak, measured: a GEMM microbenchmark for ``textinv bench report``.

``torch.matmul`` of two ``n × n`` matrices costs ``2·n³`` FLOPs (n³ multiply-adds). For each
precision, each size is run once to warm up (oneDNN or cuBLAS picks its kernel, pages are
touched), then timed as the best of ``repeats`` batches of calls, each batch long enough to
measure (``min_batch_s``); the precision's peak is its best size. Sizes go up from small, and a
size whose one call already takes longer than ``max_call_s`` (bf16 emulated through fp32 on a CPU
without a native bf16 path, say) is the last one, so the whole measurement stays at a few seconds
on a 2-core CPU.

The figure is what this machine achieves on the friendliest workload there is, at the thread
count the benchmarks ran with; a model's share of it (``report_machine.utilization``) is then an
honest fraction. Where a model's achieved figure is above it anyway (the sizes missed the best
tiling), ``effective_peaks`` raises the peak to that figure and says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from textinv.dtypes import torch_dtype
from textinv_client.choices import Precision

CPU_SIZES = (512, 1024, 2048)
CUDA_SIZES = (2048, 4096, 8192)
CPU_PRECISIONS = (Precision.FP32, Precision.BF16)
CUDA_PRECISIONS = (Precision.FP32, Precision.BF16, Precision.FP16)
METHOD = (
    "GEMM microbenchmark: torch.matmul of n×n matrices, FLOPs = 2·n³, best of {repeats} after "
    "a warm-up call"
)


def gemm_flops(n: int) -> int:
    """FLOPs of one ``[n, n] @ [n, n]``: n² outputs, each n multiplies and n adds."""
    return 2 * n**3


@dataclass(frozen=True)
class GemmTiming:
    """One size in one precision: the best batch's seconds per call, and what that achieves."""

    size: int
    precision: str
    seconds_per_call: float
    calls_per_batch: int
    tflops: float


@dataclass(frozen=True)
class MeasuredPeak:
    """One precision's peak on one device: its best size, and every size tried."""

    device: str
    precision: str
    tflops: float
    size: int  # the size that reached it
    timings: tuple[GemmTiming, ...]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def time_gemm(
    n: int,
    precision: Precision | str,
    device: torch.device | str = "cpu",
    *,
    repeats: int = 3,
    min_batch_s: float = 0.05,
) -> GemmTiming:
    """The best of ``repeats`` timed batches of ``[n, n] @ [n, n]`` after one warm-up call."""
    device = torch.device(device)
    dtype = torch_dtype(precision)
    generator = torch.Generator(device=device).manual_seed(0)  # drawn where they are used
    a = torch.randn(n, n, generator=generator, device=device, dtype=dtype)  # [n, n]
    b = torch.randn(n, n, generator=generator, device=device, dtype=dtype)  # [n, n]
    first = _timed_calls(a, b, 1)  # the warm-up call, also the batch size's calibration
    calls = max(1, math.ceil(min_batch_s / max(first, 1e-9)))
    best = min(_timed_calls(a, b, calls) for _ in range(repeats)) / calls
    return GemmTiming(
        size=n,
        precision=Precision.parse(precision).value,
        seconds_per_call=best,
        calls_per_batch=calls,
        tflops=gemm_flops(n) / best / 1e12,
    )


def _timed_calls(a: torch.Tensor, b: torch.Tensor, calls: int) -> float:
    """Seconds for ``calls`` matmuls, the device drained before and after (CUDA runs async)."""
    _synchronize(a.device)
    started = time.perf_counter()
    for _ in range(calls):
        torch.matmul(a, b)
    _synchronize(a.device)
    return time.perf_counter() - started


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak(
    precision: Precision | str,
    device: torch.device | str = "cpu",
    sizes: Iterable[int] | None = None,
    *,
    repeats: int = 3,
    max_call_s: float = 0.5,
) -> MeasuredPeak:
    """One precision's peak: each size up from the smallest, stopping after a size whose one
    call takes longer than ``max_call_s``."""
    device = torch.device(device)
    sizes = sorted(sizes or (CUDA_SIZES if device.type == "cuda" else CPU_SIZES))
    timings: list[GemmTiming] = []
    for n in sizes:
        timings.append(time_gemm(n, precision, device, repeats=repeats))
        if timings[-1].seconds_per_call > max_call_s:
            break
    best = max(timings, key=lambda t: t.tflops)
    return MeasuredPeak(str(device), best.precision, best.tflops, best.size, tuple(timings))


def measure_peaks(
    device: torch.device | str = "cpu",
    precisions: Iterable[Precision | str] | None = None,
    *,
    threads: int = 0,
    sizes: Iterable[int] | None = None,
    repeats: int = 3,
) -> dict[str, MeasuredPeak]:
    """Each precision's peak on ``device`` (default precisions: fp32 and bf16 on a CPU, fp32,
    bf16 and fp16 on CUDA), with ``threads`` torch threads (0: as they are)."""
    device = torch.device(device)
    default = CUDA_PRECISIONS if device.type == "cuda" else CPU_PRECISIONS
    wanted = [Precision.parse(p) for p in (precisions or default)]
    sizes = tuple(sizes) if sizes is not None else None
    with torch_threads(threads), torch.no_grad():
        return {
            p.value: measure_peak(p, device, sizes, repeats=repeats)
            for p in dict.fromkeys(wanted)  # in order, once each
        }


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside, the old count after; 0 leaves it alone."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Peak:
    """The peak one precision's fractions are taken against, and where the figure comes from."""

    tflops: float
    source: str


def effective_peaks(
    measured: Mapping[str, float], achieved: Mapping[str, tuple[str, float]], source: str
) -> dict[str, Peak]:
    """Per precision, ``max(measured, best achieved)``, so that no fraction passes 100%.

    ``measured``: precision → TFLOP/s (the GEMM's, or the caller's ``--peak-tflops``; ``source``
    names it); ``achieved``: row → (the precision it ran in, its TFLOP/s). A precision whose best
    row beats its measured figure (or that has none) gets that row's figure, labelled so."""
    best: dict[str, tuple[str, float]] = {}
    for row, (precision, tflops) in achieved.items():
        if precision not in best or tflops > best[precision][1]:
            best[precision] = (row, tflops)
    peaks = {precision: Peak(tflops, source) for precision, tflops in measured.items()}
    for precision, (row, tflops) in best.items():
        if precision not in measured:
            peaks[precision] = Peak(tflops, f"best achieved ({row}); no {source} figure")
        elif tflops > measured[precision]:
            label = f"max({source} {measured[precision]:.4g} TFLOP/s, best achieved: {row})"
            peaks[precision] = Peak(tflops, label)
    return peaks
