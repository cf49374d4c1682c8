"""The model side of the generation scheduler: a batch of running rows over one KV cache.

A :class:`StepEngine` holds the rows being generated and their batched KV cache. The
scheduler calls, one at a time and always from one thread at a time:

* :meth:`StepEngine.prefill` with new rows: their prompts run in one padded forward pass, each
  gets its first token and joins the batch (its cache merged into the running one). An engine
  that is :attr:`~StepEngine.chunked` (causal LMs) also takes a ``width``: then only the next
  ``width`` tokens of each prompt run, and rows whose prompt is not complete stay
  :attr:`~StepEngine.pending` (their partial cache kept apart from the running rows') until a
  later prefill continues them, so a long prompt is prefilled in pieces between decode steps;
* :meth:`StepEngine.decode`: one token for every running row, in one forward pass;
* :meth:`StepEngine.release` with rows that leave (finished, cancelled, expired): they are cut
  out of the cache at once, so their KV memory is freed.

Rows of different lengths share the cache left-padded: padded positions are masked and every
row has its own position ids, so each row decodes as it would alone. Engines choose tokens
through :meth:`StepEngine.choose`: greedy rows by one batched argmax, sampled rows with their
own generator, after the engine's per-row logits rules (:meth:`StepEngine.shape`).

The item side (how a request item becomes a :class:`Sequence` and a finished sequence an
answer) is the runtime's: it subclasses an engine and implements :meth:`accepts`,
:meth:`sequence`, :meth:`output` and :meth:`text`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING, Any

import torch

from hubless_server.runtimes.generation.sequence import Sequence, pick

if TYPE_CHECKING:  # the runtimes import this package: types only here
    from hubless_server.runtimes.base import GenerationOutput, Prepared

KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer (keys, values), each ``[rows, heads, positions, head_dim]``."""


class StepEngine(ABC):
    """Running rows and their cache; subclasses implement the model and the item glue."""

    chunked = False
    """Whether a prompt can be prefilled in pieces (``prefill``'s ``width``): a causal LM's can,
    an encoder's cannot (it attends to the whole text at once)."""

    def __init__(self, eos_ids: Iterable[int], model: Any = None) -> None:
        self.eos_ids = frozenset(eos_ids)
        self.rows: list[Sequence] = []
        self.pending: list[Sequence] = []  # prompts prefilled in part (chunked engines)
        self.model = model  # the torch model, for yield_between_blocks (None: no blocks)

    # ---- item glue (the runtime's) -------------------------------------------------------

    def accepts(self, prepared: Prepared[Any]) -> bool:
        """Whether this item is generated step by step (others stay on the batch queue)."""
        return True

    @abstractmethod
    def sequence(self, prepared: Prepared[Any]) -> Sequence:
        """The scheduler's view of a prepared item."""

    @abstractmethod
    def output(self, prepared: Prepared[Any], seq: Sequence) -> GenerationOutput:
        """The answer of a finished sequence."""

    @abstractmethod
    def text(self, seq: Sequence) -> str:
        """The reply so far, decoded (streams send what is new)."""

    # ---- model ---------------------------------------------------------------------------

    @abstractmethod
    def prefill(self, seqs: list[Sequence], width: int | None = None) -> None:
        """Run the prompts of ``seqs`` in one forward pass, give each its first token and add
        them to the batch. With ``width`` (chunked engines only) run the next ``width`` tokens
        of each prompt: see :func:`prefill_chunks` for what a call may ask."""

    @abstractmethod
    def decode(self) -> None:
        """One more token for every running row."""

    @abstractmethod
    def release(self, seqs: Iterable[Sequence]) -> None:
        """Remove ``seqs`` from the batch and free their cache."""

    def kv_cost(self, seqs: Iterable[Sequence]) -> int:
        """Padded KV positions ``seqs`` may hold together: rows x the longest row's prompt plus
        new tokens (the cache is one left-padded tensor per layer)."""
        rows = list(seqs)
        return len(rows) * max((s.kv_positions() for s in rows), default=0)

    # ---- token choice --------------------------------------------------------------------

    def shape(self, seq: Sequence, logits: torch.Tensor) -> None:
        """Per-row logits rules applied in place before the choice (default: none)."""
        return None

    def choose(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        """Append each row's next token (``logits``: ``[rows, vocab]``)."""
        logits = logits.float()
        for i, seq in enumerate(seqs):
            self.shape(seq, logits[i])
        greedy = logits.argmax(dim=-1).tolist()
        for i, seq in enumerate(seqs):
            params = seq.params
            token = greedy[i]
            if not params.greedy:
                token = pick(logits[i], params.temperature, params.top_p, seq.generator)
            seq.tokens.append(token)
            if token in self.eos_ids:
                seq.finished = True


def prefill_chunks(
    engine: StepEngine, seqs: list[Sequence], width: int | None
) -> tuple[list[list[int]], bool]:
    """The prompt tokens each row of ``seqs`` runs in this prefill, and whether every prompt
    is then complete.

    ``seqs`` must start with the engine's pending rows, in order (a prefill continues them);
    the rows after them are new. A prefill completes every row or none: ``width`` is either
    None or at least every row's remaining tokens (all complete), or below every one (all stay
    pending), so the rows of one cache always move together.
    """
    pending = engine.pending
    if len(seqs) < len(pending) or any(a is not b for a, b in zip(seqs, pending, strict=False)):
        raise ValueError("a prefill must continue every pending row first, in order")
    if width is None:
        return [list(s.prompt[s.prefilled :]) for s in seqs], True
    if not engine.chunked:
        raise ValueError(f"{type(engine).__name__} prefills whole prompts only")
    if width < 1:
        raise ValueError(f"a prefill width must be at least 1, not {width}")
    complete = [s.unprefilled <= width for s in seqs]
    if any(complete) and not all(complete):
        raise ValueError("a prefill must complete every row or none")
    return [list(s.prompt[s.prefilled : s.prefilled + width]) for s in seqs], all(complete)


# ---- sharing the inference gate ------------------------------------------------------------


def transformer_blocks(model: Any) -> list[Any]:
    """The repeated blocks of a model: the members of every ``ModuleList`` of two or more
    modules of one class (GPT-2's ``h``, BART's encoder and decoder ``layers``)."""
    from torch import nn

    blocks: list[Any] = []
    for module in model.modules():
        repeated = isinstance(module, nn.ModuleList) and len(module) > 1
        if repeated and len({type(m) for m in module}) == 1:
            blocks.extend(module)
    return blocks


def yield_between_blocks(model: Any, gate: Any) -> int:
    """Call ``gate.yield_point()`` before every transformer block of ``model`` (once per
    model and gate), so a forward pass that holds the inference gate lets a waiting request
    of another model through between blocks. Returns the number of blocks hooked."""
    if model is None:
        return 0
    hooked = getattr(model, "_hubless_yield_gates", None)
    if hooked is None:
        hooked = set()
        model._hubless_yield_gates = hooked
    if id(gate) in hooked:
        return 0
    hooked.add(id(gate))
    blocks = transformer_blocks(model)
    for block in blocks:
        block.register_forward_pre_hook(lambda _module, _args: gate.yield_point())
    return len(blocks)


# ---- batched caches -----------------------------------------------------------------------


def pad_ids(
    rows: Seq[Seq[int]], pad_id: int, device: torch.device, *, left: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows padded into ``(ids, attention_mask)``, ``[rows, longest]`` each."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


def pad_positions(t: torch.Tensor, width: int, *, left: bool, dim: int = -2) -> torch.Tensor:
    """``t`` padded with zeros along ``dim`` to ``width`` (on the left or the right)."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    zeros = t.new_zeros(shape)
    return torch.cat([zeros, t] if left else [t, zeros], dim=dim)


def merge_rows(a: torch.Tensor, b: torch.Tensor, *, left: bool, dim: int = -2) -> torch.Tensor:
    """Rows of ``a`` then rows of ``b``, the shorter padded along ``dim`` to the longer."""
    width = max(a.shape[dim], b.shape[dim])
    return torch.cat(
        [pad_positions(a, width, left=left, dim=dim), pad_positions(b, width, left=left, dim=dim)]
    )


def add_empty_rows(kv: KV, rows: int) -> KV:
    """``kv`` with ``rows`` more rows of zeros (all padding: the mask hides them)."""
    if not rows:
        return kv
    return [
        (
            torch.cat([k, k.new_zeros((rows, *k.shape[1:]))]),
            torch.cat([v, v.new_zeros((rows, *v.shape[1:]))]),
        )
        for k, v in kv
    ]


def merge_kv(a: KV, b: KV, *, left: bool) -> KV:
    return [
        (merge_rows(ka, kb, left=left), merge_rows(va, vb, left=left))
        for (ka, va), (kb, vb) in zip(a, b, strict=True)
    ]


def select_kv(kv: KV, keep: torch.Tensor, start: int = 0, stop: int | None = None) -> KV:
    """Rows ``keep`` of every layer, positions ``start:stop``."""
    return [(k[keep][..., start:stop, :], v[keep][..., start:stop, :]) for k, v in kv]


def cache_kv(cache: Any) -> KV:
    """The (keys, values) of every layer of a ``DynamicCache``."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def set_cache_kv(cache: Any, kv: KV) -> None:
    """Replace the tensors of every layer of a ``DynamicCache`` (rows joined or left)."""
    for layer, (keys, values) in zip(cache.layers, kv, strict=True):
        layer.keys, layer.values = keys, values


def output_cache(output: Any) -> Any:
    """The KV cache a forward pass returned (transformers >= 5.2x: ``cache``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def leading_padding(mask: torch.Tensor) -> int:
    """Columns at the left of ``mask`` that are padding for every row."""
    if mask.shape[0] == 0:
        return 0
    return int(mask.argmax(dim=-1).min())
