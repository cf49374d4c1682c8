"""What :class:`~hubless_client.Client` and :class:`~hubless_client.AsyncClient` share: their
settings, the call metadata, the chunking limits, the stubs and the closed state.

As in httpx's ``BaseClient``, the logic lives once here while the two classes repeat their
public signatures on purpose (each documents what its own methods return). Only the channel
differs (``grpc`` or ``grpc.aio``), so each client makes its channel and hands it to
:meth:`ClientBase._bind`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from hubless.v1 import (
    conversation_pb2_grpc,
    embeddings_pb2_grpc,
    emotion_pb2_grpc,
    models_pb2_grpc,
    sentiment_pb2_grpc,
    summarization_pb2_grpc,
    zero_shot_pb2_grpc,
)
from hubless_client import _chunks, _common, _health
from hubless_client._common import PEM, Metadata, RetryPolicy
from hubless_client.errors import ClientClosed, DeadlineExceeded


class ClientBase:
    """Settings and state common to both clients (see :class:`~hubless_client.Client`)."""

    target: str
    timeout: float | None
    stream_timeout: float | None
    max_in_flight: int

    def _configure(
        self,
        target: str,
        *,
        timeout: float | None,
        stream_timeout: float | None,
        max_batch: int,
        max_in_flight: int,
        tls: bool | grpc.ChannelCredentials,
        root_certificates: PEM | None,
        client_cert: PEM | None,
        client_key: PEM | None,
        token: str | None,
        allow_insecure_token: bool,
        metadata: Metadata | None,
        retries: bool | RetryPolicy,
        options: Sequence[tuple[str, Any]],
    ) -> tuple[list[tuple[str, Any]], grpc.ChannelCredentials | None]:
        """Check and keep the settings; return the channel options and TLS credentials
        (``None``: plaintext) the client makes its channel with."""
        _chunks.check_limits(max_batch, max_in_flight)
        _common.check_str(target, "target")
        self.target = target
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self.max_in_flight = max_in_flight
        self._limits = _chunks.Limits(max_batch=max_batch)
        self._closed = False
        credentials = _common.channel_credentials(tls, root_certificates, client_cert, client_key)
        self._metadata = _common.auth_metadata(
            _common.normalize_metadata(metadata),
            token,
            target,
            secure=credentials is not None,
            allow_insecure_token=allow_insecure_token,
        )
        return _common.channel_options(retries, options), credentials

    def _bind(self, channel: Any) -> None:
        """Make the stubs of every service on ``channel``."""
        self._channel = channel
        self._embeddings = embeddings_pb2_grpc.EmbeddingsServiceStub(channel)
        self._emotion = emotion_pb2_grpc.EmotionServiceStub(channel)
        self._sentiment = sentiment_pb2_grpc.SentimentServiceStub(channel)
        self._zero_shot = zero_shot_pb2_grpc.ZeroShotServiceStub(channel)
        self._summarization = summarization_pb2_grpc.SummarizationServiceStub(channel)
        self._conversation = conversation_pb2_grpc.ConversationServiceStub(channel)
        self._models = models_pb2_grpc.ModelsServiceStub(channel)
        self._health_check = channel.unary_unary(
            _health.CHECK_METHOD,
            request_serializer=_health.encode_request,
            response_deserializer=_health.decode_status,
        )

    @property
    def max_batch(self) -> int:
        """Texts per request of a batch call (lowered when the server reports a smaller
        ``--max-texts``)."""
        return self._limits.max_batch

    @max_batch.setter
    def max_batch(self, value: int) -> None:
        _chunks.check_limits(value, self.max_in_flight)
        self._limits.max_batch = value

    @property
    def closed(self) -> bool:
        """``close()`` was called: every later call raises :class:`ClientClosed`."""
        return self._closed

    def _deadline(self, timeout: float | None) -> float | None:
        return _common.deadline(timeout, self.timeout)

    def _check_open(self) -> None:
        """Raise :class:`ClientClosed` (not gRPC's ``ValueError``) once the client is closed."""
        if self._closed:
            raise ClientClosed(
                f"this client of {self.target} is closed (close() was called, or its with "
                "block ended): create a new client to make more calls"
            )

    def _not_serving(self, service: str, timeout: float, last: str) -> DeadlineExceeded:
        """What ``wait_until_serving`` raises when ``timeout`` ran out."""
        what = (
            f"service {service!r} at {self.target}" if service else f"the server at {self.target}"
        )
        return DeadlineExceeded(f"{what} is not SERVING after {timeout:g} s; last seen: {last}")
