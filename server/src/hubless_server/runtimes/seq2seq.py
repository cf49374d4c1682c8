"""Summarization with a seq2seq model (bart-large): batched ``generate``.

``min_length``/``max_length`` bound the tokens the decoder generates after its start token, so
``GenerationOutput.tokens`` always lies within them; the count includes the forced BOS and the
EOS tokens BART emits. ``max_length`` is capped at what the decoder's position table allows
(1023 for bart-large).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from ._common import (
    LockedTokenizer,
    Precision,
    encode_text,
    input_limit,
    load_pretrained,
    load_tokenizer,
    max_positions,
    pad_rows,
    pad_token_id,
    resolve_precision,
)
from .base import (
    GenerationOutput,
    InvalidItemError,
    ModelRuntime,
    Prepared,
    RuntimeInfo,
    RuntimeOptions,
    SummarizeItem,
)

log = logging.getLogger(__name__)

MAX_BEAMS = 16


class Seq2SeqRuntime(ModelRuntime[SummarizeItem, GenerationOutput]):
    """``AutoModelForSeq2SeqLM`` summarizer; items batch by (min_length, max_length, beams)."""

    kind = "seq2seq"

    def __init__(self, name: str, path: Path, options: RuntimeOptions) -> None:
        super().__init__(name, path, options)
        self._model: Any = None
        self._tok: LockedTokenizer | None = None
        self._precision: Precision | None = None
        self._limit = 0
        self._max_new = 0
        self._pad_id = 0
        self._eos_ids: set[int] = set()
        self._forced_eos = False

    def load(self) -> None:
        from transformers import AutoConfig, AutoModelForSeq2SeqLM

        self._precision = resolve_precision(self.options)
        config = AutoConfig.from_pretrained(str(self.path), local_files_only=True)
        tokenizer = load_tokenizer(self.path)
        self._tok = LockedTokenizer(tokenizer)
        self._limit = input_limit(tokenizer, config)
        self._max_new = (max_positions(config) or self._limit) - 1
        self._pad_id = pad_token_id(tokenizer, config)
        self._model = load_pretrained(AutoModelForSeq2SeqLM, self.path, self._precision)
        gen_config = self._model.generation_config
        eos = (
            gen_config.eos_token_id if gen_config.eos_token_id is not None else config.eos_token_id
        )
        self._eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        if not self._eos_ids:
            raise ValueError(f"{self.path}: the model has no eos_token_id")
        self._forced_eos = getattr(gen_config, "forced_eos_token_id", None) is not None
        log.info(
            "loaded seq2seq model %s: max_input=%d max_new=%d %s",
            self.name,
            self._limit,
            self._max_new,
            self._precision.extra(),
        )

    def info(self) -> RuntimeInfo:
        precision = self._loaded_precision()
        extra = precision.extra() | {"max_new_tokens": self._max_new}
        return RuntimeInfo(str(precision.device), precision.requested, self._limit, extra)

    def prepare(self, item: SummarizeItem) -> Prepared[SummarizeItem]:
        if self._tok is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        if item.max_length < 1:
            raise InvalidItemError("max_length", "max_length must be at least 1")
        # The decoder cannot go past its position table: cap max_length there.
        max_length = min(item.max_length, self._max_new)
        if not 0 <= item.min_length <= max_length:
            raise InvalidItemError(
                "min_length",
                f"min_length must be between 0 and max_length (at most {self._max_new} "
                "for this model)",
            )
        if not 1 <= item.num_beams <= MAX_BEAMS:
            raise InvalidItemError("num_beams", f"num_beams must be between 1 and {MAX_BEAMS}")
        features, length, truncated = encode_text(self._tok, item.text, self._limit, item.truncate)
        return Prepared(
            item=item,
            num_tokens=length,
            truncated=truncated,
            batch_key=(item.min_length, max_length, item.num_beams),
            features=features,
        )

    def predict(self, batch: list[Prepared[SummarizeItem]]) -> list[GenerationOutput]:
        """One ``generate`` call for the batch (all items share the batch key)."""
        if not batch:
            return []
        if any(p.batch_key != batch[0].batch_key for p in batch):
            raise ValueError("a batch must share min_length, max_length and num_beams")
        min_length, max_length, num_beams = batch[0].batch_key
        precision = self._loaded_precision()
        inputs = pad_rows([p.features for p in batch], self._pad_id, precision.device)
        # generate's max_length counts the decoder start token, hence the +1; its min_length
        # holds EOS back until the sequence (start token included) has that many tokens, so
        # the EOS itself becomes generated token number min_length.
        gen_config = copy.deepcopy(self._model.generation_config)
        gen_config.update(
            min_length=min_length,
            max_length=max_length + 1,
            num_beams=num_beams,
            num_return_sequences=1,
            do_sample=False,
        )
        with torch.inference_mode(), precision.context():
            sequences = self._model.generate(**inputs, generation_config=gen_config)
        out = []
        for prepared, row in zip(batch, sequences[:, 1:].cpu().tolist(), strict=True):
            tokens, finished = self._measure(row, max_length)
            text = self._loaded_tok().decode(row[:tokens]).strip()
            out.append(GenerationOutput(text, tokens, finished, prepared.truncated))
        return out

    def _measure(self, generated: list[int], max_new: int) -> tuple[int, bool]:
        """(tokens generated, EOS reached) for one row after the decoder start token."""
        for i, token in enumerate(generated):
            if token in self._eos_ids:
                tokens = i + 1
                # BART forces EOS as the last allowed token: that is the length limit, not EOS.
                return tokens, not (self._forced_eos and tokens >= max_new)
        return len(generated), False

    def _loaded_precision(self) -> Precision:
        if self._precision is None or self._model is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self._precision

    def _loaded_tok(self) -> LockedTokenizer:
        if self._tok is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self._tok
