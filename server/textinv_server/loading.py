"""Loading the generation pipeline a server configuration asks for."""

from __future__ import annotations

from textinv.model import BaseModel, load_base_model
from textinv_server.backends import BackendName, BackendOptions, TorchOptions, WeightDtype
from textinv_server.config import ServerConfig
from textinv_server.pipeline import GenerationPipeline, load_generation_pipeline


def load_pipeline(config: ServerConfig) -> tuple[GenerationPipeline, BaseModel | None]:
    """The pipeline, and the torch model when one was loaded (inversion jobs then share it;
    with an exported backend, a job loads the torch model itself when it starts)."""
    backend = BackendName.parse(config.backend)
    options = BackendOptions(
        engines=config.engines,
        device=config.device,
        provider=config.provider,
        torch_options=TorchOptions(
            weights=WeightDtype.parse(config.weights) if config.weights else None,
            channels_last=config.channels_last,
            cuda_graph=config.cuda_graph,
        ),
    )
    if backend is not BackendName.TORCH:
        return load_generation_pipeline(config.model, backend, options), None
    model = load_base_model(config.model)
    pipeline = load_generation_pipeline(model, backend, options)
    # Jobs share the model only as the trainer expects it: fp32 on the CPU. Otherwise a job
    # loads its own copy when it starts.
    shared = model if config.device == "cpu" and config.weights in (None, "fp32") else None
    return pipeline, shared
