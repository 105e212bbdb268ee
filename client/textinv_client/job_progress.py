"""Following an inversion job from the command line: a progress bar, then its outcome."""

from __future__ import annotations

import sys
import time
from typing import Any

from textinv_client.command_support import EXIT_OK, fail
from textinv_client.sync_client import TextInvClient
from textinv_client.types import JobInfo, JobProgress, JobState


def describe_job(job: JobInfo) -> str:
    loss = "" if job.loss is None else f", loss {job.loss:.4f}"
    token = job.params.token if job.params else "?"
    return f"{job.job_id} {token}: {job.state.value}, step {job.step}/{job.total_steps}{loss}"


class ProgressDisplay:
    """A progress bar on stderr: tqdm when it is installed, else a plain status line."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._last_line = 0.0
        try:
            from tqdm import tqdm
        except ImportError:
            self._tqdm: Any = None
        else:
            self._tqdm = tqdm

    def update(self, progress: JobProgress) -> None:
        if self._tqdm is not None:
            self._update_bar(progress)
            return
        # Without tqdm: redraw in place on a terminal, else at most one line per second.
        now = time.monotonic()
        if not sys.stderr.isatty() and now - self._last_line < 1.0:
            return
        self._last_line = now
        line = (
            f"step {progress.step}/{progress.total_steps}  loss {progress.loss:.4f}  "
            f"{progress.steps_per_second:.2f} step/s  eta {progress.eta_seconds:.0f}s"
        )
        end = "\r" if sys.stderr.isatty() else "\n"
        print(line, end=end, file=sys.stderr, flush=True)

    def _update_bar(self, progress: JobProgress) -> None:
        if self._bar is None:
            self._bar = self._tqdm(total=progress.total_steps, unit="step", file=sys.stderr)
        self._bar.update(progress.step - self._bar.n)
        self._bar.set_postfix(loss=f"{progress.loss:.4f}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._tqdm is None and self._last_line and sys.stderr.isatty():
            print(file=sys.stderr)


def watch_until_done(textinv: TextInvClient, job_id: str) -> int:
    """Follow a job with a progress bar; exit 0 only when it SUCCEEDED."""
    final = _follow(textinv, job_id)
    if final is None:
        return fail(f"job {job_id}: the server ended the watch before the job finished")
    print(describe_job(final))
    if final.state is JobState.SUCCEEDED:
        if final.registered_token:
            print(f"registered {final.registered_token}")
        return EXIT_OK
    return fail(f"job {job_id} {final.state.value}" + (f": {final.error}" if final.error else ""))


def _follow(textinv: TextInvClient, job_id: str) -> JobInfo | None:
    """Show the job's progress and state changes; its terminal JobInfo, if the watch saw it."""
    final: JobInfo | None = None
    last_state: JobState | None = None
    display = ProgressDisplay()
    try:
        for event in textinv.watch_job(job_id):
            if isinstance(event, JobProgress):
                display.update(event)
            elif event.state.is_terminal:
                final = event
            elif event.state is not last_state:
                last_state = event.state
                print(f"job {job_id}: {event.state.value}", file=sys.stderr)
    finally:
        display.close()
    return final
