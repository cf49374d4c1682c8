"""Sentence embeddings from a sentence-transformers folder (Transformer + Pooling [+ Normalize]).

The transformer is loaded directly with ``AutoModel`` (no SentenceTransformer wrapper): prepare()
tokenises once, predict() pads the batch, runs the encoder, pools with the attention mask and
L2-normalises per item. The result matches ``SentenceTransformer.encode``. The encoder pass is
PyTorch or an ONNX Runtime session of the same encoder (:mod:`.backends`); everything around it
is shared.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import (
    LockedTokenizer,
    Precision,
    chunked,
    encode_text,
    input_limit,
    load_pretrained,
    load_tokenizer,
    pad_rows,
    pad_token_id,
    resolve_precision,
)
from .backends import Forward, load_forward
from .base import EmbeddingOutput, ModelRuntime, Prepared, RuntimeInfo, RuntimeOptions, TextItem
from .bf16 import probe_inputs

log = logging.getLogger(__name__)

_POOLING_MODES = ("mean", "cls", "max")
_LEGACY_POOLING_FLAGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


class EmbeddingRuntime(ModelRuntime[TextItem, EmbeddingOutput]):
    """A sentence-transformers embedder: one float32 vector per text."""

    kind = "embedding"

    def __init__(self, name: str, path: Path, options: RuntimeOptions) -> None:
        super().__init__(name, path, options)
        self._model: Any = None  # the torch encoder; None when ONNX Runtime serves it
        self._forward: Forward | None = None
        self._tok: LockedTokenizer | None = None
        self._precision: Precision | None = None
        self._limit = 0
        self._pooling = "mean"
        self._lowercase = False
        self._pad_id = 0
        self._dimension = 0
        self._has_normalize = False

    # ---- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        """Read modules.json / pooling config, then the encoder and tokenizer, offline."""
        from transformers import AutoConfig, AutoModel

        transformer_dir, pooling_dir, self._has_normalize = self._read_modules()
        st_config = _read_json(transformer_dir / "sentence_bert_config.json") or {}
        self._lowercase = bool(st_config.get("do_lower_case", False))
        self._pooling = _pooling_mode(pooling_dir)
        self._precision = resolve_precision(self.options)
        config = AutoConfig.from_pretrained(str(transformer_dir), local_files_only=True)
        tokenizer = load_tokenizer(transformer_dir)
        self._tok = LockedTokenizer(tokenizer)
        self._limit = input_limit(tokenizer, config, st_config.get("max_seq_length"))
        self._pad_id = pad_token_id(tokenizer, config)
        requested = self._precision
        tok, limit, pad_id = self._tok, self._limit, self._pad_id
        self._forward, self._model, self._precision = load_forward(
            self.name,
            self.options,
            requested,
            lambda: load_pretrained(AutoModel, transformer_dir, requested),
            "last_hidden_state",
            probe=lambda: probe_inputs(tok, pad_id, limit),
        )
        self._dimension = int(config.hidden_size)
        log.info(
            "loaded embedder %s: pooling=%s normalize-module=%s max_tokens=%d dim=%d backend=%s %s",
            self.name,
            self._pooling,
            self._has_normalize,
            self._limit,
            self._dimension,
            self._forward.name,
            self._precision.extra(),
        )

    @property
    def transformer_dir(self) -> Path:
        """The folder of the Transformer module (what ``hubless-optimize`` exports)."""
        return self._read_modules()[0]

    def _read_modules(self) -> tuple[Path, Path | None, bool]:
        """(transformer folder, pooling folder or None, has Normalize) from modules.json."""
        modules = _read_json(self.path / "modules.json")
        if modules is None:  # a plain transformers folder: mean pooling, normalised on request
            return self.path, None, False
        transformer = pooling = None
        normalize = False
        for module in sorted(modules, key=lambda m: m.get("idx", 0)):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            folder = self.path / module.get("path", "")
            if kind == "Transformer" and transformer is None:
                transformer = folder
            elif kind == "Pooling" and pooling is None:
                pooling = folder
            elif kind == "Normalize":
                normalize = True
            else:
                raise ValueError(f"{self.path}: unsupported sentence-transformers module {kind!r}")
        if transformer is None:
            raise ValueError(f"{self.path}: modules.json has no Transformer module")
        return transformer, pooling, normalize

    def info(self) -> RuntimeInfo:
        precision = self._loaded_precision()
        forward = self._loaded_forward()
        extra = precision.extra() | {
            "dimension": self._dimension,
            "pooling": self._pooling,
            "normalize_module": self._has_normalize,
            "backend": forward.name,
        }
        return RuntimeInfo(
            str(precision.device),
            forward.dtype,
            self._limit,
            extra,
            embedding_dimension=self._dimension,
            backend=forward.name,
            backend_note=forward.note,
            precision=precision.describe() if forward.name == "torch" else "",
        )

    @property
    def dimension(self) -> int:
        """Length of the vectors."""
        return self._dimension

    # ---- serving ---------------------------------------------------------------------------

    def prepare(self, item: TextItem) -> Prepared[TextItem]:
        tok = self._loaded_tok()
        text = item.text.lower() if self._lowercase and isinstance(item.text, str) else item.text
        features, length, truncated = encode_text(tok, text, self._limit, item.truncate)
        return Prepared(item=item, num_tokens=length, truncated=truncated, features=features)

    def predict(self, batch: list[Prepared[TextItem]]) -> list[EmbeddingOutput]:
        if not batch:
            return []
        vectors = chunked([p.features for p in batch], self._embed, self.options.max_chunk_tokens)
        out = []
        for prepared, vector in zip(batch, vectors, strict=True):
            if prepared.item.normalize:
                vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
            out.append(
                EmbeddingOutput(
                    vector=vector.astype(np.float32, copy=False),
                    tokens=prepared.num_tokens,
                    truncated=prepared.truncated,
                )
            )
        return out

    def _embed(self, rows: list[dict[str, list[int]]]) -> list[np.ndarray]:
        """Pooled (not normalised) float32 vectors for unpadded rows."""
        precision = self._loaded_precision()
        inputs = pad_rows(rows, self._pad_id, precision.device)
        hidden = self._loaded_forward()(inputs)
        pooled = _pool(hidden, inputs["attention_mask"], self._pooling)
        array = pooled.cpu().numpy()
        return list(array)

    # ---- helpers ---------------------------------------------------------------------------

    def _loaded_precision(self) -> Precision:
        if self._precision is None or self._forward is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self._precision

    def _loaded_forward(self) -> Forward:
        if self._forward is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self._forward

    def _loaded_tok(self) -> LockedTokenizer:
        if self._tok is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self._tok


def _pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool token vectors (batch, seq, dim) with a right-padded attention mask."""
    if mode == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).amax(dim=1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _pooling_mode(folder: Path | None) -> str:
    """The pooling mode of a Pooling module folder (both config formats); mean if none."""
    if folder is None:
        return "mean"
    config = _read_json(folder / "config.json") or {}
    mode = config.get("pooling_mode")
    if mode is None:
        enabled = [name for flag, name in _LEGACY_POOLING_FLAGS.items() if config.get(flag)]
        if len(enabled) != 1:
            raise ValueError(f"{folder}: unsupported pooling combination {enabled}")
        mode = enabled[0]
    if mode not in _POOLING_MODES:
        raise ValueError(f"{folder}: unsupported pooling mode {mode!r}")
    return str(mode)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
