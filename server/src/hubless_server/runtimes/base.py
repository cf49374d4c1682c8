"""The runtime interface: one class per kind of model, everything else is generic.

A runtime wraps one installed model. The server core (registry, batching queue, gRPC
services) only talks to this interface:

* :meth:`ModelRuntime.load` reads the model from its snapshot folder, offline.
* :meth:`ModelRuntime.prepare` turns one request item into a :class:`Prepared` (tokenised
  once, in the request's thread) so the batching queue can budget by real token counts and
  reject over-long inputs before queueing.
* :meth:`ModelRuntime.predict` runs a batch of prepared items (all with the same
  ``batch_key``) and returns one output per item, in order.
* :meth:`ModelRuntime.stream` (generation runtimes only) yields text pieces as they are
  generated and stops early when ``cancelled`` is set.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from hubless_server.core.errors import InputTooLongError as InputTooLongError
from hubless_server.core.errors import InvalidItemError as InvalidItemError

if TYPE_CHECKING:
    from hubless_server.runtimes.generation.engine import StepEngine

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class OnnxArtifact:
    """An ONNX export of the model (``hubless-optimize``): where it is on the volume (``path``,
    inside ``models_dir``), and the size and sha256 the manifest records for it (checked when
    it is loaded, with the file refused unless it is a regular file inside ``models_dir``)."""

    path: Path
    size: int
    sha256: str
    models_dir: Path


@dataclass(frozen=True)
class RuntimeOptions:
    """How to place and run a model. ``dtype`` is already resolved (no "auto").

    ``max_chunk_tokens`` is the padded-token budget of one forward pass: a batch above it runs
    in length-sorted chunks. The server passes ``--max-chunk-tokens``; 0 (the default, for
    tools and tests that build a runtime directly) runs every batch in one pass.

    ``backend`` is resolved too: ``"torch"``, or ``"onnx"`` (encoder runtimes only, CPU) with
    the model's ``onnx`` artifact, run with ``threads`` intra-op threads (0: ONNX Runtime's
    default). A runtime that cannot use the artifact serves with PyTorch and says why
    (``RuntimeInfo.backend_note``).
    """

    device: str = "cpu"  # "cpu" or "cuda[:N]"
    dtype: str = "float32"  # "float32", "bfloat16" or "float16"
    max_chunk_tokens: int = 0
    backend: str = "torch"  # "torch" or "onnx"
    onnx: OnnxArtifact | None = None
    threads: int = 0


@dataclass
class Prepared(Generic[In]):
    """One request item after tokenisation, ready for the batching queue.

    ``num_tokens`` is the longest row's length and ``rows`` the number of model rows the item
    becomes (1, or K hypothesis pairs for zero-shot), so a batch costs about
    ``max(num_tokens) * sum(rows)`` padded tokens. Items batch together only when their
    ``batch_key`` is equal (e.g. the same generation settings).
    """

    item: In
    num_tokens: int
    rows: int = 1
    truncated: bool = False
    batch_key: Hashable = None
    features: Any = None  # runtime-private: token ids, pairs, ...


# ---- request items and outputs per task -------------------------------------------------


@dataclass(frozen=True)
class TextItem:
    """Emotion, sentiment and embedding input."""

    text: str
    truncate: bool = True
    normalize: bool = True  # embeddings only


@dataclass(frozen=True)
class ZeroShotItem:
    text: str
    labels: tuple[str, ...]
    multi_label: bool = False
    template: str = "This example is {}."
    truncate: bool = True


@dataclass(frozen=True)
class SummarizeItem:
    text: str
    min_length: int
    max_length: int
    num_beams: int = 1
    truncate: bool = True


@dataclass(frozen=True)
class ChatItem:
    turns: tuple[str, ...]
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class EmbeddingOutput:
    vector: Sequence[float]  # numpy array in practice
    tokens: int
    truncated: bool


@dataclass
class ClassificationOutput:
    """Label probabilities, highest first."""

    scores: list[tuple[str, float]]
    truncated: bool


@dataclass
class GenerationOutput:
    text: str
    tokens: int
    finished: bool  # True: stopped at end-of-sequence; False: hit the length limit
    truncated: bool  # the input (or chat history) was cut to fit


@dataclass
class StreamPiece:
    """A piece of generated text; ``tokens`` counts the tokens generated so far, this piece's
    included; the last piece has ``final`` set and the totals."""

    text: str
    final: bool = False
    tokens: int = 0
    finished: bool = False
    truncated: bool = False


@dataclass
class RuntimeInfo:
    """What a loaded model reports (``ModelsService`` shows it in ``ModelInfo``).

    ``labels`` are a classifier's output labels in the model's order (empty otherwise);
    ``embedding_dimension`` the length of an embedding model's vectors (0 otherwise);
    ``backend`` what runs the forward pass (``torch`` or ``onnx``) and ``backend_note`` why it
    is PyTorch when ONNX was asked for (an unusable artifact), for clients: no paths;
    ``precision`` how the weights are stored and computed (e.g. bf16 weights and the parity
    figure that allowed them).
    """

    device: str
    dtype: str
    max_input_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    embedding_dimension: int = 0
    backend: str = "torch"
    backend_note: str = ""
    precision: str = ""  # Precision.describe(): weights, autocast and why (PyTorch only)


class ModelRuntime(ABC, Generic[In, Out]):
    """Base class of every runtime. Subclasses set ``kind`` (their key in
    ``hubless_server.runtimes.KINDS``, named by the task table) and implement the methods."""

    kind: ClassVar[str]

    def __init__(self, name: str, path: Path, options: RuntimeOptions) -> None:
        self.name = name
        self.path = Path(path)
        self.options = options

    @abstractmethod
    def load(self) -> None:
        """Load weights and tokenizer from ``self.path`` with ``local_files_only=True``."""

    @abstractmethod
    def info(self) -> RuntimeInfo:
        """Device, dtype and input limit of the loaded model."""

    @abstractmethod
    def prepare(self, item: In) -> Prepared[In]:
        """Tokenise one item. Raises :class:`InputTooLongError` when it is too long and
        ``item.truncate`` is false, ``ValueError`` for other bad input."""

    @abstractmethod
    def predict(self, batch: list[Prepared[In]]) -> list[Out]:
        """Run a batch (same ``batch_key``); one output per item, same order."""

    def stream(self, prepared: Prepared[In], cancelled: threading.Event) -> Iterator[StreamPiece]:
        """Yield generated text as it is produced (generation runtimes override this)."""
        raise TypeError(f"{type(self).__name__} does not stream")

    def greedy_tokens(self, text: str, max_new_tokens: int) -> list[int]:
        """The ids of the first ``max_new_tokens`` tokens greedy decoding generates for
        ``text`` (a document to summarise, a user turn), its end-of-sequence token included
        when it comes first: what golden outputs record of a generation model
        (:mod:`hubless_server.runtimes.probes`); generation runtimes override this."""
        raise TypeError(f"{type(self).__name__} does not generate")

    def step_engine(self) -> StepEngine | None:
        """The token-level step engine of a generation runtime that supports continuous
        batching (its batcher then runs the items the engine ``accepts`` on the step loop);
        None, the default: every item goes through the batch queue (and ``stream``)."""
        return None
