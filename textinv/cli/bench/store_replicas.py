"""The replicas of ``textinv bench store``: real ``textinv serve`` processes on one PostgreSQL
store, how long a concept registered (or deleted) through one takes to be usable (or gone) on
another, and closed-loop throughput against one replica and against all of them.

Propagation is judged by what matters, the other replica's *generation* path: a 1-step Generate
at the model's smallest size whose prompt names the token succeeds (usable) or answers NOT_FOUND
(gone). A store read such as GetConcept would prove nothing about that replica's cache. Each
figure runs from the moment the change's RPC returned on the first replica to the end of the
first probe on the second that saw it, so it includes one probe's round trip: the baseline is
that round trip alone (a successful probe on the same replica, same client), and a ratio near 1
means the first probe already saw the change.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

import textinv
from textinv.cli.bench.serve_load import LoadResult, closed_loop
from textinv.concepts import Concept, concept_to_bytes
from textinv_client import GenerateRequest, NotFound, TextInvClient

REPO = Path(textinv.__file__).resolve().parents[1]  # `python -m textinv` runs from here
START_TIMEOUT_S = 300.0  # a replica loads its model and warms up before it serves
SEEN_TIMEOUT_S = 10.0  # a change not seen by then is counted as not propagated
CALL_TIMEOUT_S = 120.0
_SERVING = re.compile(r"serving on ([\d.]+:\d+)")


class ServeProcess:
    """``python -m textinv serve`` on a free local port, without training workers; the store's
    URL travels in ``$TEXTINV_STORE``, so its password never shows in a process list."""

    def __init__(self, model: str | None, data: Path, store: str, threads: int = 0) -> None:
        data.mkdir(parents=True, exist_ok=True)
        self.log = data / "serve.log"
        command = [sys.executable, "-m", "textinv", "serve", "--no-workers", "--data", str(data)]
        command += ["--host", "127.0.0.1", "--port", "0", "--grace", "2"]
        command += ["--model", model] if model else []
        env = os.environ | {"TEXTINV_STORE": store, "PYTHONUNBUFFERED": "1"}
        if threads:  # torch's intra-op threads; 0: its default (every core)
            env |= {"OMP_NUM_THREADS": str(threads)}
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=log,  # a file, never a pipe nobody drains
                text=True,
                env=env,
            )
        self.target = ""

    def wait_serving(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """The ``HOST:PORT`` it printed once serving; its log's tail if it died first."""
        deadline = time.monotonic() + timeout_s
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(
                    f"textinv serve exited with {self.process.returncode}: " + " | ".join(tail)
                )
            found = _SERVING.search(line)
            if found:
                self.target = found.group(1)
                return self.target
        raise TimeoutError(f"textinv serve did not report serving in {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


def start_replicas(
    model: str | None, scratch: Path, store: str, count: int, threads: int = 0
) -> list[ServeProcess]:
    """``count`` replicas, started together (they load in parallel), each serving."""
    replicas = [ServeProcess(model, scratch / f"replica-{i}", store, threads) for i in range(count)]
    try:
        for replica in replicas:
            replica.wait_serving()
    except BaseException:
        stop_all(replicas)
        raise
    return replicas


def stop_all(replicas: Sequence[ServeProcess]) -> None:
    for replica in replicas:
        replica.stop()


# --- propagation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One change as another replica saw it."""

    ms: float  # from the change's acknowledgement to the end of the first probe that saw it
    probes: int  # calls it took; 1: the first probe after the acknowledgement saw it
    seen: bool  # False: not within SEEN_TIMEOUT_S


def probe_request(token: str, side: int) -> GenerateRequest:
    """The cheapest Generate that names ``token``: 1 step, no guidance, ``side``² pixels."""
    return GenerateRequest(
        f"a photo of {token}", steps=1, guidance_scale=1.0, seed=0, width=side, height=side
    )


def usable(client: TextInvClient, token: str, side: int) -> bool:
    """Whether the replica behind ``client`` generates with ``token`` (False: NOT_FOUND)."""
    try:
        client.generate(probe_request(token, side))
    except NotFound:
        return False
    return True


def wait_seen(check: Callable[[], bool], since: float) -> Seen:
    """Probe back to back until ``check()`` holds; timed from ``since`` (``perf_counter``)."""
    probes = 0
    while True:
        probes += 1
        if check():
            return Seen((time.perf_counter() - since) * 1000, probes, True)
        if time.perf_counter() - since > SEEN_TIMEOUT_S:
            return Seen((time.perf_counter() - since) * 1000, probes, False)


def concept_bytes(token: str, width: int, seed: int) -> bytes:
    vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(seed))  # [K, D]
    return concept_to_bytes(Concept(token, vectors))


@dataclass
class PropagationSamples:
    """Per registration: a token that the second replica had missed before, one it never
    looked up (cold), the deletion of the first; and the probe's round trip alone, succeeding
    (``baseline_ms``) and answering NOT_FOUND (``missing_ms``: no image is made then)."""

    missed: list[Seen]
    cold: list[Seen]
    deleted: list[Seen]
    baseline_ms: list[float]
    missing_ms: list[float]


def measure_propagation(
    targets: Sequence[str], registrations: int, width: int, side: int
) -> PropagationSamples:
    """``registrations`` rounds; round i changes concepts through replica i and probes replica
    i + 1 (mod the count), so every pair is measured. Tokens are unique to this run."""
    clients = [TextInvClient(t, timeout=CALL_TIMEOUT_S, retries=False) for t in targets]
    run = uuid.uuid4().hex[:6]
    anchor = f"<s{run}a>"  # always registered: the baseline probe succeeds
    samples = PropagationSamples([], [], [], [], [])
    try:
        clients[0].register_concept(concept_bytes(anchor, width, 0), filename="a.safetensors")
        for client in clients:  # warm-up: each replica has the anchor cached
            usable(client, anchor, side)
        for i in range(registrations):
            writer, reader = clients[i % len(clients)], clients[(i + 1) % len(clients)]
            one_round(writer, reader, f"<s{run}r{i}>", (width, side, i + 1), samples)
            samples.baseline_ms.append(_timed_ms(partial(usable, reader, anchor, side)))
        clients[0].delete_concept(anchor)
    finally:
        for client in clients:
            client.close()
    return samples


def one_round(
    writer: TextInvClient,
    reader: TextInvClient,
    token: str,
    shape: tuple[int, int, int],
    samples: PropagationSamples,
) -> None:
    """Miss ``token`` on the reader (cached as missing), register it on the writer, wait for the
    reader to use it, delete it, wait for it to be gone; then the same for a cold token."""
    width, side, seed = shape
    begin = time.perf_counter()
    if usable(reader, token, side):
        raise RuntimeError(f"{token} is usable before it was registered")
    samples.missing_ms.append((time.perf_counter() - begin) * 1000)
    writer.register_concept(concept_bytes(token, width, seed), filename="c.safetensors")
    since = time.perf_counter()
    samples.missed.append(wait_seen(lambda: usable(reader, token, side), since))
    writer.delete_concept(token)
    since = time.perf_counter()
    samples.deleted.append(wait_seen(lambda: not usable(reader, token, side), since))
    cold = token.replace("r", "c", 1)  # "<s…c…>": never named before on any replica
    writer.register_concept(concept_bytes(cold, width, seed), filename="c.safetensors")
    since = time.perf_counter()
    samples.cold.append(wait_seen(lambda: usable(reader, cold, side), since))
    writer.delete_concept(cold)


def _timed_ms(call: Callable[[], object]) -> float:
    begin = time.perf_counter()
    call()
    return (time.perf_counter() - begin) * 1000


# --- throughput ----------------------------------------------------------------------------


def measure_throughput(
    targets: Sequence[str], concurrency: int, requests: int, steps: int, side: int
) -> dict[str, LoadResult]:
    """Closed loop (``serve_load.closed_loop``) against the first replica alone, then with the
    client given every address (gRPC's round_robin spreads the calls)."""
    request = GenerateRequest(
        "a photo of a red star", steps=steps, guidance_scale=1.0, seed=0, width=side, height=side
    )
    results: dict[str, LoadResult] = {}
    for name, target in (("one", [targets[0]]), ("all", list(targets))):
        connect = _connector(target)
        results[name] = closed_loop(connect, request, concurrency, requests, name)
    return results


def _connector(target: list[str]) -> Callable[[], TextInvClient]:
    return lambda: TextInvClient(target, timeout=CALL_TIMEOUT_S)


def smallest_side(folder: Path) -> int:
    """The smallest square a Generate on the model in ``folder`` may ask for: one latent cell
    per UNet downsampling level (2^levels cells × the VAE's pixels per cell), in 8-px steps."""
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    pixels = 2 ** (len(vae["block_out_channels"]) - 1) * 2 ** (len(unet["block_out_channels"]) - 1)
    return -(-pixels // 8) * 8
