"""Building the tiny stand-ins once and reusing them: :func:`cached_tiny_models`.

A build (:func:`build_tiny_models`) takes tens of seconds, so builds are cached on disk under a
key (:func:`cache_key`) that changes with this package's source, the catalog and the versions of
the libraries that write the files; several processes (pytest workers, the demo) share one cache
safely, and builds for stale keys are pruned.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from filelock import FileLock

from hubless_fakehub.tiny.builders import BUILDERS, new_dir, write_json
from hubless_fakehub.tiny.catalog import INDEX_NAME, LABELS, TinyModel, catalog_file, load_catalog
from hubless_fakehub.tiny.tokenizers import train_all


def build_tiny_models(dest: Path) -> dict[str, TinyModel]:
    """Build a tiny model per catalog entry under ``dest/<name>/``; write ``dest/tiny-models.json``.

    Returns catalog name -> :class:`TinyModel`, in catalog order.
    """
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    toks = train_all()
    out: dict[str, TinyModel] = {}
    quiet = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        built = {
            entry.name: BUILDERS[entry.name](entry.name, toks, new_dir(dest / entry.name))
            for entry in load_catalog().models
        }
    finally:
        if not quiet:
            enable_progress_bars()
    for entry in load_catalog().models:
        model_dir = dest / entry.name
        architecture = built[entry.name]
        out[entry.name] = TinyModel(
            name=entry.name,
            repo_id=entry.repo_id,
            task=entry.task,
            path=model_dir,
            labels=LABELS.get(entry.name, ()),
            architecture=architecture,
        )
    write_json(dest / INDEX_NAME, [model.to_json() for model in out.values()])
    return out


def load_tiny_models(root: Path) -> dict[str, TinyModel]:
    """Read a build made by :func:`build_tiny_models` back from its index."""
    root = Path(root)
    data = json.loads((root / INDEX_NAME).read_text("utf-8"))
    return {item["name"]: TinyModel.from_json(item, root) for item in data}


def cache_key() -> str:
    """Hash of the builder's source (this package), the catalog and the versions of the
    libraries it uses."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    digest.update(catalog_file().read_bytes())
    for dist in ("torch", "transformers", "tokenizers", "sentence-transformers", "safetensors"):
        digest.update(f"{dist}={importlib.metadata.version(dist)}\n".encode())
    return digest.hexdigest()[:16]


def cached_tiny_models(cache_root: Path) -> dict[str, TinyModel]:
    """The tiny models from ``cache_root/<cache_key()>``, built there first if absent.

    Safe with several processes at once: one builds (into a temp dir, then renamed), the others
    wait on a file lock and reuse the result.
    """
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    final = cache_root / cache_key()
    if (final / INDEX_NAME).is_file():
        return load_tiny_models(final)
    with FileLock(str(final) + ".lock"):
        if (final / INDEX_NAME).is_file():
            return load_tiny_models(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_root))
        try:
            build_tiny_models(tmp)
            tmp.chmod(0o755)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        _prune(cache_root, keep=final.name)
    return load_tiny_models(final)


def _prune(cache_root: Path, keep: str, min_age: float = 3600.0) -> None:
    """Remove builds for other keys (older sources or libraries) untouched for ``min_age`` s."""
    now = time.time()
    for entry in cache_root.iterdir():
        key = entry.name.lstrip(".").split(".")[0]
        if key == keep or now - entry.stat().st_mtime < min_age:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
