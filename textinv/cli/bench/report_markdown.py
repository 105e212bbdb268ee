"""The files of ``textinv bench report``: ``report.json``, ``report.md`` (every measurement as
tables: the machine and its instruction sets, the measured peaks, each benchmark, the time to the
first image) and the plots, and the summary lines it prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """``report.json``, ``report.md`` and the plots (where matplotlib is installed)."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "report.md"]
    try:
        from textinv.cli.bench import plots
    except ImportError as error:  # matplotlib missing: tables only, and say so
        report.setdefault("notes", []).append(f"plots skipped: {error}")
    else:
        written += plots.draw_all(report, out)
    written[0].write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    written[1].write_text(markdown(report))
    return written


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    lines = ["# textinv benchmark report", ""]
    lines += _md_machine(report)
    lines += _md_ratios(report["ratios"])
    lines += _md_invert(report["invert"])
    lines += _md_generate(report["generate"])
    lines += _md_serve(report["serve"], report.get("serve_model"))
    lines += _md_startup(report.get("startup"))
    lines += _md_flops(report)
    lines += ["## Settings", "", "```json", json.dumps(report["settings"], indent=2,
              default=_json_default), "```", ""]  # fmt: skip
    if report.get("notes"):
        lines += ["## Notes", "", *[f"- {note}" for note in report["notes"]], ""]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _md_machine(report: dict[str, Any]) -> list[str]:
    rows = [[key, _text(value)] for key, value in report["machine"].items()]
    rows += [[key, value] for key, value in report["versions"].items()]
    return ["## Machine and versions", "", *_table(["", ""], rows)]


def _text(value: object) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value) or "none"
    return str(value)


def _md_ratios(ratios: dict[str, float]) -> list[str]:
    rows = [[name, f"{value:.3f}"] for name, value in ratios.items()]
    header = ["comparison (same run)", "ratio"]
    return ["## Ratios", "", "Speed-ups are ours ÷ baseline in throughput.", "",
            *_table(header, rows)]  # fmt: skip


def _md_invert(invert: dict[str, Any]) -> list[str]:
    rows = []
    for method in ("textinv", "reference"):
        r = invert[method]
        rows.append([
            method, f"{r['steps_per_s']:.3f}", f"{r['median_step_s'] * 1000:.1f}",
            f"{r['min_step_s'] * 1000:.1f}–{r['max_step_s'] * 1000:.1f}",
            f"{r['peak_rss_mib']:.0f}",
        ])  # fmt: skip
    s = invert["settings"]
    title = (
        f"## Training (invert): {s['resolution']} px, batch {s['batch_size']}, "
        f"{s['precision']}, {s['steps']} timed steps after {s['warmup']} warm-up"
    )
    header = ["method", "steps/s", "median ms/step", "min–max ms", "peak RSS MiB"]
    return [title, "", *_table(header, rows)]


def _md_generate(generate: dict[str, Any]) -> list[str]:
    s = generate["settings"]
    title = (
        f"## Generation: {s['resolution']}² px, {s['steps']} steps ({s['scheduler']}), "
        f"{s['warmup']} warm-up + {s['repeats']} runs, {s['device']}, weights {s['weights']}"
    )
    rows = []
    for name, row in generate["runners"].items():
        if row.get("status", "ok") != "ok":
            rows.append([name, f"failed: {row['error']}", "", "", "", "", ""])
            continue
        rows.append([
            name, _spread(row["e2e"]), _spread(row["text_encoder"]), _spread(row["unet_step"]),
            _spread(row["vae_decode"]), _ratio(row["speedup_e2e"]),
            _ratio(row["speedup_unet_step"]),
        ])  # fmt: skip
    header = ["runner", "end to end ms", "text encoder ms", "UNet step ms", "VAE decode ms",
              "e2e × diffusers", "step × diffusers"]  # fmt: skip
    lines = [title, "", "Median (min–max).", "", *_table(header, rows)]
    concepts = generate.get("concepts")
    if concepts:
        lines += [
            f"Concepts on {concepts['backend']}: end to end {concepts['e2e_0_concepts_ms']:.1f} "
            f"ms with none, {concepts['e2e_3_concepts_ms']:.1f} ms with 3; adding one to a "
            f"running pipeline {concepts['add_concept_ms']:.3f} ms, reload: "
            f"{concepts['backend_reloaded']}.",
            "",
        ]
    return lines


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"  # None: the reference runner failed


def _spread(stats: dict[str, float]) -> str:
    return f"{stats['median_ms']:.1f} ({stats['min_ms']:.1f}–{stats['max_ms']:.1f})"


def _md_serve(serve: list[dict[str, Any]], served: dict[str, Any] | None) -> list[str]:
    label = (served or {}).get("label", "the model")
    if not serve:
        return ["## Serving", "", "Not measured.", ""]
    rows = [
        [r["mode"], str(r["concurrency"]), _offered(r.get("offered_rps")), str(r["requests"]),
         str(r["failures"]), f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['p99_ms']:.1f}",
         f"{r['throughput_rps']:.2f}"]
        for r in serve
    ]  # fmt: skip
    header = ["mode", "clients", "offered req/s", "requests", "failed", "p50 ms", "p95 ms",
              "p99 ms", "req/s"]  # fmt: skip
    return [f"## Serving under concurrency: {label}", "", *_table(header, rows)]


def _offered(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2f}"  # None: closed loop


def _md_startup(startup: dict[str, Any] | None) -> list[str]:
    if not startup:
        return []
    s = startup["settings"]
    lines = [
        f"## Time to the first image: {s['label']}",
        "",
        f"A cold process each, once: `{s['model']}`, {s['steps']} DDIM steps, {s['side']}² px, "
        f"{s['device']}. From spawning the process.",
        "",
    ]
    lines += _table(["", "ready", "first image", "precision"], startup_rows(startup))
    speedup = startup["first_image_speedup_vs_diffusers"]
    if speedup is not None:
        lines += [f"diffusers' time to the first image ÷ ours: {speedup:.2f}.", ""]
    return lines


def startup_rows(startup: dict[str, Any]) -> list[list[str]]:
    """One row per side: ready (SERVING, or the pipeline loaded), first image, precision."""
    rows = []
    for name, key, ready in (("textinv serve", "textinv", "serving_s"),
                             ("diffusers", "diffusers", "loaded_s")):  # fmt: skip
        side = startup[key]
        if side["status"] != "ok":
            rows.append([name, f"failed: {side['error']}", "", ""])
            continue
        rows.append([name, f"{side[ready]:.2f} s", f"{side['first_image_s']:.2f} s",
                     side["precision"]])  # fmt: skip
    return rows


def _md_flops(report: dict[str, Any]) -> list[str]:
    flops = report["flops"]
    lines = [
        "## FLOPs and the measured peak",
        "",
        f"UNet per denoising step ({flops['unet_step_rows']} rows, "
        f"{flops['unet_step_resolution']} px): {flops['unet_flops_per_denoising_step'] / 1e9:.2f}"
        f" GFLOP; per training step (batch {flops['train_batch']}, "
        f"{flops['train_resolution']} px, forward + backward): "
        f"{flops['unet_flops_per_train_step'] / 1e9:.2f} GFLOP. Counted with {flops['method']}.",
        "",
        *_md_peaks(report["peak"]),
    ]
    rows = [
        [name, u["precision"], f"{u['tflops']:.4f}", f"{u['peak_tflops']:.4f}",
         f"{100 * u['fraction_of_peak']:.2f}%", u["peak_source"]]
        for name, u in report["utilization"].items()
    ]  # fmt: skip
    header = ["UNet in", "precision", "achieved TFLOP/s", "peak TFLOP/s", "of peak", "peak source"]
    return lines + _table(header, rows)


def _md_peaks(peak: dict[str, Any]) -> list[str]:
    """The GEMM's figures per device and precision, each size's too, and the data sheet's."""
    threads = peak["threads"] or "torch's default"
    lines = [f"Peak measured with {peak['method']}; torch threads: {threads}.", ""]
    rows = []
    for device, by_precision in peak["measured"].items():
        for precision, found in by_precision.items():
            sizes = ", ".join(f"{t['size']}: {t['tflops']:.3f}" for t in found["timings"])
            rows.append([device, precision, f"{found['tflops']:.3f}", str(found["size"]), sizes])
    lines += _table(["device", "precision", "peak TFLOP/s", "at n", "TFLOP/s by n"], rows)
    if peak["data_sheet"]:
        sheet = peak["data_sheet"]
        lines += [f"Reference only: {sheet['tflops']:.0f} TFLOP/s ({sheet['source']}).", ""]
    return lines


def summary_lines(report: dict[str, Any]) -> list[str]:
    """What the command prints: the machine, the peaks, every ratio, each runner's share of its
    precision's peak, and the time to the first image."""
    machine = report["machine"]
    lines = [
        f"machine: {machine['cpu']} ({_text(machine['cpu_instruction_sets'])}; torch "
        f"{machine['torch_cpu_capability']}), auto precision on {machine['device']}: "
        f"{machine['auto_precision']}",
    ]
    for device, by_precision in report["peak"]["measured"].items():
        for precision, found in by_precision.items():
            gemm = f"{found['tflops']:.3f} TFLOP/s (GEMM, n={found['size']})"
            lines.append(f"peak {device} {precision}: {gemm}")
    lines += [f"{name}: {value:.3f}" for name, value in report["ratios"].items()]
    for name, u in report["utilization"].items():
        lines.append(
            f"{name} ({u['precision']}): {u['tflops']:.4f} TFLOP/s, "
            f"{100 * u['fraction_of_peak']:.2f}% of {u['peak_tflops']:.3f} ({u['peak_source']})"
        )
    served = report.get("serve_model")
    if served:
        lines.append(f"serve measured on: {served['label']}")
    if report.get("startup"):
        for name, ready, first, precision in startup_rows(report["startup"]):
            what = f"ready {ready}, first image {first} ({precision})" if first else ready
            lines.append(f"time to first image, {name}: {what}")
    return lines
