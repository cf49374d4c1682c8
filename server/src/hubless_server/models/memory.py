"""How much memory a model's weights take once loaded: the ``--max-model-memory`` estimate.

The estimate is the weights alone (no tokenizer, activations or allocator slack), computed
from what the volume already says, without loading anything:

* the weight files a load reads: the ``*.safetensors`` files of the manifest entry, or its
  pickle checkpoints (``*.bin``, ``*.pt``, ``*.pth``) when it has no safetensors;
* for a safetensors file, its header (the first bytes of the file: every tensor's dtype and
  shape) gives the exact element count: floating tensors cost the element size of the dtype
  the weights are kept in (float32 on CPU, where bf16/fp16 run under autocast with float32
  weights; the requested dtype on CUDA), other tensors their size on disk;
* otherwise (a pickle checkpoint, an unreadable header) the manifest size times
  ``kept element size / 2``: the worst case, a float16 file loaded as float32 is twice its
  size on disk.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

from hubless_volume import ModelEntry, VolumePathError, open_regular_file

log = logging.getLogger(__name__)

_ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


def kept_element_bytes(device: str, dtype: str) -> int:
    """Bytes per floating weight once loaded (see the module docstring)."""
    if not device.startswith("cuda"):
        return 4
    return _ELEMENT_BYTES.get(dtype, 4)


def estimate_weights_bytes(entry: ModelEntry, models_dir: Path, device: str, dtype: str) -> int:
    """Bytes the weights of ``entry`` take in memory on ``device`` in ``dtype``."""
    element = kept_element_bytes(device, dtype)
    safetensors = [f for f in entry.files if f.path.endswith(".safetensors")]
    weights = safetensors or [f for f in entry.files if f.path.endswith(_PICKLE_SUFFIXES)]
    total = 0
    for record in weights:
        counted = None
        if record.path.endswith(".safetensors"):
            try:
                counted = safetensors_bytes(entry.file_path(models_dir, record.path), element)
            except (OSError, ValueError, VolumePathError) as exc:
                log.debug("cannot read the header of %s: %s", record.path, exc)
        total += counted if counted is not None else record.size * element // 2
    return total


def safetensors_bytes(path: Path, element: int) -> int:
    """Bytes of a safetensors file's tensors once loaded with ``element``-byte floats.

    Reads the header only; ValueError for a file that is not safetensors,
    :class:`hubless_volume.VolumeFileError` (an OSError) for one that is not a regular file
    (a FIFO there would block the read for good)."""
    with open_regular_file(path) as fh:
        prefix = fh.read(8)
        if len(prefix) != 8:
            raise ValueError("too short for a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER:
            raise ValueError(f"header of {length} bytes")
        header = json.loads(fh.read(length))
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    total = 0
    try:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            if info["dtype"] in _FLOAT_DTYPES:
                count = 1
                for dim in info["shape"]:
                    count *= int(dim)
                total += count * element
            else:
                total += int(end) - int(start)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed tensor description: {exc!r}") from None
    return total


def format_bytes(size: int) -> str:
    """``1.5 GiB``-style."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover
