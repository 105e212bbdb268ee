"""The optimum peer's parts that run without optimum: where its venv lives, every way building
it fails (as ``OptimumUnavailable``, never an error), the model copy transformers 4.57 reads,
and the worker's failures reaching the parent as ``OptimumWorkerError``."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest
from safetensors import safe_open

from textinv.cli.bench import optimum_worker
from textinv.cli.bench.optimum_peer import (
    CACHE_ENV,
    COMPLETE,
    NO_OPTIMUM_ENV,
    OPTIMUM_PINS,
    PYTHON_ENV,
    OptimumRunner,
    OptimumUnavailable,
    OptimumWorkerError,
    complete_optimum_python,
    ensure_optimum_python,
    optimum_venv_dir,
    venv_python,
)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache per test, and none of the variables that skip or redirect the build."""
    for name in (NO_OPTIMUM_ENV, PYTHON_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_venv_folder_is_in_the_cache_and_named_by_the_pins(cache: Path) -> None:
    folder = optimum_venv_dir()
    assert folder.parent == cache and folder.name.startswith("optimum-")
    assert optimum_venv_dir(OPTIMUM_PINS) == folder
    assert optimum_venv_dir((*OPTIMUM_PINS[:-1], "onnxruntime==1.31.0")) != folder


def test_without_the_cache_variable_the_venv_is_under_xdg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert optimum_venv_dir().parent == tmp_path / "xdg" / "textinv" / "bench"


def test_the_skip_variable_skips_without_building(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NO_OPTIMUM_ENV, "1")
    result = ensure_optimum_python(progress=pytest.fail)
    assert isinstance(result, OptimumUnavailable) and NO_OPTIMUM_ENV in result.reason
    assert not cache.exists()


def test_a_given_python_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(PYTHON_ENV, sys.executable)
    assert ensure_optimum_python(progress=pytest.fail) == Path(sys.executable)
    assert complete_optimum_python() == Path(sys.executable)
    monkeypatch.setenv(PYTHON_ENV, str(tmp_path / "no-python"))
    result = ensure_optimum_python(progress=pytest.fail)
    assert isinstance(result, OptimumUnavailable) and "no-python" in result.reason


def test_a_complete_venv_is_reused_without_building() -> None:
    folder = optimum_venv_dir()
    assert complete_optimum_python() is None
    folder.mkdir(parents=True)
    (folder / COMPLETE).write_text("{}")
    assert complete_optimum_python() == venv_python(folder)
    assert ensure_optimum_python(progress=pytest.fail) == venv_python(folder)


def test_a_pin_that_is_not_exact_is_refused_before_pip_runs() -> None:
    result = ensure_optimum_python(progress=pytest.fail, pins=(*OPTIMUM_PINS, "numpy>=2"))
    assert isinstance(result, OptimumUnavailable) and "numpy>=2" in result.reason


def test_a_python_that_does_not_exist_is_a_reason_not_an_error(tmp_path: Path) -> None:
    messages: list[str] = []
    result = ensure_optimum_python(messages.append, base_python=tmp_path / "no-python")
    assert isinstance(result, OptimumUnavailable) and "no-python" in result.reason
    assert messages and not optimum_venv_dir().exists()  # the partial folder is gone


def test_running_out_of_time_kills_the_build_and_is_a_reason() -> None:
    # Half a second cannot build a venv and install torch: the command running then is killed.
    result = ensure_optimum_python(progress=lambda _: None, timeout_s=0.5)
    assert isinstance(result, OptimumUnavailable) and "timed out" in result.reason
    assert not optimum_venv_dir().exists()


def test_the_worker_builds_each_scheduler_as_the_server_does() -> None:
    from textinv_server.schedulers import _CLASSES

    ours = {name.value: (cls.__name__, overrides) for name, (cls, overrides) in _CLASSES.items()}
    assert ours == optimum_worker.SCHEDULERS


def test_the_copy_for_transformers_4_prefixes_the_text_encoder_and_links_the_rest(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    copy = optimum_worker.compatible_copy(tiny_model_dir, tmp_path / "scratch")
    weights = "text_encoder/model.safetensors"
    with safe_open(tiny_model_dir / weights, "pt") as saved, safe_open(copy / weights, "pt") as new:
        saved_keys: list[str] = saved.keys()
        assert sorted(new.keys()) == sorted("text_model." + key for key in saved_keys)
        key = saved_keys[0]
        assert new.get_tensor("text_model." + key).equal(saved.get_tensor(key))
    index = json.loads((copy / "model_index.json").read_text())
    assert index["tokenizer"] == ["transformers", "CLIPTokenizerFast"]  # tokenizer.json only
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert (copy / "unet").resolve() == (tiny_model_dir / "unet").resolve()


def test_a_worker_that_cannot_load_raises_its_error_and_is_cleaned_up(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    # Our python has no optimum: the real worker starts, fails its load and says why.
    with pytest.raises(OptimumWorkerError, match="optimum") as caught:
        OptimumRunner(Path(sys.executable), tiny_model_dir, scheduler_config={})
    assert "ModuleNotFoundError" in str(caught.value) and caught.value.worker_traceback
    assert list((tmp_path / "tmp").iterdir()) == []  # its scratch folder is removed


def test_a_worker_that_dies_at_once_raises_instead_of_hanging(tiny_model_dir: Path) -> None:
    with pytest.raises(OptimumWorkerError, match="exited"):
        OptimumRunner(Path("/bin/false"), tiny_model_dir, scheduler_config={})


def test_a_worker_that_does_not_answer_in_time_is_killed(tiny_model_dir: Path) -> None:
    # Python cannot even start within 10 ms, so the load's answer cannot come in time.
    with pytest.raises(OptimumWorkerError, match="did not answer"):
        OptimumRunner(
            Path(sys.executable), tiny_model_dir, scheduler_config={}, load_timeout_s=0.01
        )


def test_a_python_that_cannot_start_is_a_worker_error(tmp_path: Path) -> None:
    with pytest.raises(OptimumWorkerError, match="cannot start"):
        OptimumRunner(tmp_path / "no-python", tmp_path, scheduler_config={})
