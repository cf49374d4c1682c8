"""hubless.v1.ModelsService: what the server has, from the registry.

``ListModels`` lists every model of the served tasks (optionally one task's), grouped by task
in preference order; ``GetModel`` answers one by catalog name. The ``Task`` enum comes from the
task table; labels and embedding dimension from the loaded runtime's ``info()``. While a new
version of a model loads beside the serving one (a live update), the model is shown as that
version (LOADING) with ``replacing_commit`` naming the serving one. ``backend`` says what runs
a loaded model (``torch`` or ``onnx``); a READY model that was to run on ONNX Runtime and
runs on PyTorch (its artifact unusable) says why in ``error``.
"""

from __future__ import annotations

import grpc

from hubless.v1 import common_pb2, models_pb2, models_pb2_grpc
from hubless_server.core.redact import echo
from hubless_server.core.tasks import spec_for_enum, spec_of
from hubless_server.models.registry import ModelRecord, Registry, State
from hubless_server.services.common import ServiceDeps, unary
from hubless_server.services.errors import ModelUnknownError, RequestError

STATES = {
    State.LOADING: models_pb2.MODEL_STATE_LOADING,
    State.READY: models_pb2.MODEL_STATE_READY,
    State.FAILED: models_pb2.MODEL_STATE_FAILED,
    State.MISSING: models_pb2.MODEL_STATE_MISSING,
    State.SKIPPED: models_pb2.MODEL_STATE_SKIPPED,
}


def model_info(record: ModelRecord) -> models_pb2.ModelInfo:
    """A registry record as a ``ModelInfo``."""
    info = models_pb2.ModelInfo(
        name=record.name,
        task=spec_of(record.task).task,
        repo_id=record.repo_id,
        commit=record.commit,
        device=record.device,
        dtype=record.dtype,
        state=STATES[record.state],
        error=record.error,
        is_default=record.is_default,
        size_bytes=record.size_bytes,
        load_seconds=round(record.load_seconds, 3),
        max_input_tokens=record.max_input_tokens,
        replacing_commit=record.replacing_commit,
        backend=record.backend,
        precision=record.precision,
    )
    if record.loaded_at:
        info.loaded_at.FromNanoseconds(int(record.loaded_at * 1e9))
    if record.state is State.READY and record.runtime is not None:
        loaded = record.runtime.info()
        info.labels.extend(loaded.labels)
        info.embedding_dimension = loaded.embedding_dimension
        if loaded.backend_note and not info.error:  # ONNX asked for, PyTorch serves: why
            info.error = loaded.backend_note
        elif record.entry is not None and record.entry.optimize_error and not info.error:
            info.error = (  # hubless-optimize recorded why this model has no ONNX artifact
                f"no ONNX artifact, serving with PyTorch: {record.entry.optimize_error[:300]}"
            )
    return info


def shown_info(registry: Registry, name: str) -> models_pb2.ModelInfo | None:
    """What ``name`` shows: its record, or the version loading beside it (the serving
    version's default flag kept: it still answers the task's requests)."""
    record = registry.get(name)
    if record is None:
        return None
    pending = registry.pending(name)
    if pending is None:
        return model_info(record)
    info = model_info(pending)
    info.state = models_pb2.MODEL_STATE_LOADING  # loaded or warming up: not answering yet
    info.is_default = record.is_default
    return info


def listing(registry: Registry) -> list[models_pb2.ModelInfo]:
    """Every model of the served tasks, by task, in preference order."""
    infos = []
    for task in registry.tasks:
        for name in registry.by_task.get(task, []):
            info = shown_info(registry, name)
            if info is not None:
                infos.append(info)
    return infos


class ModelsService(models_pb2_grpc.ModelsServiceServicer):
    """ListModels and GetModel."""

    def __init__(self, deps: ServiceDeps) -> None:
        self.deps = deps

    @unary
    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        only = ""
        if request.task != common_pb2.TASK_UNSPECIFIED:
            spec = spec_for_enum(request.task)
            if spec is None:
                raise RequestError("task", f"task {request.task} is not a known Task value")
            only = spec.name
        response = models_pb2.ListModelsResponse()
        only_enum = spec_of(only).task if only else None
        for info in listing(self.deps.registry):
            if only_enum is None or info.task == only_enum:
                response.models.append(info)
        return response

    @unary
    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.GetModelResponse:
        name = request.name.strip()
        if not name:
            raise RequestError("name", "name is empty: give a catalog name, e.g. all-minilm-l6-v2")
        info = shown_info(self.deps.registry, name)
        if info is None:
            known = ", ".join(self.deps.registry.records) or "none"
            raise ModelUnknownError(
                name,
                f"model {echo(name)!r} is not a model of a served task; known models: {known}",
            )
        return models_pb2.GetModelResponse(model=info)
