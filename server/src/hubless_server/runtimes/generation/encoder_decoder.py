"""Step decoding for an encoder-decoder model (BART) with self- and cross-attention caches.

A joining group runs the encoder once (its texts right-padded among themselves) and the
decoder's first step from the start token, which fills the cross-attention cache; from then
on only the decoder runs, one token per step, reusing that cache. Running rows keep:

* the encoder output and mask, right-padded to the longest text of the batch (the decoder
  layers take the encoder output only for its shape once the cross cache is filled);
* the cross-attention cache, right-padded the same way;
* the self-attention cache, left-padded like :mod:`.causal`, with a decoder mask and each
  row's own position.

BART's decoder computes positions from the cache length alone (``arange + cache_length``),
which is wrong for a row that joined later than its companions. :func:`supports` checks for a
learned position table (``embed_positions`` with an ``offset``); :class:`RowPositions`
replaces it with a wrapper that looks up each row's own positions while a step of this engine
runs (thread-local, so a beam-search ``generate`` of the same model in another thread is
untouched) and defers to the original otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hubless_server.runtimes.generation.engine import (
    StepEngine,
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


class RowPositions(nn.Module):
    """A learned position table that, while :attr:`rows` is set in this thread, returns the
    embeddings of those per-row positions (``[rows, steps]``) instead of ``arange``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self._local = threading.local()

    @property
    def rows(self) -> torch.Tensor | None:
        return getattr(self._local, "rows", None)

    @rows.setter
    def rows(self, value: torch.Tensor | None) -> None:
        self._local.rows = value

    def forward(self, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        rows = self.rows
        if rows is None:
            return self.inner(input_ids, *args, **kwargs)
        return nn.functional.embedding(rows + self.inner.offset, self.inner.weight)


def supports(model: Any) -> bool:
    """Whether the decoder's positions can be given per row (a BART-style learned table)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    table = getattr(decoder, "embed_positions", None)
    if isinstance(table, RowPositions):
        return True
    return isinstance(table, nn.Embedding) and isinstance(getattr(table, "offset", None), int)


def _row_positions(model: Any) -> RowPositions:
    decoder = model.get_decoder()
    table = decoder.embed_positions
    if not isinstance(table, RowPositions):
        table = RowPositions(table)
        decoder.embed_positions = table
    return table


class EncoderDecoderEngine(StepEngine):
    """Rows of a seq2seq model; ``Sequence.prompt`` is the list of encoder input ids."""

    def __init__(
        self,
        model: Any,
        precision: Precision,
        eos_ids: Iterable[int],
        pad_id: int,
        start_id: int,
        cache_arg: str = "cache",
    ) -> None:
        from transformers.modeling_outputs import BaseModelOutput

        super().__init__(eos_ids, model)
        if not supports(model):
            raise TypeError(f"{type(model).__name__}: no per-row decoder positions")
        self._model = model
        self._precision = precision
        self._pad_id = pad_id
        self._start_id = start_id
        self._cache_arg = cache_arg
        self._encoder_output = BaseModelOutput
        self._positions = _row_positions(model)
        self._encoder = model.get_encoder()
        self._cache: Any = None  # EncoderDecoderCache
        self._enc: torch.Tensor | None = None  # [rows, L, hidden]
        self._enc_mask: torch.Tensor | None = None  # [rows, L]
        self._mask: torch.Tensor | None = None  # [rows, T] decoder self-attention
        self._next: torch.Tensor | None = None  # [rows] next decoder position

    def kv_cost(self, seqs: Iterable[Sequence]) -> int:
        """Rows x (longest text + longest reply): cross- and self-attention positions."""
        rows = list(seqs)
        if not rows:
            return 0
        longest_text = max(s.prompt_tokens for s in rows)
        longest_reply = max(s.params.max_new_tokens + 1 for s in rows)
        return len(rows) * (longest_text + longest_reply)

    def _step(
        self,
        ids: torch.Tensor,
        enc: torch.Tensor,
        enc_mask: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
    ) -> Any:
        self._positions.rows = positions
        try:
            with self._precision.context():
                return self._model(
                    encoder_outputs=self._encoder_output(last_hidden_state=enc),
                    attention_mask=enc_mask,
                    decoder_input_ids=ids,
                    decoder_attention_mask=mask,
                    use_cache=True,
                    **{self._cache_arg: cache},
                )
        finally:
            self._positions.rows = None

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence], width: int | None = None) -> None:
        """The encoder over every new text at once (right-padded), then the decoder's first
        step for all of them; texts are never split (``width`` must be None)."""
        chunks, _ = prefill_chunks(self, seqs, width)
        device = self._precision.device
        ids, enc_mask = pad_ids(chunks, self._pad_id, device, left=False)
        with self._precision.context():
            enc = self._encoder(input_ids=ids, attention_mask=enc_mask).last_hidden_state
        n = len(seqs)
        start = torch.full((n, 1), self._start_id, dtype=torch.long, device=device)
        mask = torch.ones((n, 1), dtype=torch.long, device=device)
        positions = torch.zeros((n, 1), dtype=torch.long, device=device)
        output = self._step(start, enc, enc_mask, mask, positions, None)
        for seq, chunk in zip(seqs, chunks, strict=True):
            seq.prefilled += len(chunk)
        self.choose(output.logits[:, -1], seqs)
        cache = output_cache(output)
        if not self.rows:
            self._cache, self._enc, self._enc_mask = cache, enc, enc_mask
            self._mask, self._next = mask, positions[:, 0] + 1
        else:
            assert self._enc is not None and self._enc_mask is not None
            assert self._mask is not None and self._next is not None
            own, cross = self._cache.self_attention_cache, self._cache.cross_attention_cache
            set_cache_kv(
                own, merge_kv(cache_kv(own), cache_kv(cache.self_attention_cache), left=True)
            )
            set_cache_kv(
                cross, merge_kv(cache_kv(cross), cache_kv(cache.cross_attention_cache), left=False)
            )
            self._enc = merge_rows(self._enc, enc, left=False, dim=1)
            self._enc_mask = merge_rows(self._enc_mask, enc_mask, left=False, dim=-1)
            self._mask = merge_rows(self._mask, mask, left=True, dim=-1)
            self._next = torch.cat([self._next, positions[:, 0] + 1])
        self.rows.extend(seqs)

    @torch.inference_mode()
    def decode(self) -> None:
        if not self.rows:
            return
        assert self._enc is not None and self._enc_mask is not None
        assert self._mask is not None and self._next is not None
        device = self._precision.device
        last = torch.tensor([[s.tokens[-1]] for s in self.rows], dtype=torch.long, device=device)
        mask = torch.cat([self._mask, self._mask.new_ones((len(self.rows), 1))], dim=-1)
        output = self._step(
            last, self._enc, self._enc_mask, mask, self._next.unsqueeze(-1), self._cache
        )
        self._cache = output_cache(output)
        self._mask = mask
        self._next = self._next + 1
        self.choose(output.logits[:, -1], self.rows)

    @torch.inference_mode()
    def release(self, seqs: Iterable[Sequence]) -> None:
        gone = {id(s) for s in seqs}
        keep = [i for i, s in enumerate(self.rows) if id(s) not in gone]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache = self._enc = self._enc_mask = self._mask = self._next = None
            return
        assert self._enc is not None and self._enc_mask is not None
        assert self._mask is not None and self._next is not None
        index = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        mask = self._mask[index]
        start = leading_padding(mask)
        enc_mask = self._enc_mask[index]
        stop = int(enc_mask.sum(dim=-1).max())  # texts are right-padded
        own, cross = self._cache.self_attention_cache, self._cache.cross_attention_cache
        set_cache_kv(own, select_kv(cache_kv(own), index, start))
        set_cache_kv(cross, select_kv(cache_kv(cross), index, 0, stop))
        self._enc = self._enc[index][:, :stop]
        self._enc_mask = enc_mask[:, :stop]
        self._mask = mask[:, start:]
        self._next = self._next[index]
