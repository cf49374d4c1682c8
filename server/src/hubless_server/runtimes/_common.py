"""Helpers shared by the runtimes: precision, loading, locked tokenisation and padding."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from .base import InputTooLongError, RuntimeOptions
from .placement import cpu_has_native_bf16

log = logging.getLogger(__name__)

T = TypeVar("T")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# Model types whose learned position table reserves ``pad_token_id + 1`` leading slots.
_POSITION_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta", "camembert", "longformer"})
# A tokenizer's ``model_max_length`` above this means "not set" (transformers uses 1e30).
_UNSET_MAX_LENGTH = 1_000_000


@dataclass(frozen=True)
class Precision:
    """How a model is stored and run: weight dtype plus an optional autocast dtype.

    On CUDA the weights are loaded in the requested dtype. On CPU, low-precision requests load
    float32 weights and run under ``torch.autocast`` (bf16/fp16 matmuls, fp32 softmax and
    norms); an encoder on a CPU with bf16 instructions then moves to bf16 weights when a fixed
    probe answers like float32 (:mod:`.bf16`: on real all-MiniLM-L6-v2 min cosine 0.99984,
    ~1.1-1.2x less CPU per sentence than autocast, half the weight memory). On CPUs without
    bf16 instructions (AVX2 only) both bf16 modes are about 4x slower than fp32: see
    :func:`cpu_has_native_bf16`. ``note`` records how the choice was made (``describe()``).
    """

    device: torch.device
    requested: str
    weights: torch.dtype
    autocast: torch.dtype | None = None
    note: str = ""  # how the choice was made (e.g. bf16 weights' parity figure), for ModelInfo

    def context(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast context for a forward pass (a no-op when not autocasting)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def extra(self) -> dict[str, Any]:
        """Details for :class:`RuntimeInfo.extra`."""
        out: dict[str, Any] = {"weights_dtype": str(self.weights).removeprefix("torch.")}
        if self.autocast is not None:
            out["autocast"] = str(self.autocast).removeprefix("torch.")
        return out

    def describe(self) -> str:
        """One line for ``ModelInfo.precision``: weights, autocast, and why."""
        if self.note:
            return self.note
        weights = str(self.weights).removeprefix("torch.")
        if self.autocast is None:
            return f"{weights} weights"
        return f"{weights} weights under {str(self.autocast).removeprefix('torch.')} autocast"


def resolve_precision(options: RuntimeOptions) -> Precision:
    """Check ``options`` and decide weight dtype and autocast; raises ValueError/RuntimeError."""
    if options.dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {options.dtype!r}; expected one of {sorted(DTYPES)}")
    try:
        device = torch.device(options.device)
    except RuntimeError as exc:
        raise ValueError(f"unsupported device {options.device!r}: {exc}") from exc
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {options.device!r}; expected 'cpu' or 'cuda[:N]'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {options.device!r} requested but CUDA is not available")
    requested = DTYPES[options.dtype]
    if device.type == "cpu" and requested != torch.float32:
        if requested == torch.bfloat16 and not cpu_has_native_bf16():
            log.warning(
                "bfloat16 requested on a CPU without bf16 instructions: expect it to be slower "
                "than float32"
            )
        return Precision(device, options.dtype, torch.float32, requested)
    return Precision(device, options.dtype, requested)


def load_pretrained(cls: Any, path: Path, precision: Precision, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` offline, in the weight dtype, from safetensors when present,
    moved to the device and put in eval mode.

    The weights end up in process memory, never memory-mapped from the volume: safetensors
    files are read whole and parsed from bytes (``disable_mmap=True``), and a pickle
    checkpoint (which transformers maps) has its tensors copied off the mapping. A file the
    fetcher later replaces or prunes can then never fault a running model, and its disk space
    is freed at once (a mapped, deleted blob would stay allocated until the process exits).
    The read costs a transient copy of one weights file while loading, and the weights are
    all resident from the start, where a mapped load leaves the pages no input has touched
    yet on disk (docs/live-updates.md has the figures)."""
    has_safetensors = any(Path(path).glob("*.safetensors"))
    if not has_safetensors:
        log.warning("%s has no safetensors weights; loading the pickle checkpoint", path)
    model = cls.from_pretrained(
        str(path),
        local_files_only=True,
        dtype=precision.weights,
        use_safetensors=True if has_safetensors else None,
        disable_mmap=True,
        **kwargs,
    )
    if not has_safetensors:
        detach_from_files(model)
    if precision.device.type != "cpu":
        model = model.to(precision.device)
    model.eval()
    model.requires_grad_(False)
    return model


def detach_from_files(model: Any) -> None:
    """Copy every parameter and buffer into memory of its own (off any file mapping).

    Tensors are visited once each (tied weights are one Parameter), so tying survives."""
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.data = tensor.data.clone()


def load_tokenizer(path: Path) -> Any:
    """The model's (fast) tokenizer, offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def max_positions(config: Any) -> int | None:
    """Longest input the model's position table allows, if it has one."""
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            if getattr(config, "model_type", "") in _POSITION_OFFSET_TYPES:
                value -= (getattr(config, "pad_token_id", None) or 0) + 1
            return value
    return None


def input_limit(tokenizer: Any, config: Any, cap: int | None = None) -> int:
    """Maximum input tokens: the smallest of the tokenizer's, the position table's and ``cap``."""
    limits = []
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < _UNSET_MAX_LENGTH:
        limits.append(tok_max)
    positions = max_positions(config)
    if positions:
        limits.append(positions)
    if cap:
        limits.append(cap)
    if not limits:
        raise ValueError("cannot tell the model's maximum input length")
    return min(limits)


class LockedTokenizer:
    """A fast tokenizer behind a lock.

    HF fast tokenizers raise "Already borrowed" when used from several threads while their
    truncation/padding settings change, so every call goes through one lock. Nothing here pads.

    Request text is text: a ``</s>``, ``<|endoftext|>`` or ``[SEP]`` in it is split like any
    other characters (``split_special_tokens``), never read as the model's control token. Only
    the tokenizer's own special tokens frame the input: a ``</s>`` inside a zero-shot text gave
    BART rows with different numbers of <eos> and failed the batch ("All examples must have
    the same number of <eos> tokens"), and an ``<|endoftext|>`` in a chat turn ended the turn.

    One text (or one pair) without truncation, the serving path of every request, goes straight
    to the fast tokenizer's Rust backend (``tokenizers.Tokenizer.encode``, what transformers'
    ``__call__`` ends in, with the same settings: no truncation, no padding, special tokens in
    the text split): 40 us instead of 66 us per sentence on the benchmark machine, the
    transformers call's own Python work was a fifth of the server's event-loop time per
    sentence. Anything else (batches of texts, truncation) takes the transformers call.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._lock = threading.Lock()
        backend = (
            getattr(tokenizer, "_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        )
        self._backend = (
            backend
            if all(hasattr(backend, attr) for attr in ("encode", "no_truncation", "no_padding"))
            else None
        )
        self._type_ids = "token_type_ids" in getattr(tokenizer, "model_input_names", ())

    def encode(
        self,
        text: str | Sequence[str],
        pair: str | Sequence[str] | None = None,
        *,
        max_length: int | None = None,
        truncation: str | bool = False,
        add_special_tokens: bool = True,
    ) -> dict[str, Any]:
        """Token ids (and token_type_ids where the model uses them), unpadded."""
        if (
            self._backend is not None
            and not truncation
            and isinstance(text, str)
            and (pair is None or isinstance(pair, str))
        ):
            return self._encode_fast(text, pair, add_special_tokens)
        kwargs: dict[str, Any] = {
            "add_special_tokens": add_special_tokens,
            "padding": False,
            "return_attention_mask": False,
            "verbose": False,
            "split_special_tokens": True,
        }
        if truncation:
            kwargs.update(truncation=truncation, max_length=max_length)
        else:
            kwargs["truncation"] = False
        with self._lock:
            enc = self.tokenizer(text, pair, **kwargs)
        return {key: value for key, value in enc.items() if key != "attention_mask"}

    def _encode_fast(self, text: str, pair: str | None, add_special_tokens: bool) -> dict[str, Any]:
        backend = self._backend
        assert backend is not None
        with self._lock:
            if backend.truncation is not None:  # left by a truncating call
                backend.no_truncation()
            if backend.padding is not None:
                backend.no_padding()
            if not backend.encode_special_tokens:
                backend.encode_special_tokens = True
            enc = backend.encode(text, pair, add_special_tokens=add_special_tokens)
        out: dict[str, Any] = {"input_ids": enc.ids}
        if self._type_ids:
            out["token_type_ids"] = enc.type_ids
        return out

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        with self._lock:
            return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


def encode_text(
    tok: LockedTokenizer, text: str, limit: int, truncate: bool
) -> tuple[dict[str, list[int]], int, bool]:
    """Tokenise one text (with special tokens, no padding).

    Returns (features, num_tokens, truncated). Too long: InputTooLongError when ``truncate`` is
    false, otherwise the text is encoded again cut to ``limit``.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    features = tok.encode(text)
    length = len(features["input_ids"])
    if length <= limit:
        return features, length, False
    if not truncate:
        raise InputTooLongError(length, limit)
    features = tok.encode(text, max_length=limit, truncation=True)
    return features, len(features["input_ids"]), True


def pad_rows(
    rows: Sequence[dict[str, list[int]]],
    pad_id: int,
    device: torch.device,
    *,
    left: bool = False,
) -> dict[str, torch.Tensor]:
    """Pad unpadded feature dicts into tensors with an attention mask."""
    width = max(len(row["input_ids"]) for row in rows)
    keys = list(rows[0])
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        fill = pad_id if key == "input_ids" else 0
        data = torch.full((len(rows), width), fill, dtype=torch.long)
        for i, row in enumerate(rows):
            values = torch.tensor(row[key], dtype=torch.long)
            if left:
                data[i, width - len(values) :] = values
            else:
                data[i, : len(values)] = values
        out[key] = data
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        if left:
            mask[i, width - n :] = 1
        else:
            mask[i, :n] = 1
    out["attention_mask"] = mask
    return {key: value.to(device, non_blocking=True) for key, value in out.items()}


def chunked(
    rows: Sequence[dict[str, list[int]]],
    run: Callable[[list[dict[str, list[int]]]], list[T]],
    max_tokens: int,
) -> list[T]:
    """Run ``rows`` through ``run`` in length-sorted chunks of at most ``max_tokens`` padded
    tokens each (``RuntimeOptions.max_chunk_tokens``; 0: one chunk); results come back in the
    original order."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    results: list[T | None] = [None] * len(rows)
    for chunk in _chunks(order, rows, max_tokens):
        outputs = run([rows[i] for i in chunk])
        for i, value in zip(chunk, outputs, strict=True):
            results[i] = value
    return results  # type: ignore[return-value]


def _chunks(
    order: list[int], rows: Sequence[dict[str, list[int]]], max_tokens: int
) -> Iterator[list[int]]:
    chunk: list[int] = []
    for i in order:
        width = len(rows[i]["input_ids"])  # ascending, so the newest row is the widest
        if chunk and max_tokens > 0 and width * (len(chunk) + 1) > max_tokens:
            yield chunk
            chunk = []
        chunk.append(i)
    if chunk:
        yield chunk


def label_names(config: Any) -> list[str]:
    """Labels in id order from ``config.id2label``."""
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    return [id2label[i] for i in sorted(id2label)]


def pad_token_id(tokenizer: Any, config: Any) -> int:
    """The pad id: the tokenizer's, the config's, else the EOS id (GPT-2 has none), else 0."""
    for value in (
        tokenizer.pad_token_id,
        getattr(config, "pad_token_id", None),
        tokenizer.eos_token_id,
        getattr(config, "eos_token_id", None),
    ):
        if isinstance(value, int):
            return value
    return 0
