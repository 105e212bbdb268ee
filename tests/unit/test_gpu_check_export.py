"""The GPU check's TensorRT export settings, run here as an ONNX export of the tiny model.

The check once built the export for batches of 1..1 while the exporter traces at batch 2, so the
VAE decoder's export raised before any engine was built. The same settings (``target`` aside,
and the side scaled to the tiny model's) must export every component here.
"""

from __future__ import annotations

import pytest

from scripts.gpu_check_phases import CheckPlan, check_export_config
from textinv_export.choices import Component, Target
from textinv_export.exporter import export_model
from textinv_export.onnx_export import TRACE_BATCH
from textinv_export.specs import Range


def test_the_batch_range_covers_what_the_check_measures_and_the_trace_batch(tmp_path) -> None:
    plan = CheckPlan.full()
    config = check_export_config(tmp_path, plan.resolution, plan.images)
    assert config.target is Target.TENSORRT
    batch = config.ranges.batch
    assert batch == Range(1, 1, 4) and set(plan.images) == {1, 4}
    assert batch.min <= TRACE_BATCH <= batch.max


@pytest.mark.slow
def test_the_check_s_settings_export_all_three_components_of_the_tiny_model(
    tiny_model, tmp_path
) -> None:
    plan = CheckPlan.full()
    side = tiny_model.default_resolution  # 512 px is not a side the tiny model serves
    config = check_export_config(tmp_path / "engines", side, plan.images, target=Target.ONNX)
    full = check_export_config(tmp_path, plan.resolution, plan.images)
    assert config.ranges.batch == full.ranges.batch  # the very batch range the GPU run uses
    assert (config.precision, config.components) == (full.precision, full.components)
    result = export_model(tiny_model, config, progress=lambda _: None)
    wanted = {Component.TEXT_ENCODER, Component.UNET, Component.VAE_DECODER}
    assert set(result.manifest.components) == wanted
    for entry in result.manifest.components.values():
        assert (tmp_path / "engines" / entry.graph.path).is_file()
