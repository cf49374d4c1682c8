"""Results of the generation tasks: summaries and chat replies (whole or streamed)."""

from __future__ import annotations

from dataclasses import dataclass

from hubless.v1 import conversation_pb2, summarization_pb2
from hubless_client.types.base import Batch, ModelRef, count, short
from hubless_client.types.enums import FINISH_FROM_PB, FinishReason

__all__ = ["ReplyChunk", "ReplyResult", "SummarizeResult", "Summary"]


@dataclass(frozen=True, repr=False)
class Summary:
    """The summary of one text."""

    text: str
    #: The input was longer than the model's maximum and was cut.
    truncated: bool
    #: Tokens generated.
    tokens: int

    def __repr__(self) -> str:
        cut = ", truncated" if self.truncated else ""
        return f"Summary({short(self.text)}, {count(self.tokens, 'token')}{cut})"


@dataclass(frozen=True, repr=False)
class SummarizeResult(Batch[Summary]):
    """Summaries, in the order of the input texts."""

    results: list[Summary]
    model: ModelRef
    models: tuple[ModelRef, ...] = ()

    def __post_init__(self) -> None:
        self._fill_models()

    @property
    def summaries(self) -> list[Summary]:
        """Same as ``results``."""
        return self.results

    def _preview(self, item: Summary) -> str:
        return short(item.text, 20)

    @classmethod
    def from_pb(cls, msg: summarization_pb2.SummarizeResponse) -> SummarizeResult:
        return cls(
            results=[
                Summary(text=s.text, truncated=s.truncated, tokens=s.tokens) for s in msg.summaries
            ],
            model=ModelRef.from_pb(msg.model),
        )


@dataclass(frozen=True, repr=False)
class ReplyResult:
    """A chat reply: one text, so not a batch (no ``len()`` or indexing; ``str(reply)`` is
    its text)."""

    text: str
    #: Tokens generated.
    tokens: int
    finish_reason: FinishReason
    #: Oldest turns were dropped to fit the model's context.
    history_truncated: bool
    model: ModelRef

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        cut = ", history_truncated" if self.history_truncated else ""
        return (
            f"ReplyResult({short(self.text)}, {count(self.tokens, 'token')}, "
            f"{self.finish_reason.value}{cut}, model={self.model})"
        )

    @classmethod
    def from_pb(cls, msg: conversation_pb2.ReplyResponse) -> ReplyResult:
        return cls(
            text=msg.text,
            tokens=msg.tokens,
            finish_reason=FINISH_FROM_PB.get(msg.finish_reason, FinishReason.UNSPECIFIED),
            history_truncated=msg.history_truncated,
            model=ModelRef.from_pb(msg.model),
        )


@dataclass(frozen=True)
class ReplyChunk:
    """One streamed piece of a reply. ``model`` and ``history_truncated`` are set on the first
    chunk only and ``finish_reason`` on the last only."""

    text: str
    finish_reason: FinishReason | None
    model: ModelRef | None
    history_truncated: bool
    #: Tokens generated so far, counting this chunk's.
    tokens: int = 0

    @classmethod
    def from_pb(cls, msg: conversation_pb2.StreamReplyResponse) -> ReplyChunk:
        finish = msg.finish_reason
        return cls(
            text=msg.text,
            finish_reason=None
            if finish == conversation_pb2.FINISH_REASON_UNSPECIFIED
            else FINISH_FROM_PB.get(finish, FinishReason.UNSPECIFIED),
            model=ModelRef.from_pb(msg.model) if msg.HasField("model") else None,
            history_truncated=msg.history_truncated,
            tokens=msg.tokens,
        )
