"""Loading the generation pipeline a server configuration asks for."""

from __future__ import annotations

from server.backends import BackendName, BackendOptions
from server.config import ServerConfig
from server.pipeline import GenerationPipeline, load_generation_pipeline
from textinv.model import BaseModel, load_base_model


def load_pipeline(config: ServerConfig) -> tuple[GenerationPipeline, BaseModel | None]:
    """The pipeline, and the torch model when one was loaded (inversion jobs then share it;
    with an exported backend, a job loads the torch model itself when it starts)."""
    backend = BackendName.parse(config.backend)
    options = BackendOptions(engines=config.engines)
    if backend is BackendName.TORCH:
        model = load_base_model(config.model)
        return load_generation_pipeline(model, backend, options), model
    return load_generation_pipeline(config.model, backend, options), None
