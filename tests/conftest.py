"""Shared fixtures: a tiny seeded SD 1.x model in the diffusers layout, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Two cores are shared by everything on these machines; one thread keeps tests predictable.
torch.set_num_threads(int(os.environ.get("TEXTINV_TEST_THREADS", "1")))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from textinv.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):  # -> BaseModel
    from textinv.model import load_base_model

    return load_base_model(tiny_model_dir)
