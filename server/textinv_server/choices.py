"""The server's own closed choices: which backend, which onnxruntime provider.

The project's shared choices (``Scheduler``, ``Precision``, ``JobState``, ...) are
``textinv_client.choices``; only what no other package spells lives here.
"""

from __future__ import annotations

from textinv_client.choices import Choice


class BackendName(Choice):
    """Where the generation pipeline's three graphs run (``textinv_server.backends``)."""

    __choice_name__ = "backend"

    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


class Provider(Choice):
    """The onnxruntime backend's execution provider."""

    __choice_name__ = "onnxruntime provider"

    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"
