"""hubless.v1.Models: what the server has, from the registry."""

from __future__ import annotations

import grpc

from hubless.v1 import models_pb2, models_pb2_grpc
from hubless_server.registry import State
from hubless_server.services.common import ServiceDeps, unary

STATES = {
    State.LOADING: models_pb2.MODEL_STATE_LOADING,
    State.READY: models_pb2.MODEL_STATE_READY,
    State.FAILED: models_pb2.MODEL_STATE_FAILED,
    State.MISSING: models_pb2.MODEL_STATE_MISSING,
    State.SKIPPED: models_pb2.MODEL_STATE_UNSPECIFIED,
}


class ModelsService(models_pb2_grpc.ModelsServicer):
    def __init__(self, deps: ServiceDeps) -> None:
        self.deps = deps

    @unary
    async def List(
        self, request: models_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListResponse:
        response = models_pb2.ListResponse()
        for record in self.deps.registry.records.values():
            response.models.add(
                name=record.name,
                task=record.task,
                repo_id=record.repo_id,
                commit=record.commit,
                device=record.device,
                dtype=record.dtype,
                state=STATES[record.state],
                error=record.error,
                is_default=record.is_default,
                size_bytes=record.size_bytes,
                load_seconds=round(record.load_seconds, 3),
            )
        return response
