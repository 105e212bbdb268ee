"""The frozen UNet and text encoder as TorchScript traces, for the trainer's small steps on CPU.

At the embedded model's size (64 channels, 64 px, batch 1) a UNet forward is about 1,800 small
torch calls, and a third of its wall time is Python: diffusers' modules and torch's Python
bindings, not the kernels (Intel Xeon, 2 threads: 14.5 ms eager, 9.8 ms traced; the backward,
which autograd runs in C++ either way, 10.8 ms in both). A trace records those calls once and
replays them from C++.

The replay runs with the JIT's graph optimizations off (``torch.jit.optimized_execution(False)``,
a thread-local switch): the interpreter then dispatches exactly the recorded aten calls, autograd
records them as it records eager ones, and the outputs and every gradient equal eager's bit for
bit (``tests/unit/test_trainer_traced.py``). The trace shares the module's parameters. One is
recorded per input signature (shapes, dtypes, which inputs need a gradient, whether autograd is
on), because diffusers takes Python branches on shapes, which a trace freezes.

Only on CPU, and not under autocast (a trace would freeze its casts); elsewhere, and where the
caller turns it off, the module runs as it is. ``torch.jit.trace`` is deprecated in favour of
``torch.compile`` and ``torch.export``; neither does this job: ``torch.export``'s graph module
still dispatches every call from Python (24.6 ms forward and backward, as eager), and
``torch.compile`` took minutes to compile the training step on a 2-core machine. Should a trace
fail (a module it cannot record, a torch without TorchScript), the module runs eagerly and the
failure is logged once.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager
from typing import Any

import torch

log = logging.getLogger("textinv.trainer")

# A run meets a training batch and the evaluation batch, with and without autograd; a few more
# signatures are kept before the oldest is dropped (each holds a graph, no weights).
MAX_TRACES = 8


class Traced:
    """``module(*tensors)``, replayed from a trace recorded on each input signature's first
    call."""

    def __init__(
        self,
        module: torch.nn.Module,
        name: str,
        *,
        enabled: bool = True,
        within: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        self.module = module
        self.name = name  # for the log line when tracing fails
        self.enabled = enabled
        # Entered to record a trace and around every eager call: a trace keeps the kernels it
        # saw (the trainer's im2col convolutions), without the block's per-call Python.
        self.within = within
        self.traces: dict[Hashable, Any] = {}
        self.failed = False

    def __call__(self, *inputs: torch.Tensor) -> Any:
        recorded = self._trace_for(inputs) if self._may_trace(inputs) else None
        if recorded is None:
            with self.within():
                return self.module(*inputs)
        with torch.jit.optimized_execution(False):  # the recorded calls, as eager runs them
            return recorded(*inputs)

    def _may_trace(self, inputs: tuple[torch.Tensor, ...]) -> bool:
        return (
            self.enabled
            and not self.failed
            and all(t.device.type == "cpu" for t in inputs)
            and not torch.is_autocast_enabled("cpu")
        )

    def _trace_for(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        key = (torch.is_grad_enabled(), *(_signature(t) for t in inputs))
        if key in self.traces:
            return self.traces[key]
        try:
            with self.within():
                recorded = _record(self.module, inputs)
        except Exception as error:  # any failure to trace means: run eagerly
            log.warning("the %s runs eagerly: tracing it failed (%s)", self.name, error)
            self.failed = True
            return None
        if len(self.traces) >= MAX_TRACES:
            self.traces.pop(next(iter(self.traces)))
        self.traces[key] = recorded
        return recorded


def _signature(tensor: torch.Tensor) -> Hashable:
    return (tuple(tensor.shape), tensor.dtype, tensor.device, tensor.requires_grad)


def _record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    """A trace of ``module(*inputs)``, recorded on detached copies of ``inputs`` so that it
    neither reaches into the caller's autograd graph nor keeps it alive.

    The trace is of a function that calls the module, not of the module: its parameters become
    constants of the graph that hold the same tensors (no copy; frozen parameters only, which is
    all the trainer has), and no ScriptModule mirrors the module tree (at the embedded model's
    size 16 MiB less, and a forward 0.9 ms faster without its 640 attribute reads). Its
    ``TracerWarning``s on shape branches are expected (each signature has its own trace) and its
    deprecation notice is answered in the docstring above, so both are silenced."""
    examples = tuple(t.detach().requires_grad_(t.requires_grad) for t in inputs)

    def call(*args: torch.Tensor) -> Any:
        return module(*args)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(call, examples, check_trace=False)
