"""ModelsService: ListModels (every model, or one task's), GetModel (NOT_FOUND for unknown),
and the ModelInfo fields that come from the task table and the loaded runtime."""

from __future__ import annotations

import grpc
import pytest

from hubless.v1 import common_pb2, models_pb2, models_pb2_grpc
from tests.server.conftest import StartFake
from tests.server.fakes import LABELS, TASK_ORDER
from tests.server.harness import RunningServer
from tests.server.rich_errors import details_of


def stub(server: RunningServer) -> models_pb2_grpc.ModelsServiceStub:
    return models_pb2_grpc.ModelsServiceStub(server.channel)


def listed(server: RunningServer, task: int = common_pb2.TASK_UNSPECIFIED) -> list[str]:
    request = models_pb2.ListModelsRequest(task=task)
    return [m.name for m in stub(server).ListModels(request, timeout=5).models]


def test_list_models_grouped_by_task_in_preference_order(start_fake: StartFake) -> None:
    server = start_fake()
    assert listed(server) == [name for names in TASK_ORDER.values() for name in names]


def test_list_models_filtered_by_task(start_fake: StartFake) -> None:
    server = start_fake()
    assert listed(server, common_pb2.TASK_SENTIMENT) == TASK_ORDER["sentiment"]
    assert listed(server, common_pb2.TASK_CONVERSATION) == ["dialogpt-medium", "dialogpt-small"]
    models = stub(server).ListModels(
        models_pb2.ListModelsRequest(task=common_pb2.TASK_EMBEDDING), timeout=5
    )
    assert {m.task for m in models.models} == {common_pb2.TASK_EMBEDDING}


def test_list_models_of_a_task_not_served_is_empty(start_fake: StartFake) -> None:
    server = start_fake(None, "--tasks", "embedding")
    assert listed(server, common_pb2.TASK_EMOTION) == []
    assert listed(server) == ["all-minilm-l6-v2"]


def test_list_models_rejects_an_unknown_task_value(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2"])
    with pytest.raises(grpc.RpcError) as info:
        listed(server, 99)
    details = details_of(info.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert details.fields == ["task"]


def test_get_model(start_fake: StartFake) -> None:
    server = start_fake()
    request = models_pb2.GetModelRequest(name="twitter-roberta-sentiment")
    info = stub(server).GetModel(request, timeout=5).model
    assert info.name == "twitter-roberta-sentiment"
    assert info.task == common_pb2.TASK_SENTIMENT
    assert info.state == models_pb2.MODEL_STATE_READY and not info.is_default
    assert list(info.labels) == list(LABELS["twitter-roberta-sentiment"])
    assert info.max_input_tokens == 64 and info.embedding_dimension == 0

    embedding = stub(server).GetModel(
        models_pb2.GetModelRequest(name="all-minilm-l6-v2"), timeout=5
    )
    assert embedding.model.embedding_dimension == 3 and not embedding.model.labels
    assert embedding.model.is_default and embedding.model.task == common_pb2.TASK_EMBEDDING


def test_get_model_of_a_missing_model_reports_it(start_fake: StartFake) -> None:
    server = start_fake(["dialogpt-small"])
    info = stub(server).GetModel(models_pb2.GetModelRequest(name="dialogpt-medium"), timeout=5)
    assert info.model.state == models_pb2.MODEL_STATE_MISSING
    assert "hubless-fetch fetch dialogpt-medium" in info.model.error


@pytest.mark.parametrize("name", ["no-such-model", ""])
def test_get_model_unknown_is_not_found(start_fake: StartFake, name: str) -> None:
    server = start_fake(["all-minilm-l6-v2"], "--tasks", "embedding")
    with pytest.raises(grpc.RpcError) as info:
        stub(server).GetModel(models_pb2.GetModelRequest(name=name), timeout=5)
    details = details_of(info.value)
    if name:
        assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
        assert details.info.metadata["model"] == name
        assert "all-minilm-l6-v2" in info.value.details()
    else:
        assert details.code is grpc.StatusCode.INVALID_ARGUMENT and details.fields == ["name"]
