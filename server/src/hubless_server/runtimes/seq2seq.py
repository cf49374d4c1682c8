"""Summarization with a seq2seq model (bart-large-cnn, bart-large).

Greedy summaries (``num_beams`` 1, the default) go to the generation scheduler's step loop
through :class:`SummaryEngine` (encoder once per text, decoder steps shared by every running
summary); beam search stays on batched ``generate`` through the batch queue: a beam request
is ``num_beams`` rows that reorder their cache every step, which the step loop does not do.
The step loop applies the logits rules of the model's generation config that greedy
``generate`` would (``no_repeat_ngram_size``, ``min_length``, ``forced_bos_token_id``,
``forced_eos_token_id``), so both paths give the same summary token for token; a model whose
config asks for any other rule (:data:`STEPWISE_DEFAULTS`) keeps every request on
``generate``.

``min_length``/``max_length`` bound the tokens the decoder generates after its start token, so
``GenerationOutput.tokens`` always lies within them; the count includes the forced BOS and the
EOS tokens BART emits. ``max_length`` is capped at what the decoder's position table allows
(1023 for bart-large).
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hubless_server.runtimes.generation import encoder_decoder
from hubless_server.runtimes.generation.encoder_decoder import EncoderDecoderEngine
from hubless_server.runtimes.generation.sequence import SamplingParams, Sequence

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

STEPWISE_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "sequence_bias": (None,),
    "min_new_tokens": (None, 0),
    "max_new_tokens": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_decoder_ids": (None,),
    "exponential_decay_length_penalty": (None,),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
}
"""Generation-config fields whose other values add greedy logits rules the step loop lacks."""


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
        self._stepwise = ""  # why summaries cannot use the step loop ("" = they can)
        self._cache_arg = "cache"

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
        self._stepwise = _stepwise_blocker(self._model, gen_config)
        params = inspect.signature(self._model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
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
        if self._stepwise:
            extra["step_loop"] = f"off: {self._stepwise}"
        return RuntimeInfo(
            str(precision.device),
            precision.requested,
            self._limit,
            extra,
            precision=precision.describe(),
        )

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
        max_length = batch[0].batch_key[1]
        out = []
        for prepared, row in zip(batch, self._generate(batch), strict=True):
            tokens, finished = self._measure(row, max_length)
            text = self._loaded_tok().decode(row[:tokens]).strip()
            out.append(GenerationOutput(text, tokens, finished, prepared.truncated))
        return out

    def greedy_tokens(self, text: str, max_new_tokens: int) -> list[int]:
        """The first ``max_new_tokens`` greedy summary tokens of ``text`` (``min_length``
        0; the EOS included when it comes first), through :meth:`predict`'s ``generate``."""
        prepared = self.prepare(SummarizeItem(text, min_length=0, max_length=max_new_tokens))
        (row,) = self._generate([prepared])
        tokens, _ = self._measure(row, prepared.batch_key[1])
        return row[:tokens]

    def _generate(self, batch: list[Prepared[SummarizeItem]]) -> list[list[int]]:
        """The token ids ``generate`` gives each item of the batch, after the decoder start."""
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
        rows: list[list[int]] = sequences[:, 1:].cpu().tolist()
        return rows

    def step_engine(self) -> SummaryEngine | None:
        """Greedy summaries on the generation scheduler's step loop (None when the model's
        generation config or architecture does not allow it; see the module docstring)."""
        if self._stepwise:
            log.info("summaries of %s stay on generate: %s", self.name, self._stepwise)
            return None
        return SummaryEngine(self)

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


def _stepwise_blocker(model: Any, gen_config: Any) -> str:
    """Why greedy summaries of this model cannot run on the step loop ("" when they can)."""
    if not encoder_decoder.supports(model):
        return "the decoder has no per-row position table"
    for name, defaults in STEPWISE_DEFAULTS.items():
        if getattr(gen_config, name, None) not in defaults:
            return f"generation config sets {name}"
    if getattr(gen_config, "decoder_start_token_id", None) is None and (
        getattr(model.config, "decoder_start_token_id", None) is None
    ):
        return "no decoder_start_token_id"
    return ""


@dataclass
class _Rules:
    """The greedy ``generate`` logits rules of one summary, with ``generate``'s lengths: the
    decoder ids so far count the start token."""

    min_length: int  # EOS held back while fewer decoder ids than this
    max_length: int  # decoder ids at most (the start token and max_length new tokens)
    ngram: int  # no_repeat_ngram_size (0: off)
    forced_bos: int | None
    forced_eos: int | None
    ids: list[int]
    seen: dict[tuple[int, ...], set[int]] = field(default_factory=dict)

    def push(self, token: int) -> None:
        self.ids.append(token)
        n = self.ngram
        if n and len(self.ids) >= n:
            self.seen.setdefault(tuple(self.ids[-n:-1]), set()).add(token)


class SummaryEngine(EncoderDecoderEngine):
    """Greedy summaries on the step loop (``num_beams`` 1 only)."""

    def __init__(self, runtime: Seq2SeqRuntime) -> None:
        precision = runtime._loaded_precision()
        model = runtime._model
        gen = model.generation_config
        start = gen.decoder_start_token_id
        if start is None:
            start = model.config.decoder_start_token_id
        super().__init__(
            model, precision, runtime._eos_ids, runtime._pad_id, int(start), runtime._cache_arg
        )
        self._tok = runtime._loaded_tok()
        self._runtime = runtime
        self._ngram = int(gen.no_repeat_ngram_size or 0)
        self._forced_bos = gen.forced_bos_token_id
        self._forced_eos = gen.forced_eos_token_id
        self._start = int(start)
        self._eos_list = sorted(runtime._eos_ids)

    def accepts(self, prepared: Prepared[SummarizeItem]) -> bool:
        return prepared.batch_key[2] == 1

    def sequence(self, prepared: Prepared[SummarizeItem]) -> Sequence:
        min_length, max_length, _ = prepared.batch_key
        rules = _Rules(
            min_length,
            max_length + 1,
            self._ngram,
            self._forced_bos,
            self._forced_eos,
            [self._start],
        )
        ids = prepared.features["input_ids"]
        return Sequence(ids, len(ids), SamplingParams(max_length), rules=rules)

    def shape(self, seq: Sequence, logits: torch.Tensor) -> None:
        rules: _Rules = seq.rules
        length = len(rules.ids)
        if rules.ngram and length + 1 >= rules.ngram:
            banned = rules.seen.get(tuple(rules.ids[length + 1 - rules.ngram :]))
            if banned:
                logits[list(banned)] = -math.inf
        if length < rules.min_length:
            logits[self._eos_list] = -math.inf
        forced = None
        if length == 1 and rules.forced_bos is not None:
            forced = rules.forced_bos
        if length == rules.max_length - 1 and rules.forced_eos is not None:
            forced = rules.forced_eos
        if forced is not None:
            logits.fill_(-math.inf)
            logits[forced] = 0.0

    def choose(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        super().choose(logits, seqs)
        for seq in seqs:
            seq.rules.push(seq.tokens[-1])

    def output(self, prepared: Prepared[SummarizeItem], seq: Sequence) -> GenerationOutput:
        tokens, finished = self._runtime._measure(seq.tokens, seq.params.max_new_tokens)
        text = self._tok.decode(seq.tokens[:tokens]).strip()
        return GenerationOutput(text, tokens, finished, prepared.truncated)

    def text(self, seq: Sequence) -> str:
        return self._tok.decode(seq.tokens)
