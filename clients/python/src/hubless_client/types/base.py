"""What every task result shares: the model that answered, label scores, and the batch
behaviour (``len()``, indexing, iteration, a short repr, merging the answers of chunks)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar, overload

from hubless.v1 import common_pb2

__all__ = ["LabelScore", "ModelRef"]

log = logging.getLogger("hubless_client")

T = TypeVar("T")

#: Items shown in the repr of a batch result before ``...``.
REPR_ITEMS = 3


@dataclass(frozen=True)
class ModelRef:
    """Which installed model answered: catalog name, hub repo and exact commit.
    ``str(ref)`` is ``name@commit`` with the commit shortened to 7 characters."""

    name: str
    repo_id: str
    commit: str

    @classmethod
    def from_pb(cls, msg: common_pb2.ModelRef) -> ModelRef:
        return cls(name=msg.name, repo_id=msg.repo_id, commit=msg.commit)

    def __str__(self) -> str:
        return f"{self.name}@{self.commit[:7]}" if self.commit else self.name


@dataclass(frozen=True)
class LabelScore:
    """A label and its probability."""

    label: str
    score: float

    def __repr__(self) -> str:
        return f"LabelScore({self.label!r}, {self.score:.3f})"


def scores_from_pb(items: Iterable[common_pb2.LabelScore]) -> list[LabelScore]:
    return [LabelScore(label=s.label, score=s.score) for s in items]


def count(n: int, noun: str) -> str:
    """``1 text``, ``2 texts``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def short(text: str, width: int = 40) -> str:
    """``text`` cut to ``width`` characters with an ellipsis, as a repr."""
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def distinct_models(models: Iterable[ModelRef]) -> tuple[ModelRef, ...]:
    """``models`` without repeats, in order of first appearance."""
    return tuple(dict.fromkeys(models))


def models_text(model: ModelRef, models: Sequence[ModelRef]) -> str:
    """``model=name@commit``, plus how many other versions answered chunks of the call."""
    others = len(models) - 1
    more = f" (+{others} other version{'s' if others > 1 else ''})" if others > 0 else ""
    return f"model={model}{more}"


def note_mixed_models(kind: str, models: Sequence[ModelRef]) -> None:
    if len(models) > 1:
        log.warning(
            "%s: the chunks of one call were answered by %d model versions (%s), e.g. during a "
            "live update; result.model is the first, result.models has them all",
            kind,
            len(models),
            ", ".join(map(str, models)),
        )


class Batch(Generic[T]):
    """Per-text results of a batch call: ``len()``, iteration, indexing (``result[0]``,
    slices give lists), a short repr, and the models that answered.

    ``model`` is the model that answered (the first chunk's, for a call the client split);
    ``models`` every distinct model version that answered chunks of the call, in order: one
    unless a live model update happened while the chunks were answered.
    """

    model: ModelRef
    models: tuple[ModelRef, ...]

    def _items(self) -> Sequence[T]:
        return self.results  # type: ignore[attr-defined,no-any-return]

    def __len__(self) -> int:
        return len(self._items())

    def __iter__(self) -> Iterator[T]:
        return iter(self._items())

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...
    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        return self._items()[index]

    def _fill_models(self) -> None:
        """``models`` defaults to ``(model,)`` (called by ``__post_init__``)."""
        if not self.models:
            object.__setattr__(self, "models", (self.model,))

    def _preview(self, item: T) -> str:
        """How one item shows in the repr (its label)."""
        return str(getattr(item, "label", "?"))

    def _size(self) -> str:
        return count(len(self), "text")

    def __repr__(self) -> str:
        items = self._items()
        shown = [self._preview(item) for item in items[:REPR_ITEMS]]
        if len(items) > REPR_ITEMS:
            shown.append("...")
        preview = f": {', '.join(shown)}" if shown else ""
        models = models_text(self.model, self.models)
        return f"{type(self).__name__}({self._size()}{preview}, {models})"

    @classmethod
    def merge(cls, parts: Sequence[Self]) -> Self:
        """One result from the results of consecutive chunks of a call, in order."""
        if len(parts) == 1:
            return parts[0]
        models = distinct_models(m for part in parts for m in part.models)
        note_mixed_models(cls.__name__, models)
        results: list[Any] = [r for part in parts for r in part.results]  # type: ignore[attr-defined]
        return cls(results=results, model=parts[0].model, models=models)  # type: ignore[call-arg]
