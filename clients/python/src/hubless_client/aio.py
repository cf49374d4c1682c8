"""The asyncio hubless client (``grpc.aio``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from hubless_client import _calls, _chunks, _common, _deprecated
from hubless_client._base import ClientBase
from hubless_client._common import DEFAULT_TIMEOUT, PEM, Metadata, ReplyAccumulator, RetryPolicy
from hubless_client.errors import DeadlineExceeded, HublessError, Unavailable, from_rpc_error
from hubless_client.types import (
    EmbedResult,
    EmotionResult,
    HealthStatus,
    ModelInfo,
    ReplyChunk,
    ReplyResult,
    SentimentResult,
    SummarizeResult,
    Task,
    Truncation,
    ZeroShotResult,
    model_from_pb,
    models_from_pb,
)

log = logging.getLogger(__name__)

R = TypeVar("R")


class AsyncReplyStream(ReplyAccumulator):
    """A reply being streamed: ``async for`` it for the text chunks.

    After the iteration ends, ``text``, ``model``, ``finish_reason``, ``history_truncated``
    and ``tokens`` hold the complete answer (or ``await`` :meth:`result`, which drains the
    rest first). :meth:`cancel` (or leaving an ``async with`` block early) stops the
    generation.
    """

    def __init__(self, call: Any) -> None:
        super().__init__()
        self._call = call

    async def chunks(self) -> AsyncIterator[ReplyChunk]:
        """The raw chunks (including an empty final one), as they arrive."""
        while not self.done:
            try:
                message = await self._call.read()
            except asyncio.CancelledError:
                if not self._cancelled:
                    raise
                self.done = True
                return
            except grpc.RpcError as exc:
                self.done = True
                if self._cancelled and exc.code() == grpc.StatusCode.CANCELLED:
                    return
                raise from_rpc_error(exc) from exc
            if message is grpc.aio.EOF:
                self.done = True
                return
            chunk = ReplyChunk.from_pb(message)
            self._absorb(chunk)
            yield chunk

    async def __aiter__(self) -> AsyncIterator[str]:
        async for chunk in self.chunks():
            if chunk.text:
                yield chunk.text

    async def result(self) -> ReplyResult:
        """Read the rest of the stream and return the whole reply."""
        async for _ in self.chunks():
            pass
        return self._result()

    def cancel(self) -> None:
        """Stop the stream; the iteration ends quietly."""
        if not self.done:
            self._cancelled = True
            self._call.cancel()

    async def __aenter__(self) -> AsyncReplyStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


class AsyncClient(ClientBase):
    """asyncio client of a hubless server; the same arguments, methods and results as
    :class:`hubless_client.Client`, awaited (``stream_reply`` is not: ``async for`` it).
    Create and use it inside one event loop, and ``await close()`` it (or use
    ``async with``). A split call runs its requests as tasks, at most ``max_in_flight`` at
    once; cancelling the call cancels them. Deadlines, chunking and the connection options:
    see :class:`~hubless_client.Client`.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        stream_timeout: float | None = None,
        max_batch: int = _chunks.DEFAULT_MAX_BATCH,
        max_in_flight: int = _chunks.DEFAULT_MAX_IN_FLIGHT,
        tls: bool | grpc.ChannelCredentials = False,
        root_certificates: PEM | None = None,
        client_cert: PEM | None = None,
        client_key: PEM | None = None,
        token: str | None = None,
        allow_insecure_token: bool = False,
        metadata: Metadata | None = None,
        retries: bool | RetryPolicy = True,
        options: Sequence[tuple[str, Any]] = (),
        trace_context: bool = False,
    ) -> None:
        opts, credentials = self._configure(
            target,
            timeout=timeout,
            stream_timeout=stream_timeout,
            max_batch=max_batch,
            max_in_flight=max_in_flight,
            tls=tls,
            root_certificates=root_certificates,
            client_cert=client_cert,
            client_key=client_key,
            token=token,
            allow_insecure_token=allow_insecure_token,
            metadata=metadata,
            retries=retries,
            options=options,
        )
        interceptors = None
        if trace_context:  # opt-in: needs OpenTelemetry
            from hubless_client import tracing

            interceptors = tracing.aio_interceptors()
        if credentials is None:
            channel = grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors)
        else:
            channel = grpc.aio.secure_channel(
                target, credentials, options=opts, interceptors=interceptors
            )
        self._bind(channel)

    # ---- plumbing ---------------------------------------------------------------------

    async def _call(
        self, method: Callable[..., Any], request: Any, timeout: float | None, convert: Callable
    ) -> Any:
        self._check_open()
        try:
            response = await method(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return convert(response)

    async def _batched(self, method: Any, call: _chunks.BatchCall[R], timeout: float | None) -> R:
        """``call`` in chunks of at most ``max_batch`` texts (see the class docstring)."""
        self._check_open()
        seconds = self._deadline(timeout)

        def start(request: Any) -> Any:
            return method(request, timeout=seconds, metadata=self._metadata)

        return await _chunks.run_async(call, start, self._limits, self.max_in_flight, seconds)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled, later calls raise
        :class:`~hubless_client.ClientClosed`. Closing twice is harmless."""
        self._closed = True
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- RPCs -------------------------------------------------------------------------

    async def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool = True,
        model: str = "",
        truncation: Truncation | str | None = None,
        as_numpy: bool = False,
        timeout: float | None = None,
    ) -> EmbedResult:
        """Sentence embeddings of ``texts`` (L2-normalised unless ``normalize=False``);
        ``as_numpy=True``: ``vectors`` is an (n, d) float32 numpy array (needs numpy)."""
        call = _calls.embed(texts, normalize, model, truncation, as_numpy)
        return await self._batched(self._embeddings.Embed, call, timeout)

    async def detect_emotion(
        self,
        texts: Sequence[str],
        *,
        model: str = "",
        truncation: Truncation | str | None = None,
        timeout: float | None = None,
    ) -> EmotionResult:
        """The emotion of each text."""
        call = _calls.emotion(texts, model, truncation)
        return await self._batched(self._emotion.DetectEmotion, call, timeout)

    async def analyze_sentiment(
        self,
        texts: Sequence[str],
        *,
        model: str = "",
        truncation: Truncation | str | None = None,
        timeout: float | None = None,
    ) -> SentimentResult:
        """The sentiment of each text; ``model`` picks one of the sentiment models by name."""
        call = _calls.sentiment(texts, model, truncation)
        return await self._batched(self._sentiment.AnalyzeSentiment, call, timeout)

    async def classify_zero_shot(
        self,
        texts: Sequence[str],
        candidate_labels: Sequence[str],
        *,
        multi_label: bool = False,
        hypothesis_template: str | None = None,
        model: str = "",
        truncation: Truncation | str | None = None,
        timeout: float | None = None,
    ) -> ZeroShotResult:
        """Score each text against ``candidate_labels`` (template must contain ``{}`` once).
        A split call sends every label with each chunk of texts."""
        call = _calls.zero_shot(
            texts, candidate_labels, multi_label, hypothesis_template, model, truncation
        )
        return await self._batched(self._zero_shot.ClassifyZeroShot, call, timeout)

    async def summarize(
        self,
        texts: Sequence[str],
        *,
        min_length: int | None = None,
        max_length: int | None = None,
        num_beams: int | None = None,
        model: str = "",
        truncation: Truncation | str | None = None,
        timeout: float | None = None,
    ) -> SummarizeResult:
        """A summary of each text; ``None`` for a length or ``num_beams`` leaves it to the
        server's default (``num_beams``: greedy)."""
        call = _calls.summarize(texts, min_length, max_length, num_beams, model, truncation)
        return await self._batched(self._summarization.Summarize, call, timeout)

    async def reply(
        self,
        turns: Sequence[str],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        model: str = "",
        timeout: float | None = None,
    ) -> ReplyResult:
        """The next turn of a conversation (``turns`` oldest first). Greedy unless
        ``temperature`` is set and non-zero; ``max_new_tokens=None`` is the server's
        default. One conversation is never split."""
        request = _common.reply_request(turns, max_new_tokens, temperature, top_p, seed, model)
        return await self._call(self._conversation.Reply, request, timeout, ReplyResult.from_pb)

    def stream_reply(
        self,
        turns: Sequence[str],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        model: str = "",
        timeout: float | None = None,
    ) -> AsyncReplyStream:
        """Like :meth:`reply`, but the text arrives in chunks (not awaited: ``async for``).
        ``timeout`` covers the whole stream (default: the client's ``stream_timeout``)."""
        request = _common.stream_reply_request(
            turns, max_new_tokens, temperature, top_p, seed, model
        )
        self._check_open()
        call = self._conversation.StreamReply(
            request,
            timeout=_common.deadline(timeout, self.stream_timeout),
            metadata=self._metadata,
        )
        return AsyncReplyStream(call)

    async def list_models(
        self, task: Task | str | None = None, *, timeout: float | None = None
    ) -> list[ModelInfo]:
        """Every model of the served tasks, with its state, grouped by task in preference
        order; ``task`` (e.g. ``"zero-shot"``) lists only that task's."""
        request = _common.list_models_request(task)
        return await self._call(self._models.ListModels, request, timeout, models_from_pb)

    async def get_model(self, name: str, *, timeout: float | None = None) -> ModelInfo:
        """One model by catalog name; :class:`NotFound` when it is not a model of a served
        task."""
        request = _common.get_model_request(name)
        return await self._call(self._models.GetModel, request, timeout, model_from_pb)

    async def health(self, service: str = "", *, timeout: float | None = None) -> HealthStatus:
        """The ``grpc.health.v1`` status of ``service`` (``""``: the whole server, or a
        service name such as ``"hubless.v1.SentimentService"``). A service the server does not
        know gives ``SERVICE_UNKNOWN``."""
        _common.check_str(service, "service")
        self._check_open()
        try:
            return await self._health_check(
                service, timeout=self._deadline(timeout), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return HealthStatus.SERVICE_UNKNOWN
            raise from_rpc_error(exc) from exc

    async def wait_until_serving(
        self, service: str = "", *, timeout: float = 60.0, interval: float = 0.2
    ) -> None:
        """Wait until ``service`` reports SERVING; raise :class:`DeadlineExceeded` after
        ``timeout`` seconds, with the last status or error seen."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._not_serving(service, timeout, last)
            try:
                status = await self.health(service, timeout=min(remaining, max(interval, 1.0)))
            except (Unavailable, DeadlineExceeded) as exc:
                last = str(exc)
            except HublessError:
                raise
            else:
                if status is HealthStatus.SERVING:
                    return
                last = status.value
            log.debug("waiting for %s: %s", service or "server", last)
            await asyncio.sleep(min(interval, max(deadline - time.monotonic(), 0)))

    # ---- deprecated names (warn once) -------------------------------------------------

    emotion = _deprecated.alias(detect_emotion, "emotion")
    sentiment = _deprecated.alias(analyze_sentiment, "sentiment")
    zero_shot = _deprecated.alias(classify_zero_shot, "zero_shot")
    reply_stream = _deprecated.alias(stream_reply, "reply_stream")
    models = _deprecated.alias(list_models, "models")
    model = _deprecated.alias(get_model, "model")
