"""What the blocking and the asyncio clients share: channel settings and request building."""

from __future__ import annotations

import ipaddress
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from hubless.v1 import (
    conversation_pb2,
    embeddings_pb2,
    emotion_pb2,
    models_pb2,
    sentiment_pb2,
    summarization_pb2,
    zero_shot_pb2,
)
from hubless_client.types import (
    FinishReason,
    ModelRef,
    ReplyChunk,
    ReplyResult,
    Truncation,
    task_to_pb,
    truncation_to_pb,
)

#: What the retry policy covers: every unary RPC. Server-streaming ``StreamReply`` is left out:
#: with retries on, grpcio's core hangs a streaming call past its deadline when the server dies
#: before the first message (reproduced with grpcio 1.85; tests/client/test_server_death.py).
RETRIED_METHODS: tuple[dict[str, str], ...] = (
    {"service": "hubless.v1.EmbeddingsService"},
    {"service": "hubless.v1.EmotionService"},
    {"service": "hubless.v1.SentimentService"},
    {"service": "hubless.v1.ZeroShotService"},
    {"service": "hubless.v1.SummarizationService"},
    {"service": "hubless.v1.ConversationService", "method": "Reply"},
    {"service": "hubless.v1.ModelsService"},
    {"service": "grpc.health.v1.Health", "method": "Check"},
)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Seconds a unary call may take when neither the client nor the call says otherwise.
DEFAULT_TIMEOUT = 30.0

Metadata = Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]]


@dataclass(frozen=True)
class RetryPolicy:
    """Transparent retries of unary calls that fail with UNAVAILABLE (server restarting, no
    model loaded yet), done by gRPC itself from the channel's service config. ``StreamReply``
    (``stream_reply``) is never retried.

    The n-th retry waits a random time up to
    ``min(initial_backoff * backoff_multiplier ** (n - 1), max_backoff)`` seconds. gRPC caps
    ``max_attempts`` at 5. The call's timeout covers all attempts.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 2:
            raise ValueError("max_attempts must be at least 2 (use retries=False for none)")
        if self.initial_backoff <= 0 or self.max_backoff <= 0 or self.backoff_multiplier <= 0:
            raise ValueError("backoff values must be positive")

    def service_config(self) -> str:
        """The ``grpc.service_config`` JSON enabling this policy for every unary RPC."""
        return json.dumps(
            {
                "methodConfig": [
                    {
                        "name": [dict(name) for name in RETRIED_METHODS],
                        "retryPolicy": {
                            "maxAttempts": self.max_attempts,
                            "initialBackoff": f"{self.initial_backoff:g}s",
                            "maxBackoff": f"{self.max_backoff:g}s",
                            "backoffMultiplier": self.backoff_multiplier,
                            "retryableStatusCodes": ["UNAVAILABLE"],
                        },
                    }
                ]
            }
        )


def channel_options(
    retries: bool | RetryPolicy, options: Sequence[tuple[str, Any]]
) -> list[tuple[str, Any]]:
    """Channel arguments: retry settings and message limits, then ``options`` (which win)."""
    merged: dict[str, Any] = {
        "grpc.max_receive_message_length": DEFAULT_MAX_MESSAGE_BYTES,
        "grpc.max_send_message_length": DEFAULT_MAX_MESSAGE_BYTES,
    }
    policy = RetryPolicy() if retries is True else retries
    if isinstance(policy, RetryPolicy):
        merged["grpc.enable_retries"] = 1
        merged["grpc.service_config"] = policy.service_config()
    else:
        merged["grpc.enable_retries"] = 0
    merged.update(dict(options))
    return list(merged.items())


PEM = bytes | str | os.PathLike[str]
"""A PEM value: its bytes, or the path of a file holding it (``str`` or ``Path``)."""


def read_pem(value: PEM | None, what: str) -> bytes | None:
    """PEM bytes as given, or read from a path; ``None`` stays ``None``."""
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {value}: {exc.strerror or exc}") from None


def channel_credentials(
    tls: bool | grpc.ChannelCredentials,
    root_certificates: PEM | None,
    client_cert: PEM | None = None,
    client_key: PEM | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials, or ``None`` for a plaintext channel.

    ``tls`` may be ready-made credentials; ``root_certificates`` (a private CA) and a client
    certificate for mutual TLS (``client_cert`` with ``client_key``) imply TLS.
    """
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together: give both or neither")
    if isinstance(tls, grpc.ChannelCredentials):
        if root_certificates is not None or client_cert is not None:
            raise ValueError(
                "give either credentials in tls= or root_certificates=/client_cert=, not both"
            )
        return tls
    if tls or root_certificates is not None or client_cert is not None:
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(root_certificates, "root_certificates"),
            private_key=read_pem(client_key, "client_key"),
            certificate_chain=read_pem(client_cert, "client_cert"),
        )
    return None


#: Host names that are this machine whatever DNS says: ``localhost`` only. ``*.localhost``
#: (``evil.localhost``), ``localhost.example.com`` and distribution aliases such as
#: ``ip6-localhost`` depend on the resolver and its configuration, so a token is not sent to
#: them in clear text.
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})

#: Target schemes that name this machine's sockets, not network hosts.
_LOCAL_SCHEMES = ("unix:", "unix-abstract:")
#: A target that starts ``scheme://`` (``xds:///svc``, ``dns://8.8.8.8/h:1``), or one of these
#: schemes, is resolved by something other than this machine: its hosts are unknown here.
_REMOTE_SCHEMES = ("vsock:", "xds:", "google-c2p:")


def _host_of(address: str) -> str:
    """The host of ``host[:port]``: ``[::1]:50051`` -> ``::1``, ``h:1`` -> ``h``; a bare IPv6
    address (several colons, no brackets) as it is."""
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    if address.count(":") > 1:
        return address
    return address.rsplit(":", 1)[0] if ":" in address else address


def target_hosts(target: str) -> list[str] | None:
    """Every host a gRPC target may dial: ``h:50051`` -> ``["h"]``, ``dns:///h:1`` ->
    ``["h"]``, ``ipv4:127.0.0.1:1,10.0.0.1:2`` -> ``["127.0.0.1", "10.0.0.1"]``; ``[]`` for a
    Unix socket (this machine); ``None`` when another resolver picks them (a DNS authority,
    ``xds:``, any other ``scheme://``), so they are unknown here."""
    if target.startswith(_LOCAL_SCHEMES):
        return []
    if target.startswith("dns:"):
        rest = target[len("dns:") :]
        if rest.startswith("//"):
            authority, _, rest = rest[2:].partition("/")
            if authority:  # names resolved by that DNS server
                return None
        return [_host_of(rest)]
    if target.startswith(("ipv4:", "ipv6:")):
        return [_host_of(address) for address in target[len("ipv4:") :].split(",")]
    if target.startswith(_REMOTE_SCHEMES) or "://" in target:
        return None
    return [_host_of(target)]


def is_loopback_host(host: str) -> bool:
    """``host`` is this machine: the name ``localhost``, or an address in 127.0.0.0/8 or
    ``::1`` (an IPv4-mapped ``::ffff:127.0.0.1`` too)."""
    host = host.lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_loopback_target(target: str) -> bool:
    """Every address the target may dial is this machine (:func:`is_loopback_host`), or it is
    a Unix socket. Anything uncertain is not."""
    hosts = target_hosts(target)
    return hosts is not None and all(is_loopback_host(host) for host in hosts)


def auth_metadata(
    metadata: tuple[tuple[str, str | bytes], ...],
    token: str | None,
    target: str,
    secure: bool,
    allow_insecure_token: bool,
) -> tuple[tuple[str, str | bytes], ...]:
    """``metadata`` plus ``authorization: Bearer <token>``, refusing to send a bearer token
    (given as ``token`` or in ``metadata``) in clear text to another machine: anyone on the
    path could read it and call the server as you. ``allow_insecure_token`` lifts this (a
    trusted network, or TLS terminated by a sidecar on the same host)."""
    if token is not None:
        token = token.strip()
        if not token or any(c.isspace() for c in token):
            raise ValueError("token must be a non-empty string without whitespace")
        if any(key == "authorization" for key, _ in metadata):
            raise ValueError("give the token either as token= or in metadata, not both")
        metadata = (*metadata, ("authorization", f"Bearer {token}"))
    sends_token = any(key == "authorization" for key, _ in metadata)
    if sends_token and not secure and not allow_insecure_token and not is_loopback_target(target):
        raise ValueError(
            f"refusing to send a bearer token over plaintext to {target}: it is not (only) this "
            "machine, and anyone on the path could read the token; use tls=True (or "
            "root_certificates=), or pass allow_insecure_token=True if the network is trusted"
        )
    return metadata


def normalize_metadata(metadata: Metadata | None) -> tuple[tuple[str, str | bytes], ...]:
    """Metadata as gRPC wants it: a tuple of pairs with lower-case keys."""
    if metadata is None:
        return ()
    pairs = metadata.items() if isinstance(metadata, Mapping) else metadata
    return tuple((str(key).lower(), value) for key, value in pairs)


def deadline(timeout: float | None, default: float | None) -> float | None:
    """The deadline of a call in seconds: its ``timeout``, else the client's ``default``;
    ``None`` or ``math.inf`` is none."""
    value = default if timeout is None else timeout
    return None if value is None or math.isinf(value) else value


def _kind(value: object) -> str:
    return "None" if value is None else type(value).__name__


def _decode_hint(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return " (bytes are not decoded for you: pass value.decode('utf-8') or the right codec)"
    return ""


def check_str(value: object, what: str) -> str:
    """``value`` if it is a ``str``, else a :class:`TypeError` naming ``what``."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, got {_kind(value)}{_decode_hint(value)}")
    return value


def text_list(texts: Sequence[str], what: str = "texts") -> list[str]:
    """``texts`` as a list of ``str``, checked before anything is sent: a single string (which
    would be split into characters) or an entry that is not a ``str`` is a :class:`TypeError`
    naming the entry (``texts must be str, got int at texts[0]``). Bytes are refused, never
    decoded: only the caller knows their encoding."""
    if isinstance(texts, str | bytes | bytearray):
        single = "string" if isinstance(texts, str) else "bytes object"
        raise TypeError(f"{what} must be a sequence of str, not a single {single}")
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(f"{what} must be a sequence of str, got {_kind(texts)}") from None
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(
                f"{what} must be str, got {_kind(item)} at {what}[{index}]{_decode_hint(item)}"
            )
    return items


def embed_request(
    texts: Sequence[str], normalize: bool, model: str, truncation: Truncation | str | None
) -> embeddings_pb2.EmbedRequest:
    return embeddings_pb2.EmbedRequest(
        texts=text_list(texts),
        normalize=normalize,
        model=check_str(model, "model"),
        truncation=truncation_to_pb(truncation),
    )


def emotion_request(
    texts: Sequence[str], model: str, truncation: Truncation | str | None
) -> emotion_pb2.DetectEmotionRequest:
    return emotion_pb2.DetectEmotionRequest(
        texts=text_list(texts),
        model=check_str(model, "model"),
        truncation=truncation_to_pb(truncation),
    )


def sentiment_request(
    texts: Sequence[str], model: str, truncation: Truncation | str | None
) -> sentiment_pb2.AnalyzeSentimentRequest:
    return sentiment_pb2.AnalyzeSentimentRequest(
        texts=text_list(texts),
        model=check_str(model, "model"),
        truncation=truncation_to_pb(truncation),
    )


def zero_shot_request(
    texts: Sequence[str],
    candidate_labels: Sequence[str],
    multi_label: bool,
    hypothesis_template: str | None,
    model: str,
    truncation: Truncation | str | None,
) -> zero_shot_pb2.ClassifyZeroShotRequest:
    return zero_shot_pb2.ClassifyZeroShotRequest(
        texts=text_list(texts),
        candidate_labels=text_list(candidate_labels, "candidate_labels"),
        multi_label=multi_label,
        hypothesis_template=(
            ""
            if hypothesis_template is None
            else check_str(hypothesis_template, "hypothesis_template")
        ),
        model=check_str(model, "model"),
        truncation=truncation_to_pb(truncation),
    )


def summarize_request(
    texts: Sequence[str],
    min_length: int | None,
    max_length: int | None,
    num_beams: int | None,
    model: str,
    truncation: Truncation | str | None,
) -> summarization_pb2.SummarizeRequest:
    """``None`` leaves a length or ``num_beams`` unset: the server's default."""
    request = summarization_pb2.SummarizeRequest(
        texts=text_list(texts),
        model=check_str(model, "model"),
        truncation=truncation_to_pb(truncation),
    )
    if min_length is not None:
        request.min_length = min_length
    if max_length is not None:
        request.max_length = max_length
    if num_beams is not None:
        request.num_beams = num_beams
    return request


ReplyRequestT = TypeVar(
    "ReplyRequestT", conversation_pb2.ReplyRequest, conversation_pb2.StreamReplyRequest
)


def _fill_reply(
    request: ReplyRequestT,
    turns: Sequence[str],
    max_new_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    seed: int | None,
    model: str,
) -> ReplyRequestT:
    """``None`` leaves a field unset: the server default (greedy decoding without a
    temperature)."""
    request.turns.extend(text_list(turns, "turns"))
    request.model = check_str(model, "model")
    if max_new_tokens is not None:
        request.max_new_tokens = max_new_tokens
    if temperature is not None:
        request.temperature = temperature
    if top_p is not None:
        request.top_p = top_p
    if seed is not None:
        request.seed = seed
    return request


def reply_request(
    turns: Sequence[str],
    max_new_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    seed: int | None,
    model: str,
) -> conversation_pb2.ReplyRequest:
    return _fill_reply(
        conversation_pb2.ReplyRequest(), turns, max_new_tokens, temperature, top_p, seed, model
    )


def stream_reply_request(
    turns: Sequence[str],
    max_new_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    seed: int | None,
    model: str,
) -> conversation_pb2.StreamReplyRequest:
    return _fill_reply(
        conversation_pb2.StreamReplyRequest(),
        turns,
        max_new_tokens,
        temperature,
        top_p,
        seed,
        model,
    )


def list_models_request(task: str | None) -> models_pb2.ListModelsRequest:
    """``task``: a volume task name such as ``"zero-shot"``; ``None`` lists every task's."""
    return models_pb2.ListModelsRequest(task=task_to_pb(task))


def get_model_request(name: str) -> models_pb2.GetModelRequest:
    return models_pb2.GetModelRequest(name=check_str(name, "name"))


class ReplyAccumulator:
    """What :class:`~hubless_client.ReplyStream` and its asyncio twin gather from the chunks:
    ``text`` (so far), ``model``, ``finish_reason``, ``history_truncated`` and ``tokens``."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._cancelled = False
        self.model: ModelRef | None = None
        self.finish_reason: FinishReason | None = None
        self.history_truncated = False
        #: Tokens generated so far.
        self.tokens = 0
        self.done = False

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._parts)

    def _absorb(self, chunk: ReplyChunk) -> None:
        self._parts.append(chunk.text)
        if chunk.model is not None:
            self.model = chunk.model
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        self.history_truncated = self.history_truncated or chunk.history_truncated
        self.tokens = max(self.tokens, chunk.tokens)

    def _result(self) -> ReplyResult:
        return ReplyResult(
            text=self.text,
            tokens=self.tokens,
            finish_reason=self.finish_reason or FinishReason.UNSPECIFIED,
            history_truncated=self.history_truncated,
            model=self.model or ModelRef("", "", ""),
        )
