"""What ``list_models`` and ``get_model`` return."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from hubless.v1 import models_pb2
from hubless_client.types.enums import STATE_FROM_PB, ModelState, task_from_pb

__all__ = ["ModelInfo", "model_from_pb", "models_from_pb"]


@dataclass(frozen=True)
class ModelInfo:
    """A model the server knows about (loaded, loading, failed, skipped, or missing from the
    volume)."""

    name: str
    #: The task's volume name, e.g. ``"zero-shot"`` (a :class:`Task`; ``""`` if unknown).
    task: str
    repo_id: str
    commit: str
    device: str
    dtype: str
    state: ModelState
    #: Why a model is FAILED, MISSING or SKIPPED; on a READY model, why a newer version on the
    #: volume could not replace it (this version keeps answering).
    error: str
    #: This model answers requests of its task that name no model.
    is_default: bool
    #: Bytes of the model's files on the volume.
    size_bytes: int
    #: Seconds the last load took.
    load_seconds: float
    #: Longest input in tokens the model reads (0 until loaded).
    max_input_tokens: int = 0
    #: The model's output labels, in the model's order (classifiers; empty otherwise).
    labels: list[str] = field(default_factory=list)
    #: Length of the vectors (embedding models; 0 otherwise).
    embedding_dimension: int = 0
    #: During a live update, the commit of the other version in memory: the one still
    #: answering while ``commit`` loads (``LOADING``), or the replaced one draining once
    #: ``commit`` answers (``READY``); ``""`` otherwise.
    replacing_commit: str = ""
    #: When this version finished loading (UTC; ``None`` until it has).
    loaded_at: datetime | None = None
    #: What runs its forward pass: ``"torch"`` or ``"onnx"`` (ONNX Runtime, from the artifact
    #: ``hubless-optimize`` installed); ``""`` until loaded. A model asked to run on ONNX
    #: Runtime whose artifact is unusable runs on PyTorch, and ``error`` says why.
    backend: str = ""

    @classmethod
    def from_pb(cls, msg: models_pb2.ModelInfo) -> ModelInfo:
        return cls(
            name=msg.name,
            task=task_from_pb(msg.task),
            repo_id=msg.repo_id,
            commit=msg.commit,
            device=msg.device,
            dtype=msg.dtype,
            state=STATE_FROM_PB.get(msg.state, ModelState.UNSPECIFIED),
            error=msg.error,
            is_default=msg.is_default,
            size_bytes=msg.size_bytes,
            load_seconds=msg.load_seconds,
            max_input_tokens=msg.max_input_tokens,
            labels=list(msg.labels),
            embedding_dimension=msg.embedding_dimension,
            replacing_commit=msg.replacing_commit,
            loaded_at=msg.loaded_at.ToDatetime(UTC) if msg.HasField("loaded_at") else None,
            backend=msg.backend,
        )


def models_from_pb(msg: models_pb2.ListModelsResponse) -> list[ModelInfo]:
    """The models of a ListModels answer, in the server's order."""
    return [ModelInfo.from_pb(m) for m in msg.models]


def model_from_pb(msg: models_pb2.GetModelResponse) -> ModelInfo:
    """The model of a GetModel answer."""
    return ModelInfo.from_pb(msg.model)
