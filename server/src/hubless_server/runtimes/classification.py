"""Sequence classification (emotion, sentiment): softmax over the model's labels.

The forward pass is PyTorch or an ONNX Runtime session (:mod:`.backends`); tokenising,
truncation, batching and scoring are the same for both."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ._common import (
    LockedTokenizer,
    Precision,
    chunked,
    encode_text,
    label_names,
    pad_rows,
)
from .backends import Forward, load_sequence_classifier
from .base import (
    ClassificationOutput,
    ModelRuntime,
    Prepared,
    RuntimeInfo,
    RuntimeOptions,
    TextItem,
)

log = logging.getLogger(__name__)


class SequenceClassificationRuntime(ModelRuntime[TextItem, ClassificationOutput]):
    """``AutoModelForSequenceClassification``: every label with its probability, highest first."""

    kind = "classification"

    def __init__(self, name: str, path: Path, options: RuntimeOptions) -> None:
        super().__init__(name, path, options)
        self._model: Any = None  # the torch model; None when ONNX Runtime serves it
        self._forward: Forward | None = None
        self._tok: LockedTokenizer | None = None
        self._precision: Precision | None = None
        self._limit = 0
        self._pad_id = 0
        self.labels: list[str] = []

    def load(self) -> None:
        loaded = load_sequence_classifier(self.path, self.options, self.name)
        self.labels = label_names(loaded.config)
        if not self.labels:
            raise ValueError(f"{self.path}: config.json has no id2label")
        self._precision, self._tok, self._model = loaded.precision, loaded.tokenizer, loaded.model
        self._forward = loaded.forward
        self._limit, self._pad_id = loaded.limit, loaded.pad_id
        log.info(
            "loaded classifier %s: labels=%s max_tokens=%d backend=%s %s",
            self.name,
            self.labels,
            self._limit,
            self._forward.name,
            self._precision.extra(),
        )

    def info(self) -> RuntimeInfo:
        precision = self._loaded_precision()
        forward = self._loaded_forward()
        extra = precision.extra() | {"labels": list(self.labels), "backend": forward.name}
        return RuntimeInfo(
            str(precision.device),
            forward.dtype,
            self._limit,
            extra,
            labels=tuple(self.labels),
            backend=forward.name,
            backend_note=forward.note,
            precision=precision.describe() if forward.name == "torch" else "",
        )

    def prepare(self, item: TextItem) -> Prepared[TextItem]:
        if self._tok is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        features, length, truncated = encode_text(self._tok, item.text, self._limit, item.truncate)
        return Prepared(item=item, num_tokens=length, truncated=truncated, features=features)

    def predict(self, batch: list[Prepared[TextItem]]) -> list[ClassificationOutput]:
        if not batch:
            return []
        probs = chunked(
            [p.features for p in batch], self._probabilities, self.options.max_chunk_tokens
        )
        return [
            ClassificationOutput(scores=_ranked(self.labels, row), truncated=p.truncated)
            for p, row in zip(batch, probs, strict=True)
        ]

    def _probabilities(self, rows: list[dict[str, list[int]]]) -> list[list[float]]:
        precision = self._loaded_precision()
        inputs = pad_rows(rows, self._pad_id, precision.device)
        logits = self._loaded_forward()(inputs)
        return logits.softmax(dim=-1).cpu().tolist()

    def _loaded_precision(self) -> Precision:
        if self._precision is None or self._forward is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self._precision

    def _loaded_forward(self) -> Forward:
        if self._forward is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self._forward


def _ranked(labels: list[str], probs: list[float]) -> list[tuple[str, float]]:
    return sorted(zip(labels, probs, strict=True), key=lambda pair: pair[1], reverse=True)
