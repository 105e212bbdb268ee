"""Loading the generation pipeline a server configuration asks for."""

from __future__ import annotations

from server.backends import BackendName
from server.backends.torch_backend import TorchBackend
from server.config import ServerConfig
from server.host_model import HostModel
from server.pipeline import GenerationPipeline
from textinv.errors import InvalidInputError
from textinv.model import BaseModel, load_base_model


def load_pipeline(config: ServerConfig) -> tuple[GenerationPipeline, BaseModel | None]:
    """The pipeline, and the torch model when one was loaded (inversion jobs share it)."""
    if config.model is None:
        raise InvalidInputError("no model given: pass --model PATH")
    backend = BackendName.parse(config.backend)
    if backend is BackendName.TORCH:
        model = load_base_model(config.model)
        return GenerationPipeline(HostModel.of(model), TorchBackend(model)), model
    raise InvalidInputError(f"backend {backend.value!r} is not available in this server yet")
