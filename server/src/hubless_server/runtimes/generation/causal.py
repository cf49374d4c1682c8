"""Step decoding for a causal LM (GPT-2 / DialoGPT) over one left-padded ``DynamicCache``.

State between steps: the cache (``[rows, heads, T, head_dim]`` per layer), the attention mask
``[rows, T]`` (0 on each row's left padding) and each row's next position id (its real tokens
so far), so a row's positions never count padding. A joining group is prefilled on its own,
left-padded among itself, and its cache concatenated to the running one after padding both to
the same width; a row that leaves is cut out and the columns that were padding for every
remaining row are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from hubless_server.runtimes.generation.engine import (
    StepEngine,
    cache_kv,
    leading_padding,
    merge_kv,
    merge_rows,
    output_cache,
    pad_ids,
    select_kv,
    set_cache_kv,
)
from hubless_server.runtimes.generation.sequence import Sequence

if TYPE_CHECKING:
    from hubless_server.runtimes._common import Precision


class CausalEngine(StepEngine):
    """Rows of a decoder-only model; ``Sequence.prompt`` is the list of prompt token ids."""

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
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [rows, T]
        self._next: torch.Tensor | None = None  # [rows] next position id

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any):
        with self._precision.context():
            return self._model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_arg: cache},
            )

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence]) -> None:
        ids, mask = pad_ids(
            [s.prompt for s in seqs], self._pad_id, self._precision.device, left=True
        )
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        output = self._forward(ids, mask, positions, None)
        self.choose(output.logits[:, -1], seqs)
        cache = output_cache(output)
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
