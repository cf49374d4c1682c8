"""Which files of a repository the server needs.

Kept: ``config.json``, ``generation_config.json``, tokenizer files, sentence-transformers
module files (``modules.json``, ``sentence_bert_config.json``, ``config_sentence_transformers.json``
and the ``<n>_<Module>/`` folders such as ``1_Pooling/config.json``) and one copy of the
weights per folder: ``*.safetensors`` (plus ``model.safetensors.index.json`` when sharded) or,
when a folder has none, ``pytorch_model*.bin`` (plus its index). Everything else is skipped:
TF/Flax/Rust/ONNX/OpenVINO/Core ML duplicates, training state, READMEs and any other folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath

_MODULE_DIR = re.compile(r"^\d+_[A-Za-z][A-Za-z0-9_]*$")
_TEXT_SUFFIXES = {".json", ".txt", ".model", ".spm", ".jinja", ".codes", ".tiktoken"}
_SKIP_NAMES = {
    "training_args.json",
    "trainer_state.json",
    "optimizer.json",
    "scheduler.json",
    "flax_model.msgpack.index.json",
    "tf_model.h5.index.json",
}
_SAFETENSORS = re.compile(r"^[\w.-]*\.safetensors$")
_SAFETENSORS_INDEX = re.compile(r"^[\w.-]*\.safetensors\.index\.json$")
_BIN = re.compile(r"^pytorch_model(-\d+-of-\d+)?\.bin$")
_BIN_INDEX = re.compile(r"^pytorch_model\.bin\.index\.json$")


def _folder_allowed(parent: str) -> bool:
    """The repo root and sentence-transformers module folders (``1_Pooling``, ``2_Dense``)."""
    return parent == "" or _MODULE_DIR.match(parent) is not None


def select_files(paths: Iterable[str]) -> list[str]:
    """The subset of ``paths`` (repo-relative, ``/``-separated) to download, sorted."""
    by_folder: dict[str, list[str]] = {}
    for path in paths:
        pure = PurePosixPath(path)
        parent = "" if str(pure.parent) == "." else str(pure.parent)
        if _folder_allowed(parent):
            by_folder.setdefault(parent, []).append(pure.name)
    chosen: list[str] = []
    for parent, names in by_folder.items():
        safetensors = [n for n in names if _SAFETENSORS.match(n)]
        keep: set[str] = set()
        if safetensors:
            keep.update(safetensors)
            keep.update(n for n in names if _SAFETENSORS_INDEX.match(n))
        else:
            keep.update(n for n in names if _BIN.match(n) or _BIN_INDEX.match(n))
        for name in names:
            suffix = PurePosixPath(name).suffix
            if name in keep:
                continue
            if suffix not in _TEXT_SUFFIXES or name in _SKIP_NAMES:
                continue
            if _SAFETENSORS_INDEX.match(name) or _BIN_INDEX.match(name):
                continue  # index of weights we did not choose
            if name.startswith(("tf_", "flax_", "rust_", "onnx", "openvino")):
                continue
            keep.add(name)
        chosen.extend(f"{parent}/{n}" if parent else n for n in keep)
    return sorted(chosen)
