"""Which onnxruntime provider runs a component's session, with what options, and the checks that
it really does: onnxruntime falls back to the next provider with only a log warning."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime

from textinv.errors import InvalidInputError
from textinv_export.manifest import ComponentEntry, FileSelector
from textinv_export.specs import ComponentSpec, Precision
from textinv_server.choices import Provider

_PROVIDER_NAMES = {
    Provider.CPU: "CPUExecutionProvider",
    Provider.CUDA: "CUDAExecutionProvider",
    Provider.TENSORRT: "TensorrtExecutionProvider",
}
TRT_CACHE_NAME = "ort_trt_cache"  # the TensorRT provider's engines, beside the manifest

# onnxruntime's ``providers=``: names, or (name, options) pairs, in order of preference.
ProviderList = list[str | tuple[str, dict[str, Any]]]


class ProviderUnavailableError(InvalidInputError):
    """The onnxruntime provider asked for is not in this build, or a session fell back from it."""


def loaded_files(provider: Provider) -> FileSelector:
    """Which of a component's files this provider reads, so the manifest checks only those:
    TensorRT parses the raw export; the other providers run the optimized graph."""
    if provider is Provider.TENSORRT:
        return lambda entry: entry.source_files
    return lambda entry: entry.graph_files


def check_available(provider: Provider) -> None:
    """Raise ``ProviderUnavailableError`` unless this onnxruntime build has ``provider``."""
    wanted = _PROVIDER_NAMES[provider]
    available = onnxruntime.get_available_providers()
    if wanted not in available:
        raise ProviderUnavailableError(
            f"onnxruntime provider {provider.value!r} ({wanted}) is not available in this "
            f"onnxruntime build; available: {', '.join(available)}"
        )


def check_provider(session: Any, provider: Provider, path: Path) -> None:
    """Raise unless ``session`` runs on ``provider``: onnxruntime falls back to the next provider
    in the list (in the end the CPU) with only a log warning when one cannot start (a missing
    CUDA or TensorRT library, a bad option)."""
    wanted = _PROVIDER_NAMES[provider]
    actual = session.get_providers()[0]
    if actual != wanted:
        raise ProviderUnavailableError(
            f"{path.name}: onnxruntime was asked for {wanted} but runs on {actual}: the "
            f"{provider.value} provider could not start (check its CUDA/TensorRT libraries)"
        )


def provider_options(
    provider: Provider,
    entry: ComponentEntry,
    precision: Precision,
    folder: Path,
    device_id: int = 0,
) -> ProviderList:
    """onnxruntime's ``providers=`` for one component's session, in order of preference.

    CUDA and TensorRT run on GPU ``device_id``; the next provider in the list takes the operators
    the first cannot run. TensorRT gets the precision (fp16 only for an fp16 manifest: it parses
    the fp32 source either way), an engine cache in ``folder`` per graph and weights, and the
    spec's ``(min, opt, max)`` profile: without it the provider rebuilds its engine whenever it
    meets a new shape.
    """
    cpu = _PROVIDER_NAMES[Provider.CPU]
    if provider is Provider.CPU:
        return [cpu]
    cuda = (_PROVIDER_NAMES[Provider.CUDA], {"device_id": device_id})
    if provider is Provider.CUDA:
        return [cuda, cpu]
    tensorrt = {
        "device_id": device_id,
        # onnxruntime's Python binding takes booleans as "True"/"False" (str of a bool).
        "trt_fp16_enable": precision is Precision.FP16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(trt_cache_folder(folder, entry)),
        **trt_profile_shapes(entry.spec),
    }
    return [(_PROVIDER_NAMES[Provider.TENSORRT], tensorrt), cuda, cpu]


def trt_cache_folder(folder: Path, entry: ComponentEntry) -> Path:
    """Where the TensorRT provider keeps ``entry``'s engines: ``DIR/ort_trt_cache/unet-<key>``,
    keyed by the raw graph and its external weights. The provider's own engine id hashes the
    graph's file name, node names and library versions but not its weights, so a re-export of
    another model of the same architecture into the folder would otherwise reuse stale engines."""
    key = hashlib.sha256("\n".join(entry.source_sha256s).encode()).hexdigest()[:16]
    return folder / TRT_CACHE_NAME / f"{entry.spec.name}-{key}"


def trt_profile_shapes(spec: ComponentSpec) -> dict[str, str]:
    """The spec's profile as the TensorRT provider's three options, every input named (the
    provider requires all dynamic inputs): ``"sample:1x4x8x8,timestep:1,..."``."""
    profile = spec.profile

    def shapes(pick: Callable[[Any], tuple[int, ...]]) -> str:
        return ",".join(
            f"{name}:{'x'.join(str(size) for size in pick(shapes))}"
            for name, shapes in profile.items()
        )

    return {
        "trt_profile_min_shapes": shapes(lambda p: p.min),
        "trt_profile_opt_shapes": shapes(lambda p: p.opt),
        "trt_profile_max_shapes": shapes(lambda p: p.max),
    }
