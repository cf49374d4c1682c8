"""The blocking hubless client."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

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


class ReplyStream(ReplyAccumulator):
    """A reply being streamed: iterate it for the text chunks as they are generated.

    After the iteration ends, ``text``, ``model``, ``finish_reason``, ``history_truncated``
    and ``tokens`` hold the complete answer (or call :meth:`result`, which drains the rest
    first). :meth:`cancel` (or leaving a ``with`` block early) stops the generation on the
    server.
    """

    def __init__(self, call: Any) -> None:
        super().__init__()
        self._call = call

    def chunks(self) -> Iterator[ReplyChunk]:
        """The raw chunks (including an empty final one), as they arrive."""
        while not self.done:
            try:
                message = next(self._call)
            except StopIteration:
                self.done = True
                return
            except grpc.RpcError as exc:
                self.done = True
                if self._cancelled and exc.code() == grpc.StatusCode.CANCELLED:
                    return
                raise from_rpc_error(exc) from exc
            chunk = ReplyChunk.from_pb(message)
            self._absorb(chunk)
            yield chunk

    def __iter__(self) -> Iterator[str]:
        return (chunk.text for chunk in self.chunks() if chunk.text)

    def result(self) -> ReplyResult:
        """Read the rest of the stream and return the whole reply."""
        for _ in self.chunks():
            pass
        return self._result()

    def cancel(self) -> None:
        """Stop the stream; the iteration ends quietly."""
        if not self.done:
            self._cancelled = True
            self._call.cancel()

    def __enter__(self) -> ReplyStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Client(ClientBase):
    """Blocking client of a hubless server.

    ``target`` is ``host:port``. ``timeout`` (seconds, default 30) is the deadline of every
    unary request; each method's ``timeout`` overrides it for that call, and ``None`` (on the
    client) or ``math.inf`` (either) means no deadline. A call the client splits gives the
    deadline to each of its requests. ``stream_timeout`` is the deadline of a whole
    :meth:`stream_reply` (default ``None``: a stream runs until the reply ends or you cancel
    it, as its length depends on ``max_new_tokens`` and your reading).

    Batch calls (``embed``, ``detect_emotion``, ``analyze_sentiment``,
    ``classify_zero_shot``, ``summarize``) with more than ``max_batch`` texts (default 64, the
    server's default ``--max-texts``) are split into requests of ``max_batch`` texts, at most
    ``max_in_flight`` (default 4) running at once, and answered as one result in input order.
    A request refused with ``LIMIT_EXCEEDED`` for its number of texts is split to the server's
    limit and sent again, once, and ``max_batch`` lowered to it. One refused with
    ``CALLER_LIMIT`` (the server's ``--max-caller-concurrency``) makes the call keep fewer
    requests in flight (halved, down to the server's limit, remembered) and send it again after
    the server's ``retry_delay``, within the call's ``timeout``.

    Arguments are checked before anything is sent: every text, label and turn must be a
    ``str`` (``TypeError: texts must be str, got int at texts[0]``; bytes are refused, not
    decoded). Errors are :class:`~hubless_client.HublessError` subclasses; a server that cannot
    be reached raises :class:`~hubless_client.ConnectionFailed` (an ``Unavailable``, reason
    ``UNREACHABLE``), a closed client :class:`~hubless_client.ClientClosed`.

    Security (see docs/security.md): ``tls`` is ``True`` for TLS with the system roots, or
    ready-made :class:`grpc.ChannelCredentials`. ``root_certificates`` (the CA that signed the
    server's certificate) and ``client_cert`` with ``client_key`` (mutual TLS) imply TLS; each
    is PEM bytes or the path of a PEM file. ``token`` is sent as ``authorization: Bearer
    <token>`` with every call (health checks included; the server ignores it there). A token
    is refused (``ValueError``) over a plaintext channel unless every address of ``target`` is
    this machine (the name ``localhost``, 127.0.0.0/8, ``::1``, a Unix socket; not
    ``*.localhost`` nor a name resolved elsewhere): whoever sees the traffic could replay it.
    ``allow_insecure_token=True`` sends it anyway, for a network you trust.

    ``metadata`` is sent with every call. ``retries``: ``True`` retries UNAVAILABLE with the
    default :class:`RetryPolicy`, ``False`` never retries, or pass a policy. ``options`` are
    extra gRPC channel arguments (e.g. ``("grpc.ssl_target_name_override", "hubless")`` when
    the certificate names another host than ``target``). ``trace_context=True`` sends the
    current OpenTelemetry trace context (W3C ``traceparent``) with every call, so that a server
    with tracing on continues your trace; it needs ``opentelemetry-api`` installed
    (:mod:`hubless_client.tracing`).
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
        if credentials is None:
            channel = grpc.insecure_channel(target, options=opts)
        else:
            channel = grpc.secure_channel(target, credentials, options=opts)
        if trace_context:  # opt-in: needs OpenTelemetry
            from hubless_client import tracing

            channel = grpc.intercept_channel(channel, *tracing.interceptors())
        self._bind(channel)

    # ---- plumbing ---------------------------------------------------------------------

    def _call(
        self, method: Callable[..., Any], request: Any, timeout: float | None, convert: Callable
    ) -> Any:
        self._check_open()
        try:
            response = method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return convert(response)

    def _batched(self, method: Any, call: _chunks.BatchCall[R], timeout: float | None) -> R:
        """``call`` in chunks of at most ``max_batch`` texts (see the class docstring)."""
        self._check_open()
        seconds = self._deadline(timeout)

        def start(request: Any) -> grpc.Future:
            return method.future(request, timeout=seconds, metadata=self._metadata)

        return _chunks.run_blocking(call, start, self._limits, self.max_in_flight, seconds)

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled, later calls raise
        :class:`~hubless_client.ClientClosed`. Closing twice is harmless."""
        self._closed = True
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- RPCs -------------------------------------------------------------------------

    def embed(
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
        return self._batched(self._embeddings.Embed, call, timeout)

    def detect_emotion(
        self,
        texts: Sequence[str],
        *,
        model: str = "",
        truncation: Truncation | str | None = None,
        timeout: float | None = None,
    ) -> EmotionResult:
        """The emotion of each text."""
        call = _calls.emotion(texts, model, truncation)
        return self._batched(self._emotion.DetectEmotion, call, timeout)

    def analyze_sentiment(
        self,
        texts: Sequence[str],
        *,
        model: str = "",
        truncation: Truncation | str | None = None,
        timeout: float | None = None,
    ) -> SentimentResult:
        """The sentiment of each text; ``model`` picks one of the sentiment models by name."""
        call = _calls.sentiment(texts, model, truncation)
        return self._batched(self._sentiment.AnalyzeSentiment, call, timeout)

    def classify_zero_shot(
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
        return self._batched(self._zero_shot.ClassifyZeroShot, call, timeout)

    def summarize(
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
        return self._batched(self._summarization.Summarize, call, timeout)

    def reply(
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
        return self._call(self._conversation.Reply, request, timeout, ReplyResult.from_pb)

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
    ) -> ReplyStream:
        """Like :meth:`reply`, but the text arrives in chunks as it is generated.
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
        return ReplyStream(call)

    def list_models(
        self, task: Task | str | None = None, *, timeout: float | None = None
    ) -> list[ModelInfo]:
        """Every model of the served tasks, with its state, grouped by task in preference
        order; ``task`` (e.g. ``"zero-shot"``) lists only that task's."""
        request = _common.list_models_request(task)
        return self._call(self._models.ListModels, request, timeout, models_from_pb)

    def get_model(self, name: str, *, timeout: float | None = None) -> ModelInfo:
        """One model by catalog name; :class:`NotFound` when it is not a model of a served
        task."""
        request = _common.get_model_request(name)
        return self._call(self._models.GetModel, request, timeout, model_from_pb)

    def health(self, service: str = "", *, timeout: float | None = None) -> HealthStatus:
        """The ``grpc.health.v1`` status of ``service`` (``""``: the whole server, or a
        service name such as ``"hubless.v1.SentimentService"``). A service the server does not
        know gives ``SERVICE_UNKNOWN``."""
        _common.check_str(service, "service")
        self._check_open()
        try:
            return self._health_check(
                service, timeout=self._deadline(timeout), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return HealthStatus.SERVICE_UNKNOWN
            raise from_rpc_error(exc) from exc

    def wait_until_serving(
        self, service: str = "", *, timeout: float = 60.0, interval: float = 0.2
    ) -> None:
        """Block until ``service`` reports SERVING; raise :class:`DeadlineExceeded` after
        ``timeout`` seconds, with the last status or error seen."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._not_serving(service, timeout, last)
            try:
                status = self.health(service, timeout=min(remaining, max(interval, 1.0)))
            except (Unavailable, DeadlineExceeded) as exc:
                last = str(exc)
            except HublessError:
                raise
            else:
                if status is HealthStatus.SERVING:
                    return
                last = status.value
            log.debug("waiting for %s: %s", service or "server", last)
            time.sleep(min(interval, max(deadline - time.monotonic(), 0)))

    # ---- deprecated names (warn once) -------------------------------------------------

    emotion = _deprecated.alias(detect_emotion, "emotion")
    sentiment = _deprecated.alias(analyze_sentiment, "sentiment")
    zero_shot = _deprecated.alias(classify_zero_shot, "zero_shot")
    reply_stream = _deprecated.alias(stream_reply, "reply_stream")
    models = _deprecated.alias(list_models, "models")
    model = _deprecated.alias(get_model, "model")
