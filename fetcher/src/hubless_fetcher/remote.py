"""Talking to the hub (or a mirror at ``HF_ENDPOINT``): resolve a revision to a commit and the
size and hash of every file, and map the hub's refusals to messages that say what to do."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from hubless_fetcher import errors
from hubless_fetcher.catalog import is_commit
from hubless_fetcher.errors import AccessError, FetchError, InvalidListingError, OfflineError
from hubless_fetcher.retry import describe, is_retryable, retrying
from hubless_fetcher.selection import select_files
from hubless_fetcher.settings import Settings
from hubless_volume.schema import (
    SchemaError,
    check_blob_id,
    check_relpath,
    check_sha256,
    check_size,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteFile:
    """A file of a commit as the hub describes it.

    ``sha256`` is known for LFS files; small files stored in git only have ``blob_id`` (sha1 of
    ``b"blob <size>\\0" + content``) until downloaded.
    """

    path: str
    size: int
    sha256: str | None
    blob_id: str | None


@dataclass(frozen=True)
class RemoteSnapshot:
    """A repository at one commit, limited to the files the server needs."""

    repo_id: str
    revision: str
    commit: str
    files: tuple[RemoteFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def file_url(settings: Settings, repo_id: str, commit: str, path: str) -> str:
    """``<endpoint>/<repo_id>/resolve/<commit>/<path>`` (what ``hf_hub_url`` builds)."""
    return f"{settings.endpoint}/{repo_id}/resolve/{commit}/{quote(path)}"


def resolve(settings: Settings, repo_id: str, revision: str) -> RemoteSnapshot:
    """Commit and selected files of ``repo_id@revision``, with retries.

    Raises :class:`AccessError` for 401/403/404 (at once) and :class:`FetchError` once the
    retries for transient failures are spent.
    """
    if settings.offline:
        raise OfflineError(f"{repo_id}@{revision}: offline (HF_HUB_OFFLINE=1), cannot reach hub")
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:  # huggingface_hub would refuse every request: say so now
        raise OfflineError(
            f"{repo_id}@{revision}: huggingface_hub is in offline mode (HF_HUB_OFFLINE or "
            "TRANSFORMERS_OFFLINE was set when it was imported)"
        )
    api = HfApi(endpoint=settings.endpoint, token=settings.token)
    what = f"{repo_id}@{revision}: metadata"
    try:
        info = retrying(settings, what)(
            api.model_info,
            repo_id,
            revision=revision,
            files_metadata=True,
            timeout=settings.timeout,
        )
    except Exception as exc:
        mapped = access_error(exc, settings, repo_id, revision)
        if mapped is not None:
            raise mapped from None
        hint = ""
        if is_retryable(exc) and getattr(exc, "response", None) is None:
            hint = (
                f"; cannot reach {settings.endpoint_shown}: check the network, or set HF_ENDPOINT"
            )
        raise FetchError(
            f"{what} failed after {settings.retries} attempts: {describe(exc)}{hint}"
        ) from exc

    commit = info.sha or ""
    if not is_commit(commit):
        raise FetchError(f"{what}: the hub returned no commit sha for {revision!r}")
    siblings = _check_listing(repo_id, revision, info.siblings or [])
    files: list[RemoteFile] = []
    for path in select_files(siblings):
        sibling = siblings[path]
        if sibling.size is None or (sibling.sha256 is None and sibling.blob_id is None):
            raise FetchError(f"{what}: the hub gave no size/hash for {path}")
        files.append(
            RemoteFile(
                path, sibling.size, sibling.sha256, sibling.blob_id if not sibling.sha256 else None
            )
        )
    if not any(f.path.endswith("config.json") for f in files):
        raise FetchError(f"{what}: no config.json among {len(siblings)} files: not a model?")
    logger.debug("%s -> %s (%d files selected of %d)", what, commit, len(files), len(siblings))
    return RemoteSnapshot(repo_id, revision, commit, tuple(files))


@dataclass(frozen=True)
class _Sibling:
    """One file of the hub's listing, every field checked."""

    size: int | None
    sha256: str | None
    blob_id: str | None


def _check_listing(repo_id: str, revision: str, siblings: list[Any]) -> dict[str, _Sibling]:
    """The hub's file listing, ``{path: sibling}``, refused whole (:class:`InvalidListingError`)
    when a path is not a normalised relative path inside the model folder (``../../x``,
    ``/etc/x``), a path is listed twice, or a size or hash is malformed: such a listing is
    hostile or broken, and its names would become paths on the volume."""
    file = f"hub listing of {repo_id}@{revision}"
    checked: dict[str, _Sibling] = {}
    try:
        for i, sibling in enumerate(siblings):
            where = f"siblings[{i}]"
            path = check_relpath(getattr(sibling, "rfilename", None), file, f"{where}.rfilename")
            if path in checked:
                raise SchemaError(file, f"{where}.rfilename", f"{path!r} is listed twice")
            lfs = sibling.lfs
            sha256 = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
            lfs_size = lfs.get("size") if isinstance(lfs, dict) else getattr(lfs, "size", None)
            size = sibling.size if sibling.size is not None else lfs_size
            blob_id = sibling.blob_id or None
            checked[path] = _Sibling(
                size=None if size is None else check_size(size, file, f"{where}.size"),
                sha256=None if not sha256 else check_sha256(sha256, file, f"{where}.lfs.sha256"),
                blob_id=None
                if blob_id is None
                else check_blob_id(blob_id, file, f"{where}.blobId"),
            )
    except SchemaError as exc:
        raise InvalidListingError(f"refused: {exc}") from None
    return checked


def access_error(
    exc: BaseException, settings: Settings, repo_id: str, revision: str
) -> AccessError | None:
    """A message that says what to do for a 401/403/404 (or ``None`` for other errors)."""
    from huggingface_hub.errors import (
        DisabledRepoError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    where = f"{repo_id}@{revision} at {settings.endpoint_shown}"
    token_hint = (
        "HF_TOKEN is set: check that it is valid and has read access"
        if settings.token
        else "if it is private, set HF_TOKEN to a token with read access"
    )
    if isinstance(exc, GatedRepoError):
        return AccessError(
            f"{where}: the repository is gated. Accept its conditions on its hub page with your "
            "account, then set HF_TOKEN to a read token of that account."
        )
    if isinstance(exc, RevisionNotFoundError):
        return errors.RevisionNotFoundError(
            f"{where}: revision {revision!r} does not exist: fix the catalog."
        )
    if isinstance(exc, DisabledRepoError):
        return AccessError(f"{where}: the repository is disabled on the hub: pick another model.")
    if isinstance(exc, RepositoryNotFoundError) or status == 404:
        return AccessError(
            f"{where}: repository not found. Check repo_id in the catalog; {token_hint}."
        )
    if status == 401:
        return AccessError(f"{where}: unauthorised (401). {token_hint}.")
    if status == 403:
        return AccessError(
            f"{where}: forbidden (403). The token lacks permission (a gated repository whose "
            "conditions were not accepted, or a fine-grained token without read access)."
        )
    return None
