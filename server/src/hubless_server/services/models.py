"""hubless.v1.ModelsService: what the server has, from the registry.

``ListModels`` lists every model of the served tasks (optionally one task's), grouped by task
in preference order; ``GetModel`` answers one by catalog name. The ``Task`` enum comes from the
task table; labels and embedding dimension from the loaded runtime's ``info()``.
"""

from __future__ import annotations

import grpc

from hubless.v1 import common_pb2, models_pb2, models_pb2_grpc
from hubless_server.redact import echo
from hubless_server.registry import ModelRecord, State
from hubless_server.services.common import ServiceDeps, unary
from hubless_server.services.errors import ModelUnknownError, RequestError
from hubless_server.tasks import spec_for_enum, spec_of

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
    )
    if record.state is State.READY and record.runtime is not None:
        loaded = record.runtime.info()
        info.labels.extend(loaded.labels)
        info.embedding_dimension = loaded.embedding_dimension
    return info


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
        for record in self.deps.registry.records.values():
            if not only or record.task == only:
                response.models.append(model_info(record))
        return response

    @unary
    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.GetModelResponse:
        name = request.name.strip()
        if not name:
            raise RequestError("name", "name is empty: give a catalog name, e.g. all-minilm-l6-v2")
        record = self.deps.registry.records.get(name)
        if record is None:
            known = ", ".join(self.deps.registry.records) or "none"
            raise ModelUnknownError(
                name,
                f"model {echo(name)!r} is not a model of a served task; known models: {known}",
            )
        return models_pb2.GetModelResponse(model=model_info(record))
