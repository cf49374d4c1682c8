"""Streaming file downloads: hash while writing, resume with HTTP Range, retry with tenacity.

Every file is checked against the hub's sha256 (LFS files, or the lock file) or its git blob id
(sha1 of ``b"blob <size>\\0" + content``, small files). A mismatch deletes the file and the next
attempt downloads it again; when the attempts are spent the file fails with
:class:`~hubless_fetcher.errors.IntegrityError`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from hubless_fetcher.errors import AccessError, DiskSpaceError, FetchError, IntegrityError
from hubless_fetcher.retry import (
    RETRY_STATUS,
    RetryableError,
    describe,
    parse_retry_after,
    retrying,
)
from hubless_fetcher.settings import Settings

logger = logging.getLogger(__name__)


class Cancelled(Exception):
    """The run is being interrupted; stop downloading."""


class Bar(Protocol):
    def update(self, n: int) -> object: ...
    def close(self) -> None: ...


BarFactory = Callable[[str, int, int], Bar]


class _NoBar:
    def update(self, n: int) -> None:
        return None

    def close(self) -> None:
        return None


def no_bar(desc: str, total: int, initial: int) -> Bar:
    """A progress bar that shows nothing (not a terminal)."""
    return _NoBar()


@dataclass(frozen=True)
class Wanted:
    """A file to download and the hash(es) its bytes must have."""

    path: str
    size: int
    sha256: str | None = None
    blob_id: str | None = None

    @property
    def key(self) -> str:
        """A stable staging name: the same content resumes across runs."""
        return self.sha256 or f"git-{self.blob_id}"


class _IntegrityAttempt(RetryableError):
    """One attempt delivered the wrong bytes (retried; an IntegrityError when attempts run out)."""


def git_blob_sha1_prefix(size: int) -> bytes:
    """What git hashes before a file's content to name its blob."""
    return b"blob %d\0" % size


def git_blob_id(data: bytes) -> str:
    """The git blob id (sha1) of ``data``: what the hub reports for non-LFS files."""
    return hashlib.sha1(git_blob_sha1_prefix(len(data)) + data, usedforsecurity=False).hexdigest()


class Downloader:
    """Downloads files of one run; thread-safe (one instance shared by the worker threads)."""

    def __init__(
        self,
        settings: Settings,
        *,
        headers: dict[str, str] | None = None,
        bar: BarFactory = no_bar,
        cancel: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.bar = bar
        self.cancel = cancel or threading.Event()
        self.client = httpx.Client(
            headers=headers or {},
            timeout=httpx.Timeout(settings.timeout),
            follow_redirects=True,
            limits=httpx.Limits(max_connections=max(4, settings.jobs * 2)),
        )

    def close(self) -> None:
        self.client.close()

    def download(self, url: str, wanted: Wanted, dest: Path) -> str:
        """Fetch ``url`` into ``dest`` (resuming a partial ``dest``); return its sha256."""
        what = wanted.path
        try:
            return retrying(self.settings, what)(self._attempt, url, wanted, dest)
        except _IntegrityAttempt as exc:
            raise IntegrityError(
                f"{what}: {exc} in each of {self.settings.retries} attempts; giving up"
            ) from None
        except (AccessError, Cancelled, FetchError):
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskSpaceError(f"{what}: the volume is full ({exc})") from None
            raise FetchError(f"{what}: {describe(exc)}") from exc
        except Exception as exc:
            raise FetchError(
                f"{what}: failed after {self.settings.retries} attempts: {describe(exc)}"
            ) from exc

    def _attempt(self, url: str, wanted: Wanted, dest: Path) -> str:
        if self.cancel.is_set():
            raise Cancelled()
        have = dest.stat().st_size if dest.exists() else 0
        if have > wanted.size:
            dest.unlink()
            have = 0
        if have == wanted.size:  # staged completely by an earlier run
            return _Hashes(wanted).feed_file(dest).check(dest)
        headers = {"Accept-Encoding": "identity"}  # byte offsets must be file offsets
        if have:
            headers["Range"] = f"bytes={have}-"
        with self.client.stream("GET", url, headers=headers) as response:
            status = response.status_code
            if status == 206 and not response.headers.get("Content-Range", "").startswith(
                f"bytes {have}-"
            ):
                dest.unlink(missing_ok=True)
                raise RetryableError("the server answered a different range; restarting the file")
            if status == 416:
                dest.unlink(missing_ok=True)
                raise RetryableError("the server refused the range request; restarting the file")
            if status in RETRY_STATUS:
                raise RetryableError(
                    f"HTTP {status}",
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                )
            if status in (401, 403, 404):
                raise AccessError(_refusal(self.settings, wanted.path, response))
            if status not in (200, 206):
                raise FetchError(f"{wanted.path}: unexpected HTTP {status}")
            if status == 200:
                have = 0  # no range support, or nothing staged: whole file
            elif have:
                logger.info("%s: resuming at byte %d of %d", wanted.path, have, wanted.size)
            hashes = _Hashes(wanted)
            if have:
                hashes.feed_file(dest)
            self._stream(response, wanted, dest, have, hashes)
        return hashes.check(dest)

    def _stream(
        self, response: httpx.Response, wanted: Wanted, dest: Path, have: int, hashes: _Hashes
    ) -> None:
        bar = self.bar(wanted.path, wanted.size, have)
        received = have
        try:
            with open(dest, "ab" if have else "wb") as fh:
                for chunk in response.iter_bytes():  # as received: a cut keeps every byte
                    if self.cancel.is_set():
                        raise Cancelled()
                    received += len(chunk)
                    if received > wanted.size:
                        fh.close()
                        dest.unlink(missing_ok=True)
                        raise _IntegrityAttempt(f"more than the expected {wanted.size} bytes")
                    fh.write(chunk)
                    hashes.update(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
        if received < wanted.size:
            raise RetryableError(f"connection closed at byte {received} of {wanted.size}")


def _refusal(settings: Settings, path: str, response: httpx.Response) -> str:
    """What to do about a 401/403/404 on a file download."""
    status = response.status_code
    code = response.headers.get("X-Error-Code", "")
    where = f"{path}: HTTP {status} from {settings.endpoint_shown}"
    if code == "GatedRepo":
        return (
            f"{where}: the repository is gated. Accept its conditions on its hub page, then "
            "set HF_TOKEN to a read token of that account"
            + (" (the HF_TOKEN given is not allowed)" if settings.token else "")
        )
    if status == 404 and code != "RepoNotFound":
        return f"{where}: the file is missing at this commit (an incomplete mirror?)"
    return f"{where}: check HF_TOKEN (a valid token with read access to the repository)"


class _Hashes:
    """sha256 (always) and the git blob sha1 (when the hub gave only a blob id), fed as bytes
    arrive."""

    def __init__(self, wanted: Wanted) -> None:
        self.wanted = wanted
        self.sha256 = hashlib.sha256()
        self.sha1 = (
            hashlib.sha1(git_blob_sha1_prefix(wanted.size), usedforsecurity=False)
            if wanted.blob_id
            else None
        )

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        if self.sha1 is not None:
            self.sha1.update(chunk)

    def feed_file(self, path: Path) -> _Hashes:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                self.update(chunk)
        return self

    def check(self, dest: Path) -> str:
        """The sha256 if every expected hash matches; else delete ``dest`` and raise."""
        digest = self.sha256.hexdigest()
        expected = self.wanted.sha256
        if expected is not None and digest != expected:
            dest.unlink(missing_ok=True)
            raise _IntegrityAttempt(f"sha256 {digest[:12]}... != expected {expected[:12]}...")
        if self.sha1 is not None and self.sha1.hexdigest() != self.wanted.blob_id:
            dest.unlink(missing_ok=True)
            raise _IntegrityAttempt(
                f"git blob id {self.sha1.hexdigest()[:12]}... != expected "
                f"{str(self.wanted.blob_id)[:12]}..."
            )
        return digest
