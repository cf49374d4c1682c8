"""The error contract (ErrorReason in common.proto): every error status carries an ErrorInfo
with its reason, BadRequest on INVALID_ARGUMENT and RetryInfo where a retry helps; first
through a live server, then the mapping itself for the reasons a test cannot provoke cheaply."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from hubless.v1 import (
    common_pb2,
    conversation_pb2,
    embeddings_pb2,
    embeddings_pb2_grpc,
    emotion_pb2,
    emotion_pb2_grpc,
    sentiment_pb2,
    sentiment_pb2_grpc,
    summarization_pb2,
    summarization_pb2_grpc,
)
from hubless_server.core import errors as core_errors
from hubless_server.inference.batching import ClosedError, ExpiredError, QueueFullError
from hubless_server.models.registry import ModelNotFoundError, TaskUnavailableError
from hubless_server.services import errors
from hubless_server.services.errors import ErrorScope, RequestError, limit_exceeded, rpc_error
from hubless_server.services.wire import UndecodableRequest
from hubless_server.transport.auth import UnauthenticatedError
from hubless_server.transport.caller_limit import CALLER_LIMIT_RETRY_S, CallerLimitError
from tests.server.conftest import StartFake
from tests.server.fakes import FakeRuntime
from tests.server.rich_errors import details_of


def failed(fn: object, *args: object, **kw: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kw)  # type: ignore[operator]
    return info.value


def embed_stub(server: object) -> embeddings_pb2_grpc.EmbeddingsServiceStub:
    return embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)  # type: ignore[attr-defined]


def test_model_not_found(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2", "distilbert-sst2"])
    stub = sentiment_pb2_grpc.SentimentServiceStub(server.channel)
    request = sentiment_pb2.AnalyzeSentimentRequest(texts=["x"], model="all-minilm-l6-v2")
    error = failed(stub.AnalyzeSentiment, request, timeout=5)
    details = details_of(error)
    assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
    assert details.info.metadata["model"] == "all-minilm-l6-v2"
    assert details.info.metadata["task"] == "sentiment"
    assert details.bad_request is None and details.retry is None


def test_task_disabled_and_task_unavailable(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2"], "--tasks", "embedding,summarization")
    emotion = emotion_pb2_grpc.EmotionServiceStub(server.channel)
    error = failed(emotion.DetectEmotion, emotion_pb2.DetectEmotionRequest(texts=["x"]), timeout=5)
    details = details_of(error)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "TASK_DISABLED")
    assert details.info.metadata["task"] == "emotion" and details.retry is None
    assert "--tasks" in error.details()

    summarize = summarization_pb2_grpc.SummarizationServiceStub(server.channel)
    request = summarization_pb2.SummarizeRequest(texts=["x"])
    details = details_of(failed(summarize.Summarize, request, timeout=5))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "TASK_UNAVAILABLE")
    assert details.info.metadata["task"] == "summarization" and details.retry is None


def test_model_loading_suggests_a_retry(start_fake: StartFake) -> None:
    FakeRuntime.load_delay = 0.5
    server = start_fake(["all-minilm-l6-v2"], wait=False)
    error = failed(embed_stub(server).Embed, embeddings_pb2.EmbedRequest(texts=["x"]), timeout=5)
    details = details_of(error)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "MODEL_LOADING")
    assert details.retry is not None
    assert (
        details.retry.retry_delay.ToTimedelta().total_seconds() == core_errors.MODEL_LOADING_RETRY_S
    )
    server.wait_loaded()


def test_queue_full_suggests_a_retry(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2"], "--max-queue", "2", "--max-texts", "2")
    FakeRuntime.gate = threading.Event()
    stub = embed_stub(server)
    blocker = stub.Embed.future(embeddings_pb2.EmbedRequest(texts=["blocker"]), timeout=10)
    deadline = time.monotonic() + 5
    while not FakeRuntime.batches:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    queued = stub.Embed.future(embeddings_pb2.EmbedRequest(texts=["q1", "q2"]), timeout=10)
    time.sleep(0.1)
    error = failed(stub.Embed, embeddings_pb2.EmbedRequest(texts=["overflow"]), timeout=5)
    FakeRuntime.gate.set()
    details = details_of(error)
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL")
    assert details.retry is not None
    assert details.retry.retry_delay.ToTimedelta().total_seconds() == core_errors.QUEUE_FULL_RETRY_S
    assert details.info.metadata["model"] == "all-minilm-l6-v2"
    assert details.info.metadata["limit"] == "--max-queue"
    assert details.info.metadata["limit_value"] == "2"
    assert blocker.result() and queued.result()


def test_internal(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2"])
    error = failed(embed_stub(server).Embed, embeddings_pb2.EmbedRequest(texts=["crash"]))
    details = details_of(error)
    assert (details.code, details.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert "the server logged the details" in error.details()


# ---- the mapping, one exception per reason ----------------------------------------------

SCOPE = ErrorScope("EmbeddingsService.Embed", task="embedding", model="m")


MAPPING: list[tuple[BaseException, str, str, float | None]] = [
    (RequestError("texts[3]", "bad"), "INVALID_ARGUMENT", "INVALID_FIELD", None),
    (
        RequestError("texts[0]", "long", errors.INPUT_TOO_LONG),
        "INVALID_ARGUMENT",
        "INPUT_TOO_LONG",
        None,
    ),
    (
        limit_exceeded("texts", "too many (--max-texts)", "--max-texts", 64),
        "INVALID_ARGUMENT",
        "LIMIT_EXCEEDED",
        None,
    ),
    (ModelNotFoundError("nope"), "NOT_FOUND", "MODEL_NOT_FOUND", None),
    (
        TaskUnavailableError("embedding", "loading", loading=True),
        "UNAVAILABLE",
        "MODEL_LOADING",
        core_errors.MODEL_LOADING_RETRY_S,
    ),
    (TaskUnavailableError("embedding", "none"), "UNAVAILABLE", "TASK_UNAVAILABLE", None),
    (errors.TaskDisabledError("embedding", "off"), "UNAVAILABLE", "TASK_DISABLED", None),
    (
        QueueFullError("m", 10, 10, 1),
        "RESOURCE_EXHAUSTED",
        "QUEUE_FULL",
        core_errors.QUEUE_FULL_RETRY_S,
    ),
    (ExpiredError("late"), "DEADLINE_EXCEEDED", "DEADLINE_EXPIRED", None),
    (ClosedError("closing"), "UNAVAILABLE", "SHUTTING_DOWN", core_errors.SHUTTING_DOWN_RETRY_S),
    (RuntimeError("bug"), "INTERNAL", "INTERNAL", None),
    (
        errors.MalformedRequestError(UndecodableRequest("hubless.v1.EmbedRequest", 4, "bad")),
        "INVALID_ARGUMENT",
        "MALFORMED_REQUEST",
        None,
    ),
    (CallerLimitError("c0ffee", 4), "RESOURCE_EXHAUSTED", "CALLER_LIMIT", CALLER_LIMIT_RETRY_S),
    (UnauthenticatedError("no token"), "UNAUTHENTICATED", "UNAUTHENTICATED", None),
]


@pytest.mark.parametrize(("exc", "code", "reason", "retry"), MAPPING)
def test_every_reason_maps_to_its_code_and_details(
    exc: BaseException, code: str, reason: str, retry: float | None
) -> None:
    error = rpc_error(exc, SCOPE)
    assert error.code.name == code
    status = error.to_proto()
    assert status.code == error.code.value[0] and status.message == error.message
    kinds = [d.TypeName() for d in status.details]
    assert kinds[0] == "google.rpc.ErrorInfo"
    assert ("google.rpc.BadRequest" in kinds) is (code == "INVALID_ARGUMENT")
    assert ("google.rpc.RetryInfo" in kinds) is (retry is not None)
    assert errors.reason_name(error.reason) == reason
    assert error.metadata["task"] == "embedding"


def test_every_error_reason_is_covered() -> None:
    """Each ErrorReason of the proto (UNSPECIFIED aside) is produced by some exception."""
    names = {n.removeprefix("ERROR_REASON_") for n in common_pb2.ErrorReason.keys()}  # noqa: SIM118
    assert names - {"UNSPECIFIED"} == {reason for _, _, reason, _ in MAPPING}


def test_grpc_status_trailer() -> None:
    status = rpc_error(limit_exceeded("texts", "x", "--max-texts", 3), SCOPE).to_status()
    ((key, value),) = status.trailing_metadata
    assert key == "grpc-status-details-bin" and isinstance(value, bytes)
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT


def test_a_servicer_names_the_field_of_a_rejected_item() -> None:
    """Runtime rejections become field errors: texts[i] by default, the runtime's field for an
    InvalidItemError, the last turn for chat."""
    from hubless_server.inference.batching import PrepareError
    from hubless_server.runtimes.base import InputTooLongError, InvalidItemError
    from hubless_server.services.conversation import ConversationService
    from hubless_server.services.zero_shot import ZeroShotService

    zero_shot = ZeroShotService.__new__(ZeroShotService)
    bad_template = PrepareError(2, InvalidItemError("hypothesis_template", "bad template"))
    assert zero_shot.invalid_item(bad_template, None).field == "hypothesis_template"
    too_long = zero_shot.invalid_item(PrepareError(3, InputTooLongError(90, 64)), None)
    assert (too_long.field, too_long.reason) == ("texts[3]", errors.INPUT_TOO_LONG)
    other = zero_shot.invalid_item(PrepareError(1, ValueError("odd")), None)
    assert other.field == "texts[1]"
    crash = RuntimeError("bug")
    assert zero_shot.invalid_item(PrepareError(0, crash), None) is crash

    chat = ConversationService.__new__(ConversationService)
    request = conversation_pb2.ReplyRequest(turns=["a", "b", "c"])
    last = chat.invalid_item(PrepareError(0, InputTooLongError(900, 500)), request)
    assert (last.field, last.reason) == ("turns[2]", errors.INPUT_TOO_LONG)
    context = PrepareError(0, InvalidItemError("max_new_tokens", "too many for the context"))
    assert chat.invalid_item(context, request).field == "max_new_tokens"
