"""DialoGPT-style chat with a causal LM.

The history is the turns, each followed by the EOS token; the reply ends at EOS. When the
history does not fit in ``context - max_new_tokens`` the oldest turns are dropped. Decoding is
our own loop over the KV cache, shared by predict() and stream(): greedy at temperature 0,
otherwise temperature + top-p sampling from a per-call ``torch.Generator`` (``seed`` makes it
reproducible, and concurrent calls never share random state). stream() checks ``cancelled``
before every token.

With continuous batching (the server's default) requests do not come through predict() or
stream(): :meth:`ChatRuntime.step_engine` hands the generation scheduler a :class:`ChatEngine`,
which decodes every running request together, one token step at a time
(:mod:`hubless_server.runtimes.generation`); the token rule (:func:`pick`) and the stream pieces
(:class:`TextDeltas`) are the same.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hubless_server.runtimes.generation.causal import CausalEngine
from hubless_server.runtimes.generation.sequence import SamplingParams, Sequence, TextDeltas, pick

from ._common import (
    LockedTokenizer,
    Precision,
    input_limit,
    load_pretrained,
    load_tokenizer,
    pad_rows,
    resolve_precision,
)
from .base import (
    ChatItem,
    GenerationOutput,
    InputTooLongError,
    InvalidItemError,
    ModelRuntime,
    Prepared,
    RuntimeInfo,
    RuntimeOptions,
    StreamPiece,
)

log = logging.getLogger(__name__)

_pick = pick  # the token rule, under its old name
__all__ = ["ChatEngine", "ChatRuntime", "TextDeltas"]


@dataclass
class _Step:
    """Progress of one reply after each generated token."""

    ids: list[int]  # generated so far, EOS excluded
    tokens: int  # generated so far, EOS included
    finished: bool  # EOS reached


class ChatRuntime(ModelRuntime[ChatItem, GenerationOutput]):
    """Causal-LM chat. Greedy requests batch by max_new_tokens (left padding); sampled ones
    each have their own batch key."""

    kind = "chat"

    def __init__(self, name: str, path: Path, options: RuntimeOptions) -> None:
        super().__init__(name, path, options)
        self._model: Any = None
        self._tok: LockedTokenizer | None = None
        self._precision: Precision | None = None
        self._context = 0
        self._eos_id = 0
        self._cache_arg = "past_key_values"
        self._keys = itertools.count()

    def load(self) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        self._precision = resolve_precision(self.options)
        config = AutoConfig.from_pretrained(str(self.path), local_files_only=True)
        tokenizer = load_tokenizer(self.path)
        eos = tokenizer.eos_token_id
        if eos is None:
            eos = config.eos_token_id
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        if eos is None:
            raise ValueError(f"{self.path}: the model has no EOS token")
        self._eos_id = int(eos)
        self._tok = LockedTokenizer(tokenizer)
        self._context = input_limit(tokenizer, config)
        self._model = load_pretrained(AutoModelForCausalLM, self.path, self._precision)
        # transformers >= 5.2x names the KV cache argument "cache", older ones "past_key_values".
        params = inspect.signature(self._model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        log.info(
            "loaded chat model %s: context=%d eos=%d %s",
            self.name,
            self._context,
            self._eos_id,
            self._precision.extra(),
        )

    def info(self) -> RuntimeInfo:
        precision = self._loaded_precision()
        extra = precision.extra() | {"context": self._context, "eos_token_id": self._eos_id}
        return RuntimeInfo(
            str(precision.device),
            precision.requested,
            self._context,
            extra,
            precision=precision.describe(),
        )

    def step_engine(self) -> ChatEngine:
        """This model on the generation scheduler's step loop."""
        return ChatEngine(self)

    # ---- prepare ---------------------------------------------------------------------------

    def prepare(self, item: ChatItem) -> Prepared[ChatItem]:
        """Tokenise the turns (each + EOS) and drop the oldest ones that do not fit."""
        tok = self._loaded_tok()
        _validate(item, self._context)
        budget = self._context - item.max_new_tokens
        kept: list[list[int]] = []
        used = 0
        for turn in reversed(item.turns):
            ids = [*tok.encode(turn, add_special_tokens=False)["input_ids"], self._eos_id]
            if used + len(ids) > budget:
                if not kept:  # even the turn to answer does not fit
                    raise InputTooLongError(len(ids), budget)
                break
            kept.append(ids)
            used += len(ids)
        history = [token for ids in reversed(kept) for token in ids]
        return Prepared(
            item=item,
            num_tokens=len(history),
            truncated=len(kept) < len(item.turns),
            batch_key=_batch_key(item, self._keys),
            features=history,
        )

    # ---- generation ------------------------------------------------------------------------

    def predict(self, batch: list[Prepared[ChatItem]]) -> list[GenerationOutput]:
        """Greedy items (same batch key) decode together; sampled ones one at a time."""
        if not batch:
            return []
        if len(batch) > 1 and all(p.item.temperature <= 0 for p in batch):
            steps = self._decode_greedy_batch(batch)
        else:
            steps = [_last(self._decode(prepared, None)) for prepared in batch]
        tok = self._loaded_tok()
        return [
            GenerationOutput(tok.decode(step.ids).strip(), step.tokens, step.finished, p.truncated)
            for p, step in zip(batch, steps, strict=True)
        ]

    def greedy_tokens(self, text: str, max_new_tokens: int) -> list[int]:
        """The first ``max_new_tokens`` greedy reply tokens to the one turn ``text`` (the EOS
        included when it comes first), through :meth:`predict`'s decoding of one item."""
        step = _last(self._decode(self.prepare(ChatItem((text,), max_new_tokens)), None))
        return step.ids + ([self._eos_id] if step.finished else [])

    def stream(
        self, prepared: Prepared[ChatItem], cancelled: threading.Event
    ) -> Iterator[StreamPiece]:
        """Text deltas as tokens come; the last piece (``final``) carries the totals.

        The whole reply is decoded at every step and only the new suffix is sent, held back
        while it ends in a partial multi-byte character. The text is stripped like predict()'s,
        so the pieces concatenated equal predict()'s text for the same (greedy) request.
        """
        tok = self._loaded_tok()
        deltas = TextDeltas()
        last = _Step([], 0, False)
        for step in self._decode(prepared, cancelled):
            last = step
            piece = deltas.push(tok.decode(step.ids))
            if piece:
                yield StreamPiece(piece, tokens=step.tokens)
        yield StreamPiece(
            deltas.finish(tok.decode(last.ids)),
            final=True,
            tokens=last.tokens,
            finished=last.finished,
            truncated=prepared.truncated,
        )

    def _decode(
        self, prepared: Prepared[ChatItem], cancelled: threading.Event | None
    ) -> Iterator[_Step]:
        """Generate token by token with the KV cache; yields after each token."""
        precision = self._loaded_precision()
        item = prepared.item
        device = precision.device
        generator = _params(item).generator(device)
        ids: list[int] = []
        input_ids = torch.tensor([prepared.features], dtype=torch.long, device=device)
        past: Any = None
        with torch.inference_mode():
            for count in range(1, item.max_new_tokens + 1):
                if cancelled is not None and cancelled.is_set():
                    log.debug("chat generation cancelled after %d tokens", count - 1)
                    return
                with precision.context():
                    output = self._model(
                        input_ids=input_ids, use_cache=True, **{self._cache_arg: past}
                    )
                past = getattr(output, "cache", None) or output.past_key_values
                logits = output.logits[0, -1].float()
                token = pick(logits, item.temperature, item.top_p, generator)
                if token == self._eos_id:
                    yield _Step(ids, count, True)
                    return
                ids = [*ids, token]
                yield _Step(ids, count, False)
                input_ids = torch.tensor([[token]], dtype=torch.long, device=device)

    def _decode_greedy_batch(self, batch: list[Prepared[ChatItem]]) -> list[_Step]:
        """Greedy decoding of several histories at once, left-padded, with the KV cache.

        Padding positions are masked and position ids count only real tokens, so each row
        decodes as it would alone. A row stops at EOS or its own max_new_tokens; the batch
        stops when every row has.
        """
        precision = self._loaded_precision()
        device = precision.device
        rows = [{"input_ids": p.features} for p in batch]
        inputs = pad_rows(rows, self._eos_id, device, left=True)
        input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        limits = [p.item.max_new_tokens for p in batch]
        steps = [_Step([], 0, False) for _ in batch]
        done = [False] * len(batch)
        cache: Any = None
        with torch.inference_mode():
            for _ in range(max(limits)):
                with precision.context():
                    output = self._model(
                        input_ids=input_ids,
                        attention_mask=mask,
                        position_ids=positions,
                        use_cache=True,
                        **{self._cache_arg: cache},
                    )
                cache = getattr(output, "cache", None) or output.past_key_values
                chosen = output.logits[:, -1].float().argmax(dim=-1)
                for i, token in enumerate(chosen.tolist()):
                    if done[i]:
                        continue
                    step = steps[i]
                    step.tokens += 1
                    if token == self._eos_id:
                        step.finished = done[i] = True
                    else:
                        step.ids.append(token)
                        done[i] = step.tokens >= limits[i]
                if all(done):
                    break
                input_ids = chosen.unsqueeze(-1)
                mask = torch.cat([mask, mask.new_ones((len(batch), 1))], dim=-1)
                positions = positions[:, -1:] + 1
        return steps

    # ---- helpers ---------------------------------------------------------------------------

    def _loaded_precision(self) -> Precision:
        if self._precision is None or self._model is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self._precision

    def _loaded_tok(self) -> LockedTokenizer:
        if self._tok is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self._tok


class ChatEngine(CausalEngine):
    """Chat items on the step loop: the history is the prompt, each request decodes with its
    own settings (greedy or sampled with its own generator), the reply ends at EOS."""

    def __init__(self, runtime: ChatRuntime) -> None:
        precision = runtime._loaded_precision()
        eos = runtime._eos_id
        super().__init__(runtime._model, precision, {eos}, eos, runtime._cache_arg)
        self._tok = runtime._loaded_tok()
        self._device = precision.device

    def sequence(self, prepared: Prepared[ChatItem]) -> Sequence:
        params = _params(prepared.item)
        return Sequence(
            prepared.features, prepared.num_tokens, params, params.generator(self._device)
        )

    def output(self, prepared: Prepared[ChatItem], seq: Sequence) -> GenerationOutput:
        text = self.text(seq).strip()
        return GenerationOutput(text, len(seq.tokens), seq.finished, prepared.truncated)

    def text(self, seq: Sequence) -> str:
        return self._tok.decode(seq.tokens[:-1] if seq.finished else seq.tokens)


def _params(item: ChatItem) -> SamplingParams:
    return SamplingParams(item.max_new_tokens, item.temperature, item.top_p, item.seed)


def _batch_key(item: ChatItem, counter: Iterator[int]) -> tuple[Any, ...]:
    """Greedy requests with the same max_new_tokens batch together; sampled ones never do."""
    if item.temperature <= 0:
        return ("chat-greedy", item.max_new_tokens)
    return ("chat-sample", next(counter))


def _last(steps: Iterator[_Step]) -> _Step:
    last = _Step([], 0, False)
    for step in steps:
        last = step
    return last


def _validate(item: ChatItem, context: int) -> None:
    if not item.turns:
        raise ValueError("at least one turn is required")
    if any(not isinstance(turn, str) for turn in item.turns):
        raise ValueError("turns must be strings")
    if not item.turns[-1].strip():
        raise ValueError("the last turn (the one to answer) is empty")
    if not 1 <= item.max_new_tokens < context:
        raise InvalidItemError(
            "max_new_tokens",
            f"max_new_tokens is {item.max_new_tokens}; the model's context of {context} tokens "
            f"allows 1 to {context - 1}",
        )
    if not item.temperature >= 0:
        raise ValueError("temperature must be >= 0")
    if not 0 < item.top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
