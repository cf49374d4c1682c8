"""The HTTP door (``--http-port``) over fake runtimes: the real ``openai`` SDK, the JSON task
routes against gRPC, server-sent events, the error mapping, tokens, per-caller limits, TLS,
health, access log and metrics. Raw calls go through the ``curl`` CLI when it is installed."""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import openai
import pytest
import trustme
from google.protobuf import json_format

from hubless.v1 import (
    conversation_pb2,
    conversation_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
    emotion_pb2,
    emotion_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    sentiment_pb2,
    sentiment_pb2_grpc,
    summarization_pb2,
    summarization_pb2_grpc,
    zero_shot_pb2,
    zero_shot_pb2_grpc,
)
from hubless_server.observability import metrics
from hubless_server.transport.http.errors import HTTP_STATUS
from tests.server.conftest import StartFake
from tests.server.fakes import FakeRuntime
from tests.server.harness import RunningServer
from tests.server.http_calls import call, free_port

EMBEDDER = "all-minilm-l6-v2"


def start_http(start_fake: StartFake, names: list[str] | None = None, *flags: str) -> Any:
    port = free_port()
    server = start_fake(names, "--http-port", str(port), *flags)
    assert server.server.http_port == port
    return server, f"http://127.0.0.1:{port}"


def grpc_embed(server: RunningServer, texts: list[str], **kw: Any) -> Any:
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    return stub.Embed(embeddings_pb2.EmbedRequest(texts=texts, **kw), timeout=10)


def _wait_until(predicate: Callable[[], Any], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _computed(text: str) -> bool:
    return any(getattr(i, "text", "") == text for _, batch in FakeRuntime.batches for i in batch)


def _as_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


# ---- OpenAI compatibility -------------------------------------------------------------


def test_openai_sdk_embeddings_equal_grpc_embed(start_fake: StartFake) -> None:
    server, base = start_http(start_fake, [EMBEDDER], "--tasks", "embedding")
    texts = ["one", "two words", "and three words"]
    expected = [list(e.values) for e in grpc_embed(server, texts).embeddings]
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    # The SDK asks for base64 by default and decodes it; then float; then base64 as is.
    default = client.embeddings.create(input=texts, model=EMBEDDER)
    assert [d.embedding for d in default.data] == expected
    assert [d.index for d in default.data] == [0, 1, 2]
    assert default.model == EMBEDDER and default.object == "list"
    assert default.usage.prompt_tokens == default.usage.total_tokens == 1 + 2 + 3
    floats = client.embeddings.create(input=texts, model=EMBEDDER, encoding_format="float")
    assert [d.embedding for d in floats.data] == expected
    encoded = client.embeddings.create(input=texts, model=EMBEDDER, encoding_format="base64")
    decoded = [
        np.frombuffer(base64.b64decode(d.embedding), dtype="<f4").tolist()  # type: ignore[arg-type]
        for d in encoded.data
    ]
    assert decoded == expected
    single = client.embeddings.create(input="one", model=EMBEDDER, encoding_format="float")
    assert single.data[0].embedding == expected[0]
    # An empty model name picks the task's default, like gRPC.
    assert client.embeddings.create(input="one", model="").model == EMBEDDER
    listed = client.models.list()
    assert [m.id for m in listed.data] == [EMBEDDER]
    assert listed.data[0].owned_by == "sentence-transformers"
    model = client.models.retrieve(EMBEDDER)
    assert model.id == EMBEDDER and model.model_extra["embedding_dimension"] == 3


def test_openai_sdk_errors(start_fake: StartFake) -> None:
    _, base = start_http(start_fake, [EMBEDDER], "--tasks", "embedding")
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(input="hi", model="text-embedding-3-small")
    assert missing.value.code == "model_not_found"
    assert "available embedding models: all-minilm-l6-v2" in missing.value.message
    with pytest.raises(openai.BadRequestError) as empty:
        client.embeddings.create(input=["fine", "  "], model=EMBEDDER)
    assert empty.value.code == "invalid_field" and empty.value.param == "input[1]"
    with pytest.raises(openai.BadRequestError) as limit:
        client.embeddings.create(input=["x"] * 65, model=EMBEDDER)
    assert limit.value.code == "limit_exceeded" and limit.value.param == "input"
    assert limit.value.body["metadata"]["limit"] == "--max-texts"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as tokens:
        client.embeddings.create(input=[[1, 2, 3]], model=EMBEDDER)
    assert tokens.value.code == "malformed_request" and tokens.value.param == "input"
    with pytest.raises(openai.BadRequestError) as dims:
        client.embeddings.create(input="x", model=EMBEDDER, dimensions=2)
    assert dims.value.param == "dimensions"


# ---- JSON routes mirror the protos ----------------------------------------------------


def test_json_task_routes_answer_like_grpc(start_fake: StartFake) -> None:
    server, base = start_http(start_fake)
    ch = server.channel
    cases = [
        (
            "embed",
            {"texts": ["a b", "c"], "normalize": False},
            embeddings_pb2_grpc.EmbeddingsServiceStub(ch).Embed,
            embeddings_pb2.EmbedRequest,
        ),
        (
            "detect-emotion",
            {"texts": ["happy"]},
            emotion_pb2_grpc.EmotionServiceStub(ch).DetectEmotion,
            emotion_pb2.DetectEmotionRequest,
        ),
        (
            "analyze-sentiment",
            {"texts": ["ok"], "model": "distilbert-sst2", "truncation": "TRUNCATION_ERROR"},
            sentiment_pb2_grpc.SentimentServiceStub(ch).AnalyzeSentiment,
            sentiment_pb2.AnalyzeSentimentRequest,
        ),
        (
            "classify-zero-shot",
            {"texts": ["t"], "candidateLabels": ["x", "y"], "multi_label": True},
            zero_shot_pb2_grpc.ZeroShotServiceStub(ch).ClassifyZeroShot,
            zero_shot_pb2.ClassifyZeroShotRequest,
        ),
        (
            "summarize",
            {"texts": ["a long text to summarise"], "max_length": 20},
            summarization_pb2_grpc.SummarizationServiceStub(ch).Summarize,
            summarization_pb2.SummarizeRequest,
        ),
        (
            "reply",
            {"turns": ["hello"], "max_new_tokens": 4},
            conversation_pb2_grpc.ConversationServiceStub(ch).Reply,
            conversation_pb2.ReplyRequest,
        ),
        (
            "get-model",
            {"name": EMBEDDER},
            models_pb2_grpc.ModelsServiceStub(ch).GetModel,
            models_pb2.GetModelRequest,
        ),
        (
            "list-models",
            {"task": "TASK_SENTIMENT"},
            models_pb2_grpc.ModelsServiceStub(ch).ListModels,
            models_pb2.ListModelsRequest,
        ),
    ]
    for route, body, rpc, request_class in cases:
        answer = call("POST", f"{base}/v1/tasks/{route}", body)
        assert answer.status == 200, (route, answer.text)
        request = json_format.ParseDict(body, request_class())
        expected = _as_dict(rpc(request, timeout=10))
        assert answer.json() == expected, route


def test_stream_reply_as_server_sent_events(start_fake: StartFake) -> None:
    _, base = start_http(start_fake, ["dialogpt-small"], "--tasks", "conversation")
    body = {"turns": ["hi"], "max_new_tokens": 3}
    with httpx.stream("POST", f"{base}/v1/tasks/stream-reply", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    parsed = [json_format.Parse(e[6:], conversation_pb2.StreamReplyResponse()) for e in events]
    assert "".join(p.text for p in parsed) == "w0 w1 w2 "
    assert parsed[0].model.name == "dialogpt-small"
    assert parsed[-1].finish_reason == conversation_pb2.FINISH_REASON_LENGTH
    # A request the server refuses is an ordinary error answer, not a stream.
    refused = call("POST", f"{base}/v1/tasks/stream-reply", {"turns": []})
    assert refused.status == 400 and refused.error["param"] == "turns"


# ---- errors ---------------------------------------------------------------------------


def test_error_statuses_and_bodies(start_fake: StartFake) -> None:
    server, base = start_http(
        start_fake, [EMBEDDER], "--tasks", "embedding", "--max-queue", "2", "--max-texts", "2"
    )
    url = f"{base}/v1/tasks/embed"
    invalid = call("POST", url, {"texts": ["ok", ""]})
    assert invalid.status == 400
    assert invalid.error["type"] == "invalid_request_error"
    assert (invalid.error["code"], invalid.error["param"]) == ("invalid_field", "texts[1]")
    assert invalid.error["grpc_code"] == "INVALID_ARGUMENT"
    malformed = call("POST", url, raw=b"{not json", headers={"Content-Type": "application/json"})
    assert malformed.status == 400 and malformed.error["code"] == "malformed_request"
    assert "hubless.v1.EmbedRequest" in malformed.error["message"]
    wrong_type = call("POST", url, {"texts": "not a list"})
    assert wrong_type.status == 400 and wrong_type.error["code"] == "malformed_request"
    unknown = call("POST", url, {"texts": ["x"], "model": "nope"})
    assert unknown.status == 404 and unknown.error["code"] == "model_not_found"
    disabled = call("POST", f"{base}/v1/tasks/detect-emotion", {"texts": ["x"]})
    assert disabled.status == 503 and disabled.error["code"] == "task_disabled"
    assert disabled.error["type"] == "service_unavailable_error"
    assert call("POST", f"{base}/v1/tasks/no-such-rpc", {}).status == 404
    assert call("GET", url).status == 405
    assert call("GET", f"{base}/nowhere").error["code"] == "not_found"

    # A full queue: 429 with Retry-After from the RetryInfo.
    FakeRuntime.gate = threading.Event()
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    try:
        blocker = stub.Embed.future(embeddings_pb2.EmbedRequest(texts=["blocker"]), timeout=10)
        _wait_until(lambda: _computed("blocker"))
        queued = stub.Embed.future(embeddings_pb2.EmbedRequest(texts=["q1", "q2"]), timeout=10)
        time.sleep(0.1)
        full = call("POST", url, {"texts": ["overflow"]})
        assert full.status == 429 and full.error["code"] == "queue_full"
        assert full.error["type"] == "rate_limit_error"
        assert full.headers["retry-after"] == "1"
        assert full.error["metadata"]["limit"] == "--max-queue"
    finally:
        FakeRuntime.gate.set()
    assert blocker.result() and queued.result()

    # A deadline from X-Hubless-Timeout: 504, and the queued item is never computed.
    FakeRuntime.delay = 0.6
    slow = stub.Embed.future(embeddings_pb2.EmbedRequest(texts=["slow"]), timeout=10)
    time.sleep(0.1)
    late = call("POST", url, {"texts": ["too late"]}, headers={"X-Hubless-Timeout": "0.2"})
    assert late.status == 504 and late.error["code"] == "deadline_expired"
    assert slow.result()
    FakeRuntime.delay = 0.0
    grpc_embed(server, ["after"])
    computed = [getattr(i, "text", "") for _, b in FakeRuntime.batches for i in b]
    assert "too late" not in computed

    # An unexpected error: 500, the type only.
    crash = call("POST", url, {"texts": ["crash"]})
    assert crash.status == 500 and crash.error["type"] == "server_error"
    assert crash.error["code"] == "internal" and "RuntimeError" in crash.error["message"]


def test_body_over_the_limit_is_413(start_fake: StartFake) -> None:
    _, base = start_http(start_fake, [EMBEDDER], "--tasks", "embedding")
    huge = b'{"texts": ["' + b"a" * (33 * 1024 * 1024) + b'"]}'
    answer = call("POST", f"{base}/v1/tasks/embed", raw=huge, use_curl=False)
    assert answer.status == 413 and answer.error["code"] == "request_too_large"


def test_grpc_codes_map_to_the_documented_http_statuses() -> None:
    expected = {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.INTERNAL: 500,
    }
    assert {code: HTTP_STATUS[code] for code in expected} == expected


# ---- tokens, limits, TLS, health ------------------------------------------------------


def test_tokens_and_caller_limit_as_on_grpc(start_fake: StartFake, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("token-a\ntoken-b\n")
    server, base = start_http(
        start_fake,
        [EMBEDDER],
        "--tasks",
        "embedding",
        "--auth-token-file",
        str(tokens),
        "--max-caller-concurrency",
        "1",
    )
    url = f"{base}/v1/embeddings"
    body = {"input": "hi", "model": EMBEDDER}
    missing = call("POST", url, body)
    assert missing.status == 401 and missing.error["code"] == "unauthenticated"
    assert missing.error["type"] == "authentication_error"
    wrong = call("POST", url, body, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401 and "not accepted" in wrong.error["message"]
    right = call("POST", url, body, headers={"Authorization": "Bearer token-a"})
    assert right.status == 200 and right.json()["data"][0]["index"] == 0
    # The SDK sends its api_key as the bearer token.
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="token-b", max_retries=0)
    assert client.embeddings.create(input="hi", model=EMBEDDER).model == EMBEDDER
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="bad", max_retries=0).models.list()
    # Health needs no token.
    assert call("GET", f"{base}/readyz").status == 200

    # token-a's gRPC call holds its one slot: its HTTP call is refused, token-b's is not.
    FakeRuntime.gate = threading.Event()
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    try:
        held = stub.Embed.future(
            embeddings_pb2.EmbedRequest(texts=["held"]),
            timeout=20,
            metadata=(("authorization", "Bearer token-a"),),
        )
        _wait_until(lambda: _computed("held"))
        limited = call("POST", url, body, headers={"Authorization": "Bearer token-a"})
        assert limited.status == 429 and limited.error["code"] == "caller_limit"
        assert limited.headers["retry-after"] == "1"
        assert limited.error["metadata"]["limit"] == "--max-caller-concurrency"
    finally:
        FakeRuntime.gate.set()
    assert held.result().model.name == EMBEDDER
    assert call("POST", url, body, headers={"Authorization": "Bearer token-a"}).status == 200


def test_tls_uses_the_grpc_certificate(start_fake: StartFake, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "s.crt", tmp_path / "s.key", tmp_path / "ca.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    ca_file.write_bytes(ca.cert_pem.bytes())
    port = free_port()
    start_fake(
        [EMBEDDER],
        "--tasks",
        "embedding",
        "--http-port",
        str(port),
        "--tls-cert-file",
        str(cert_file),
        "--tls-key-file",
        str(key_file),
    )
    base = f"https://127.0.0.1:{port}"
    answer = call("POST", f"{base}/v1/embeddings", {"input": "hi"}, cacert=str(ca_file))
    assert answer.status == 200 and answer.json()["model"] == EMBEDDER
    with pytest.raises(httpx.TransportError):  # plaintext HTTP is not served on a TLS port
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_health_routes_follow_grpc_health(start_fake: StartFake) -> None:
    FakeRuntime.load_delay = 0.5
    port = free_port()
    server = start_fake([EMBEDDER], "--tasks", "embedding", "--http-port", str(port), wait=False)
    base = f"http://127.0.0.1:{port}"
    assert call("GET", f"{base}/healthz").json() == {"status": "SERVING"}
    loading = call("GET", f"{base}/readyz")
    assert loading.status == 503 and loading.json()["status"] == "NOT_SERVING"
    server.wait_loaded()
    assert call("GET", f"{base}/readyz").json() == {"service": "", "status": "SERVING"}
    task = call("GET", f"{base}/readyz?service=hubless.v1.EmbeddingsService")
    assert task.status == 200
    assert call("GET", f"{base}/readyz?service=no.Such").status == 404


def test_http_calls_are_logged_and_counted(
    start_fake: StartFake, caplog: pytest.LogCaptureFixture
) -> None:
    _, base = start_http(start_fake, [EMBEDDER], "--tasks", "embedding")
    counter = metrics.REQUESTS.labels("EmbeddingsService.Embed", "OK")
    before = counter._value.get()
    with caplog.at_level(logging.INFO, logger="hubless_server.access"):
        assert call("POST", f"{base}/v1/embeddings", {"input": ["a", "b"]}).status == 200
        assert call("POST", f"{base}/v1/tasks/embed", {"texts": ["x"], "model": "no"}).status

        def access() -> list[logging.LogRecord]:  # other loggers may reach the root too
            return [r for r in caplog.records if r.name == "hubless_server.access"]

        _wait_until(lambda: len(access()) >= 2)
    assert counter._value.get() == before + 1
    ok, missing = (r.__dict__["fields"] for r in access()[:2])
    assert ok["method"] == "EmbeddingsService.Embed" and ok["via"] == "http"
    assert (ok["code"], ok["items"], ok["model"]) == ("OK", 2, EMBEDDER)
    assert ok["peer"].startswith("ipv4:127.0.0.1:")
    assert missing["code"] == "NOT_FOUND" and missing["via"] == "http"
    assert "trace_id" not in ok  # tracing is off


def test_settings_reject_a_port_clash(tmp_path: Path) -> None:
    from hubless_server.core.flags import load_settings
    from hubless_server.core.values import ConfigError

    with pytest.raises(ConfigError, match="--http-port must differ from --metrics-port"):
        load_settings(["--models-dir", str(tmp_path), "--http-port", "9090"], {})
    settings = load_settings(["--models-dir", str(tmp_path)], {"HUBLESS_HTTP_PORT": "8080"})
    assert settings.http_port == 8080


def test_a_client_that_hangs_up_is_not_computed(start_fake: StartFake) -> None:
    server, base = start_http(start_fake, [EMBEDDER], "--tasks", "embedding")
    FakeRuntime.gate = threading.Event()
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    try:
        blocker = stub.Embed.future(embeddings_pb2.EmbedRequest(texts=["blocker"]), timeout=10)
        _wait_until(lambda: _computed("blocker"))
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
            httpx.post(f"{base}/v1/tasks/embed", json={"texts": ["doomed"]}, timeout=0.3)
        time.sleep(0.2)
    finally:
        FakeRuntime.gate.set()
    blocker.result()
    grpc_embed(server, ["after"])
    computed = [getattr(i, "text", "") for _, b in FakeRuntime.batches for i in b]
    assert "doomed" not in computed and "after" in computed
