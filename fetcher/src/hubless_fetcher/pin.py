"""``hubless-fetch lock``: pin every catalog model to a commit and each selected file's size
and sha256, giving the catalog's lock file (:class:`~hubless_fetcher.lockfile.LockFile`).

The command keeps its name (``lock``) and so does the file (``catalog.lock.json``); in code the
action is "pinning", so it is not mistaken for the volume write lock.
"""

from __future__ import annotations

import functools
import itertools
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hubless_fetcher.catalog import Catalog, CatalogModel
from hubless_fetcher.connectivity import check_route
from hubless_fetcher.download import Downloader, Wanted
from hubless_fetcher.errors import FetchError, OfflineError
from hubless_fetcher.fetch import hub_headers
from hubless_fetcher.lockfile import LockedFile, LockedModel, LockFile
from hubless_fetcher.remote import RemoteFile, RemoteSnapshot, file_url, resolve
from hubless_fetcher.results import ModelResult, failed_result
from hubless_fetcher.settings import Settings

logger = logging.getLogger(__name__)


def pin_catalog(settings: Settings, catalog: Catalog) -> tuple[LockFile, list[ModelResult]]:
    """Resolve every catalog model to a commit and the size and sha256 of each selected file.

    Small non-LFS files (whose sha256 the hub does not publish) are downloaded to a temporary
    folder and hashed after their git blob id checked out. Returns the lock file (not yet saved)
    and per-model results; it is complete only when no result failed. Raises
    :class:`~hubless_fetcher.errors.NoRouteError` before any model when the hub cannot be
    reached.
    """
    if settings.offline:
        raise OfflineError("`lock` needs the hub: unset HF_HUB_OFFLINE")
    check_route(settings)
    pins = LockFile()
    results: list[ModelResult] = []
    downloader = Downloader(settings, headers=hub_headers(settings))
    try:
        with (
            tempfile.TemporaryDirectory(prefix="hubless-lock-") as tmp,
            ThreadPoolExecutor(settings.jobs, thread_name_prefix="hubless-lock") as pool,
        ):
            for model in catalog.models.values():
                started = time.monotonic()
                try:
                    snapshot = resolve(settings, model.repo_id, model.revision)
                    hash_one = functools.partial(_pin_hash, downloader, settings, model, snapshot)
                    digests = pool.map(hash_one, snapshot.files, itertools.repeat(tmp))
                    files = [
                        LockedFile(f.path, f.size, sha256, f.blob_id)
                        for f, sha256 in zip(snapshot.files, digests, strict=True)
                    ]
                except FetchError as exc:
                    results.append(failed_result(model, exc, time.monotonic() - started))
                    continue
                pins.models[model.name] = LockedModel(
                    model.name, model.repo_id, model.revision, snapshot.commit, files
                )
                logger.info("locked %s at %s", model.name, snapshot.commit[:12])
                results.append(
                    ModelResult(
                        model.name,
                        model.repo_id,
                        "locked",
                        snapshot.commit,
                        len(files),
                        sum(f.size for f in files),
                        time.monotonic() - started,
                    )
                )
    finally:
        downloader.close()
    return pins, results


def _pin_hash(
    downloader: Downloader,
    settings: Settings,
    model: CatalogModel,
    snapshot: RemoteSnapshot,
    f: RemoteFile,
    tmp: str,
) -> str:
    """The sha256 of ``f``: published for LFS files, downloaded and hashed otherwise."""
    if f.sha256 is not None:
        return f.sha256
    url = file_url(settings, model.repo_id, snapshot.commit, f.path)
    dest = Path(tmp) / f"{snapshot.commit}-{f.blob_id}"
    try:
        return downloader.download(url, Wanted(f.path, f.size, None, f.blob_id), dest)
    finally:
        dest.unlink(missing_ok=True)
