"""Loads retried while a fetch moves a model's files (the server started during a fetch).

A fetch replaces a model by writing the new files, switching the manifest, then pruning the
old commit's files (or, with retention, later). A server that read the manifest just before
may find the files gone: that load fails on missing files (``ModelRecord.files_missing``).
Rather than marking the model FAILED for good, :func:`load_with_retries` re-reads the
manifest: a new entry of the model is loaded at once, the same entry again after a backoff
(0.5, 1, 2, 4 s), and a model no longer in the manifest becomes MISSING; a manifest that is
gone or cannot be read ends the retries (the model is FAILED, nothing else changes). Any
other failure is final; the reloader tries the model again when its manifest entry changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Protocol

from hubless_server.models.manifest_file import count_error, load_manifest
from hubless_server.models.records import ModelRecord, State
from hubless_volume import Manifest, ManifestError

log = logging.getLogger(__name__)

MISSING_FILE_RETRIES = 4
"""Retries of a load that failed on missing files."""
MISSING_FILE_BACKOFF_S = 0.5
"""The first wait; it doubles at each retry."""


class ModelLoader(Protocol):
    """What the retries need of the registry: one load, a plan of a manifest, a hint."""

    models_dir: Path

    async def load_once(self, record: ModelRecord) -> bool: ...

    def plan(self, manifest: Manifest) -> tuple[dict[str, ModelRecord], dict[str, list[str]]]: ...

    def fetch_hint(self, name: str = "") -> str: ...


async def load_with_retries(registry: ModelLoader, record: ModelRecord) -> bool:
    """Load ``record`` (see the module docstring); True when it is READY."""
    for attempt in range(MISSING_FILE_RETRIES + 1):
        if await registry.load_once(record):
            record.loaded_at = time.time()
            return True
        if attempt == MISSING_FILE_RETRIES or record.entry is None or not record.files_missing:
            return False
        fresh = await replan_one(registry, record)
        if fresh is None:
            return False
        if fresh.entry is None:  # removed meanwhile: MISSING (or refused), not FAILED
            record.entry, record.state, record.error = None, fresh.state, fresh.error
            return False
        if (fresh.entry.commit, fresh.entry.files) != (record.entry.commit, record.entry.files):
            log.info(
                "model %s changed on the volume while loading; loading commit %s",
                record.name,
                fresh.entry.commit[:12],
            )
            record.entry = fresh.entry
        else:
            delay = MISSING_FILE_BACKOFF_S * 2**attempt
            log.warning(
                "model %s: files missing (a fetch changing the volume?); retrying in %.1f s",
                record.name,
                delay,
            )
            await asyncio.sleep(delay)
        record.state, record.error = State.LOADING, ""
    return False


async def replan_one(registry: ModelLoader, record: ModelRecord) -> ModelRecord | None:
    """The model's record under the manifest as it is now (read in a worker thread); None if
    that cannot be read. The record came from a manifest, so an absent one vanished: that is
    an error (the load fails, nothing else changes), not an empty volume."""
    try:
        manifest = await asyncio.to_thread(load_manifest, registry.models_dir, missing_ok=False)
    except ManifestError as exc:
        reason = count_error(exc)
        log.error(
            "model %s: cannot re-read the volume manifest (%s): %s",
            record.name,
            reason,
            exc,
            extra={"fields": {"model": record.name, "reason": reason}},
        )
        return None
    fresh = (await asyncio.to_thread(registry.plan, manifest))[0].get(record.name)
    if fresh is None or fresh.task != record.task:
        error = f"not installed; fetch it with `{registry.fetch_hint(record.name)}`"
        return ModelRecord(record.name, record.task, None, State.MISSING, error=error)
    return fresh
