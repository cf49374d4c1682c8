"""Step decoding for a causal LM (GPT-2 / DialoGPT) over one left-padded ``DynamicCache``.

State between steps: the cache (``[rows, heads, T, head_dim]`` per layer), the attention mask
``[rows, T]`` (0 on each row's left padding) and each row's next position id (its real tokens
so far), so a row's positions never count padding. A joining group is prefilled on its own,
left-padded among itself, and its cache concatenated to the running one after padding both to
the same width; a row that leaves is cut out and the columns that were padding for every
remaining row are dropped.

Chunked prefill: a prefill with a ``width`` below the prompts' remaining tokens runs that many
tokens of each and keeps the group's cache and mask apart as :attr:`pending`; the next prefill
continues from there (rows that join it get an all-padding past), with each row's positions
counted from the tokens it already has. The group joins the running rows once its prompts are
complete, exactly as a group prefilled whole does.

A prefill asks the model for the logits of the last position only (``logits_to_keep=1``, as
``generate`` does, where the model takes it): the LM head over every prompt position would be
a quarter of a DialoGPT prefill's work, for logits nobody reads.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from hubless_server.runtimes.generation.engine import (
    StepEngine,
    add_empty_rows,
    cache_kv,
    leading_padding,
    merge_kv,
    merge_rows,
    output_cache,
    pad_ids,
    prefill_chunks,
    select_kv,
    set_cache_kv,
)
from hubless_server.runtimes.generation.sequence import Sequence

if TYPE_CHECKING:
    from hubless_server.runtimes._common import Precision


class CausalEngine(StepEngine):
    """Rows of a decoder-only model; ``Sequence.prompt`` is the list of prompt token ids."""

    chunked = True

    def __init__(
        self,
        model: Any,
        precision: Precision,
        eos_ids: Iterable[int],
        pad_id: int,
        cache_arg: str = "cache",
    ) -> None:
        super().__init__(eos_ids, model)
        self._model = model
        self._precision = precision
        self._pad_id = pad_id
        self._cache_arg = cache_arg
        forward = inspect.signature(model.forward).parameters
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in forward else {}
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [rows, T]
        self._next: torch.Tensor | None = None  # [rows] next position id
        self._pending_cache: Any = None  # the pending rows' partial prompts
        self._pending_mask: torch.Tensor | None = None  # [pending rows, T]

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        **extra: Any,
    ) -> Any:
        with self._precision.context():
            return self._model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_arg: cache},
                **extra,
            )

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence], width: int | None = None) -> None:
        chunks, complete = prefill_chunks(self, seqs, width)
        device = self._precision.device
        ids, mask = pad_ids(chunks, self._pad_id, device, left=True)
        done = [s.prefilled for s in seqs]
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        cache: Any = None
        if self.pending:  # continue the partial prompts; new rows get an all-padding past
            assert self._pending_mask is not None
            new = len(seqs) - len(self.pending)
            cache = self._pending_cache
            set_cache_kv(cache, add_empty_rows(cache_kv(cache), new))
            past = self._pending_mask
            past = torch.cat([past, past.new_zeros((new, past.shape[1]))])
            start = torch.tensor(done, dtype=torch.long, device=device).unsqueeze(-1)
            positions = (start + mask.cumsum(dim=-1) - 1).clamp(min=0)
            mask = torch.cat([past, mask], dim=-1)
        output = self._forward(ids, mask, positions, cache, **self._last_logits)
        for seq, chunk in zip(seqs, chunks, strict=True):
            seq.prefilled += len(chunk)
        cache = output_cache(output)
        if not complete:
            self.pending, self._pending_cache, self._pending_mask = list(seqs), cache, mask
            return
        self.pending, self._pending_cache, self._pending_mask = [], None, None
        self.choose(output.logits[:, -1], seqs)
        if not self.rows:
            self._cache, self._mask, self._next = cache, mask, mask.sum(dim=-1)
        else:
            assert self._mask is not None and self._next is not None
            set_cache_kv(self._cache, merge_kv(cache_kv(self._cache), cache_kv(cache), left=True))
            self._mask = merge_rows(self._mask, mask, left=True, dim=-1)
            self._next = torch.cat([self._next, mask.sum(dim=-1)])
        self.rows.extend(seqs)

    @torch.inference_mode()
    def decode(self) -> None:
        if not self.rows:
            return
        assert self._mask is not None and self._next is not None
        device = self._precision.device
        last = torch.tensor([[s.tokens[-1]] for s in self.rows], dtype=torch.long, device=device)
        mask = torch.cat([self._mask, self._mask.new_ones((len(self.rows), 1))], dim=-1)
        output = self._forward(last, mask, self._next.unsqueeze(-1), self._cache)
        self._cache = output_cache(output)
        self._mask = mask
        self._next = self._next + 1
        self.choose(output.logits[:, -1], self.rows)

    @torch.inference_mode()
    def release(self, seqs: Iterable[Sequence]) -> None:
        gone = {id(s) for s in seqs}
        self._release_pending(gone)
        keep = [i for i, s in enumerate(self.rows) if id(s) not in gone]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache = self._mask = self._next = None
            return
        assert self._mask is not None and self._next is not None
        index = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        mask = self._mask[index]
        start = leading_padding(mask)
        set_cache_kv(self._cache, select_kv(cache_kv(self._cache), index, start))
        self._mask = mask[:, start:]
        self._next = self._next[index]

    def _release_pending(self, gone: set[int]) -> None:
        """Cut ``gone`` rows out of the pending (partly prefilled) group."""
        keep = [i for i, s in enumerate(self.pending) if id(s) not in gone]
        if len(keep) == len(self.pending):
            return
        self.pending = [self.pending[i] for i in keep]
        if not keep:
            self._pending_cache = self._pending_mask = None
            return
        assert self._pending_mask is not None
        index = torch.tensor(keep, dtype=torch.long, device=self._pending_mask.device)
        mask = self._pending_mask[index]
        start = leading_padding(mask)
        cache = self._pending_cache
        set_cache_kv(cache, select_kv(cache_kv(cache), index, start))
        self._pending_mask = mask[:, start:]
