"""Device, dtype, backend and thread settings: resolve "auto" once, at startup.

``auto`` dtype means bfloat16 on CPUs with native bf16 arithmetic (AMX or AVX512-BF16; without
it bf16 matmuls are emulated and slower than float32), float16 on CUDA, float32 otherwise.

``auto`` backend means ONNX Runtime for an encoder model (embedding, emotion, sentiment,
zero-shot) whose manifest entry records an ONNX artifact (``hubless-optimize``) when it would
otherwise run PyTorch in float32 on the CPU, and PyTorch otherwise: a GPU keeps PyTorch in
float16, and a CPU with native bf16 (AMX, AVX512-BF16) keeps PyTorch in bfloat16, which
computed all-MiniLM-L6-v2 in 1.5 CPU-ms a sentence on such a CPU against 4.1-4.8 for ONNX
Runtime's float32 (docs/optimize.md has the measurements). ONNX Runtime computes in float32.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hubless_server.runtimes.base import OnnxArtifact
    from hubless_volume import ModelEntry

log = logging.getLogger(__name__)


class PlacementError(RuntimeError):
    """The requested device cannot be used."""


_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


CPUINFO = Path("/proc/cpuinfo")


def cpu_has_native_bf16(cpuinfo: Path | None = None) -> bool:
    """True when the CPU computes bf16 natively: AMX or AVX512-BF16, by torch's capability,
    else the cpuinfo flags (``cpuinfo``: another file to read, for tests). The one check:
    precision (``runtimes._common``) and placement (``--dtype auto``) both ask it; on a CPU
    without it (AVX2 only, e.g. AMD Zen 3) bf16 is about 4x slower than float32."""
    return _native_bf16_here() if cpuinfo is None else _native_bf16(cpuinfo)


@functools.cache
def _native_bf16_here() -> bool:
    return _native_bf16(CPUINFO)


def _native_bf16(cpuinfo: Path) -> bool:
    try:
        import torch

        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
        if "AMX" in capability or "BF16" in capability:
            return True
    except Exception:  # pragma: no cover - torch without the backend query
        log.debug("torch cpu capability unavailable", exc_info=True)
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return any(flag in flags for flag in _BF16_FLAGS)
    return False


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``. ``cuda`` without one fails."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PlacementError(f"--device {device} was asked for but torch sees no CUDA device")
    return device


def resolve_dtype(dtype: str, device: str, native_bf16: bool | None = None) -> str:
    """Concrete dtype for ``device``: ``auto`` as described in the module docstring; float16
    on CPU (slow, poorly supported) is turned into float32."""
    if dtype == "auto":
        if device.startswith("cuda"):
            return "float16"
        if native_bf16 is None:
            native_bf16 = cpu_has_native_bf16()
        return "bfloat16" if native_bf16 else "float32"
    if dtype == "float16" and device == "cpu":
        log.warning("float16 on CPU is slow and unsupported by many ops; using float32")
        return "float32"
    return dtype


def configure_threads(intra_op: int) -> None:
    """Intra-op threads = cores; inter-op = 1.

    Inter-op parallelism only helps graphs with independent branches run by torch itself
    (TorchScript ``fork``); eager HF models never use it, and the batching core already
    serialises forward passes, so extra inter-op threads would only compete for the cores.
    """
    import torch

    torch.set_num_threads(intra_op)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already started (tests)
        log.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())


def resolve_backend(
    requested: str, device: str, kind: str, has_artifact: bool, dtype: str = "float32"
) -> str:
    """Concrete backend (``torch`` or ``onnx``) of a model of runtime ``kind`` on ``device``
    whose resolved PyTorch dtype is ``dtype``.

    ``auto``: ONNX Runtime when the kind is an encoder's, the device the CPU, the dtype
    float32 (no native bf16, or asked for) and an artifact is recorded. ``onnx`` asks for it
    whenever the kind and the device allow, whatever the dtype (the runtime then says why it
    serves with PyTorch if there is no usable artifact); other kinds, and every model on a
    GPU, run on PyTorch."""
    from hubless_server.core.tasks import ONNX_KINDS

    if requested == "torch" or kind not in ONNX_KINDS:
        return "torch"
    if device != "cpu":
        if requested == "onnx":
            log.warning("--backend onnx: ONNX Runtime runs on the CPU only; %s uses torch", device)
        return "torch"
    if requested == "onnx":
        return "onnx"
    return "onnx" if has_artifact and dtype == "float32" else "torch"


def onnx_artifact(entry: ModelEntry, models_dir: Path) -> OnnxArtifact | None:
    """The ONNX artifact ``entry`` records, placed on the volume (its bytes are checked when
    it loads); None when there is none or its path leads off the volume."""
    from hubless_server.runtimes.base import OnnxArtifact
    from hubless_volume import VolumePathError

    record = entry.artifact("onnx")
    if record is None:
        return None
    try:
        path = entry.artifact_path(models_dir, record)
    except VolumePathError as exc:
        log.error("model %s: ONNX artifact refused: %s", entry.name, exc)
        return None
    return OnnxArtifact(
        path=path, size=record.size, sha256=record.sha256, models_dir=Path(models_dir)
    )
