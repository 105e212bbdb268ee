"""Loading the generation pipeline a server configuration asks for."""

from __future__ import annotations

from textinv.model import BaseModel, load_base_model
from textinv_server.backends import BackendName, BackendOptions, TorchOptions
from textinv_server.config import ServerConfig
from textinv_server.pipeline import GenerationPipeline, load_generation_pipeline


def load_pipeline(config: ServerConfig) -> tuple[GenerationPipeline, BaseModel | None]:
    """The pipeline, and the torch model when one was loaded (inversion jobs then share it;
    with an exported backend, a job loads the torch model itself when it starts)."""
    options = BackendOptions(
        engines=config.engines,
        device=config.device,
        provider=config.provider,
        torch_options=TorchOptions(
            weights=config.weights,
            channels_last=config.channels_last,
            cuda_graph=config.cuda_graph,
        ),
    )
    if config.backend is not BackendName.TORCH:
        return load_generation_pipeline(config.model, config.backend, options), None
    model = load_base_model(config.model)
    pipeline = load_generation_pipeline(model, config.backend, options)
    # Jobs on the CPU share the model when it is in the precision they resolve to (the job
    # trainer checks, per job); otherwise a job loads its own copy when it starts.
    shared = model if config.device == "cpu" else None
    return pipeline, shared
