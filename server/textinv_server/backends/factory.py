"""The factory for the three backends: a model (folder or loaded) and ``BackendOptions`` in, the
host side of the model and the backend that runs its graphs out.

``torch`` runs the model's own modules; ``onnxruntime`` and ``tensorrt`` load the export in
``options.engines`` through its manifest, which must have been written for this model, and read
only the host side (tokenizer, token table, configs) of the model folder. Each backend module is
imported only when it is asked for, so a server without TensorRT never imports it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from textinv.dtypes import torch_dtype
from textinv.errors import InvalidInputError
from textinv.model import BaseModel, load_base_model
from textinv_server.backends import Backend, BackendName, BackendOptions
from textinv_server.host_model import HostModel, load_host_model

ModelSource = str | Path | BaseModel | None


def load_backend(
    model: ModelSource, name: BackendName, options: BackendOptions
) -> tuple[HostModel, Backend]:
    """The host model and the ``name`` backend for ``model``."""
    if name is BackendName.TORCH:
        return _load_torch(model, options)
    host = HostModel.of(model) if isinstance(model, BaseModel) else load_host_model(model)
    if options.engines is None:
        raise InvalidInputError(f"the {name.value} backend needs --engines DIR (an export)")
    if name is BackendName.ONNXRUNTIME:
        return host, _load_onnxruntime(host, options.engines, options)
    return host, _load_tensorrt(host, options.engines, options)


def _load_torch(model: ModelSource, options: BackendOptions) -> tuple[HostModel, Backend]:
    from textinv_server.backends.torch_backend import TorchBackend

    if not isinstance(model, BaseModel):
        model = load_base_model(model, dtype=torch_dtype(options.precision), device=options.device)
    elif torch.device(options.device) != model.unet.device:
        for module in model.modules:
            module.to(options.device)
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    host = HostModel.of(model)  # before the backend casts the weights: a float32 CPU table
    return host, TorchBackend(model, options=options.torch_options)


def _load_onnxruntime(host: HostModel, engines: Path, options: BackendOptions) -> Backend:
    from textinv_server.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        engines,
        host.model_hash,
        provider=options.provider,
        threads=options.threads,
        verify_checksums=options.verify_checksums,
        device_id=cuda_index(options.device),  # the CUDA and TensorRT providers' GPU
    )


def _load_tensorrt(host: HostModel, engines: Path, options: BackendOptions) -> Backend:
    from textinv_server.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(
        engines,
        host.model_hash,
        device=cuda_index(options.device),
        verify_checksums=options.verify_checksums,
    )


def cuda_index(device: str) -> int:
    """The GPU an exported backend runs on: ``"cuda:1"`` → 1; ``"cuda"`` and ``"cpu"`` (the
    default device, which a GPU provider does not use) → 0."""
    parsed = torch.device(device)
    return (parsed.index or 0) if parsed.type == "cuda" else 0
