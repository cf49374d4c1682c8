"""One generation request as the scheduler and the engines see it, and how a token is chosen.

A :class:`Sequence` carries its prompt (engine-specific features), its own sampling settings
(:class:`SamplingParams`) and its own ``torch.Generator``: a seeded request draws the same
random numbers whatever else runs in its batch, so it gets the same text alone or with
companions. :func:`pick` is the one token rule (greedy at temperature 0, else temperature +
nucleus sampling), shared by the step loop and the runtimes' single-request path.
:class:`TextDeltas` turns the growing reply into the pieces a stream sends.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

_REPLACEMENT = "\ufffd"  # what a partial multi-byte character decodes to


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings; ``temperature`` 0 is greedy."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def generator(self, device: torch.device) -> torch.Generator | None:
        """A generator of its own for a sampled request (seeded, or from fresh random bits)."""
        if self.greedy:
            return None
        generator = torch.Generator(device=device)
        seed = self.seed if self.seed is not None else secrets.randbits(63)
        generator.manual_seed(seed % (1 << 63))
        return generator


@dataclass(eq=False)
class Sequence:
    """A request being generated. Engines read ``prompt`` and ``params`` and append to
    ``tokens``; ``rules`` is the engine's per-row logits state (e.g. BART's n-gram table)."""

    prompt: Any
    prompt_tokens: int
    params: SamplingParams
    generator: torch.Generator | None = None
    rules: Any = None
    tokens: list[int] = field(default_factory=list)  # generated, the EOS included
    finished: bool = False  # the model emitted EOS
    prefilled: int = 0  # prompt tokens already in the cache (a prompt prefilled in chunks)

    @property
    def done(self) -> bool:
        return self.finished or len(self.tokens) >= self.params.max_new_tokens

    @property
    def unprefilled(self) -> int:
        """Prompt tokens still to prefill."""
        return self.prompt_tokens - self.prefilled

    def kv_positions(self) -> int:
        """KV positions this row may reach: its prompt plus every token it may generate."""
        return self.prompt_tokens + self.params.max_new_tokens


def pick(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """Greedy at temperature 0, else temperature + nucleus sampling with ``generator``."""
    if temperature <= 0 or generator is None:
        return int(logits.argmax())
    probs = (logits / temperature).softmax(dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


class TextDeltas:
    """Turns successive decodes of a growing reply into the new text of each step.

    The text is stripped as the unary answer is. A step whose text ends in a partial
    multi-byte character (U+FFFD) or whose stripped text no longer extends what was sent
    (the decoder may still merge " ." into ".") waits, so what has been sent is always a prefix
    of the final text.
    """

    def __init__(self) -> None:
        self.sent = ""

    def push(self, text: str) -> str:
        """New text to send for this step ("" for none yet)."""
        text = text.strip()
        if text.endswith(_REPLACEMENT) or not text.startswith(self.sent):
            return ""
        piece = text[len(self.sent) :]
        self.sent = text
        return piece

    def finish(self, text: str) -> str:
        """The remainder for the final piece, given the whole reply."""
        text = text.strip()
        if not text.startswith(self.sent):
            log.warning("streamed text diverged from the final decode; sending no remainder")
            return ""
        piece = text[len(self.sent) :]
        self.sent = text
        return piece
