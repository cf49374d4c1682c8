"""Zero-shot classification with an NLI model (bart-large-mnli).

Each (text, label) pair is scored as premise = text, hypothesis = template with the label.
Single-label: softmax of the entailment logits across labels. Multi-label (and a single
candidate label, as the transformers pipeline does): per label, softmax over [contradiction,
entailment], the entailment probability. The forward pass is PyTorch or an ONNX Runtime
session (:mod:`.backends`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ._common import (
    LockedTokenizer,
    Precision,
    chunked,
    label_names,
    pad_rows,
)
from .backends import Forward, load_sequence_classifier
from .base import (
    ClassificationOutput,
    InputTooLongError,
    InvalidItemError,
    ModelRuntime,
    Prepared,
    RuntimeInfo,
    RuntimeOptions,
    ZeroShotItem,
)

log = logging.getLogger(__name__)


def hypotheses(item: ZeroShotItem) -> list[str]:
    """The hypothesis of each label; ValueError for a bad template or label list."""
    template = item.template
    if not isinstance(template, str) or template.count("{}") != 1:
        raise InvalidItemError(
            "hypothesis_template",
            f'hypothesis template must contain "{{}}" exactly once: {template!r}',
        )
    if not item.labels:
        raise InvalidItemError("candidate_labels", "at least one candidate label is required")
    out = []
    for index, label in enumerate(item.labels):
        if not isinstance(label, str) or not label.strip():
            raise InvalidItemError(
                f"candidate_labels[{index}]", "candidate labels must be non-empty strings"
            )
        try:
            out.append(template.format(label))
        except (IndexError, KeyError, ValueError) as exc:
            raise InvalidItemError(
                "hypothesis_template", f"bad hypothesis template {template!r}: {exc}"
            ) from exc
    return out


class ZeroShotRuntime(ModelRuntime[ZeroShotItem, ClassificationOutput]):
    """NLI zero-shot classifier; one model row per candidate label."""

    kind = "zero_shot"

    def __init__(self, name: str, path: Path, options: RuntimeOptions) -> None:
        super().__init__(name, path, options)
        self._model: Any = None  # the torch model; None when ONNX Runtime serves it
        self._forward: Forward | None = None
        self._tok: LockedTokenizer | None = None
        self._precision: Precision | None = None
        self._limit = 0
        self._pad_id = 0
        self.entailment_id = -1
        self.contradiction_id = -1

    def load(self) -> None:
        loaded = load_sequence_classifier(self.path, self.options, self.name)
        self.entailment_id, self.contradiction_id = _nli_ids(loaded.config, self.path)
        self._precision, self._tok, self._model = loaded.precision, loaded.tokenizer, loaded.model
        self._forward = loaded.forward
        self._limit, self._pad_id = loaded.limit, loaded.pad_id
        log.info(
            "loaded zero-shot model %s: entailment=%d contradiction=%d max_tokens=%d backend=%s %s",
            self.name,
            self.entailment_id,
            self.contradiction_id,
            self._limit,
            self._forward.name,
            self._precision.extra(),
        )

    def info(self) -> RuntimeInfo:
        precision = self._loaded_precision()
        forward = self._loaded_forward()
        extra = precision.extra() | {
            "entailment_id": self.entailment_id,
            "contradiction_id": self.contradiction_id,
            "backend": forward.name,
        }
        return RuntimeInfo(
            str(precision.device),
            forward.dtype,
            self._limit,
            extra,
            backend=forward.name,
            backend_note=forward.note,
            precision=precision.describe() if forward.name == "torch" else "",
        )

    def prepare(self, item: ZeroShotItem) -> Prepared[ZeroShotItem]:
        """Tokenise every (text, hypothesis) pair; only the text is cut when too long. A
        hypothesis that does not fit even beside a one-token text is refused naming the
        label (or the template), whatever the truncation."""
        if self._tok is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        if not isinstance(item.text, str) or not item.text.strip():
            raise ValueError("text must be a non-empty string")
        hyps = hypotheses(item)
        premises = [item.text] * len(hyps)
        enc = self._tok.encode(premises, hyps)
        longest = max(len(ids) for ids in enc["input_ids"])
        truncated = longest > self._limit
        if truncated:
            try:
                cut = self._tok.encode(
                    premises, hyps, truncation="only_first", max_length=self._limit
                )
            except Exception as exc:  # the tokenizer cannot cut enough from the text alone
                raise self._hypothesis_too_long(item, hyps) from exc
            if max(len(ids) for ids in cut["input_ids"]) > self._limit:
                raise self._hypothesis_too_long(item, hyps)
            if not item.truncate:
                raise InputTooLongError(longest, self._limit)
            enc = cut
            longest = max(len(ids) for ids in enc["input_ids"])
        rows = [{key: enc[key][i] for key in enc} for i in range(len(hyps))]
        return Prepared(
            item=item, num_tokens=longest, rows=len(rows), truncated=truncated, features=rows
        )

    def _hypothesis_too_long(self, item: ZeroShotItem, hyps: list[str]) -> InputTooLongError:
        """The error for hypotheses that leave no room for the text: it names the template
        when it is too long without a label, else the label with the longest hypothesis."""
        assert self._tok is not None
        limit = self._limit
        alone = self._tok.encode(["x"], [item.template.format("")])["input_ids"][0]
        if len(alone) > limit:
            return InputTooLongError(
                len(alone),
                limit,
                "hypothesis_template",
                f"hypothesis_template is {len(alone)} tokens with a one-token text and no label; "
                f"the model takes at most {limit} tokens for text and hypothesis together: "
                "shorten the template",
            )
        pairs = self._tok.encode(["x"] * len(hyps), hyps)["input_ids"]
        index = max(range(len(hyps)), key=lambda i: len(pairs[i]))
        field = f"candidate_labels[{index}]"
        return InputTooLongError(
            len(pairs[index]),
            limit,
            field,
            f"the hypothesis of {field} (hypothesis_template with the label) leaves no room for "
            f"the text: with the text cut to one token the pair is {len(pairs[index])} tokens, "
            f"and the model takes at most {limit} whatever the truncation: shorten the label or "
            "the template",
        )

    def predict(self, batch: list[Prepared[ZeroShotItem]]) -> list[ClassificationOutput]:
        """All pairs of the batch go through the model together (length-sorted chunks)."""
        if not batch:
            return []
        rows = [row for prepared in batch for row in prepared.features]
        logits = torch.tensor(
            chunked(rows, self._logits, self.options.max_chunk_tokens), dtype=torch.float32
        )
        out = []
        start = 0
        for prepared in batch:
            item = prepared.item
            item_logits = logits[start : start + prepared.rows]
            start += prepared.rows
            if item.multi_label or prepared.rows == 1:
                pair = item_logits[:, [self.contradiction_id, self.entailment_id]]
                probs = pair.softmax(dim=-1)[:, 1]
            else:
                probs = item_logits[:, self.entailment_id].softmax(dim=0)
            scores = sorted(
                zip(item.labels, probs.tolist(), strict=True),
                key=lambda pair: pair[1],
                reverse=True,
            )
            out.append(ClassificationOutput(scores=scores, truncated=prepared.truncated))
        return out

    def _logits(self, rows: list[dict[str, list[int]]]) -> list[list[float]]:
        precision = self._loaded_precision()
        inputs = pad_rows(rows, self._pad_id, precision.device)
        return self._loaded_forward()(inputs).cpu().tolist()

    def _loaded_precision(self) -> Precision:
        if self._precision is None or self._forward is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self._precision

    def _loaded_forward(self) -> Forward:
        if self._forward is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self._forward


def _nli_ids(config: Any, path: Path) -> tuple[int, int]:
    """(entailment id, contradiction id) from the config's labels, case-insensitively."""
    ids: dict[str, int] = {}
    for i, label in (getattr(config, "id2label", None) or {}).items():
        ids.setdefault(str(label).lower(), int(i))
    for label, i in (getattr(config, "label2id", None) or {}).items():
        ids.setdefault(str(label).lower(), int(i))
    missing = [name for name in ("entailment", "contradiction") if name not in ids]
    if missing:
        raise ValueError(
            f"{path} is not an NLI model: its labels {label_names(config)} lack {missing}"
        )
    return ids["entailment"], ids["contradiction"]
