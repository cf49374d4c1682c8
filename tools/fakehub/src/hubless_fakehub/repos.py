"""What the fake hub stores: repos as histories of immutable commits of in-memory files.

Kept apart from the HTTP side so the hub's data model (git blob ids, LFS pointers, which files are
LFS, deterministic commit ids) can be read, and tested, on its own. Files are LFS when their
suffix is a weights/binary suffix (as the hub's default ``.gitattributes``) or they are at least
``lfs_threshold`` bytes. Commits are deterministic 40-hex ids derived from the parent commit and
the file list; old commits stay in the repo after it changes, as on the hub.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".h5",
    ".msgpack",
    ".ot",
    ".onnx",
    ".pt",
    ".pth",
    ".ckpt",
    ".pkl",
    ".tflite",
    ".npz",
    ".zip",
    ".gz",
    ".tar",
)
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024
"""Files at least this big are LFS whatever their suffix (the hub refuses bigger git files)."""


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (what the hub calls ``blobId`` / ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file committed in place of an LFS file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


@dataclass(frozen=True)
class RepoFile:
    """One file of one commit."""

    path: str
    data: bytes
    sha256: str
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def pointer(self) -> bytes:
        return lfs_pointer(self.sha256, self.size)

    @functools.cached_property
    def blob_id(self) -> str:
        """Git blob id of what git stores: the pointer for LFS files, the content otherwise."""
        return git_blob_sha1(self.pointer if self.lfs else self.data)

    @functools.cached_property
    def etag(self) -> str:
        return self.sha256 if self.lfs else git_blob_sha1(self.data)


@dataclass(frozen=True)
class Commit:
    """An immutable snapshot of a repo."""

    sha: str
    parent: str | None
    message: str
    date: str
    files: Mapping[str, RepoFile]


@dataclass
class Repo:
    """A repo's history and refs."""

    repo_id: str
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    created: str = ""

    def resolve(self, revision: str) -> Commit | None:
        """The commit a branch/tag name or a commit sha names, or None."""
        return self.commits.get(self.refs.get(revision, revision))


def now() -> str:
    """The current time as the hub writes it (``2026-01-31T12:00:00.000Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def make_file(path: str, data: bytes, lfs_threshold: int = DEFAULT_LFS_THRESHOLD) -> RepoFile:
    """A :class:`RepoFile`, LFS by suffix or size."""
    lfs = path.endswith(LFS_SUFFIXES) or len(data) >= lfs_threshold
    return RepoFile(path, data, hashlib.sha256(data).hexdigest(), lfs)


def commit_sha(
    repo_id: str, parent: str | None, message: str, index: int, files: Mapping[str, RepoFile]
) -> str:
    """A deterministic commit id: sha1 of the repo, parent, message, history length and files."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(f"{repo_id}\n{parent}\n{message}\n{index}\n".encode())
    for path in sorted(files):
        digest.update(f"{path} {files[path].blob_id}\n".encode())
    return digest.hexdigest()


def read_dir(source: Path) -> dict[str, bytes]:
    """Every file under ``source`` as ``{relative posix path: bytes}``."""
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"not a directory: {source}")
    return {
        p.relative_to(source).as_posix(): p.read_bytes()
        for p in sorted(source.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(source).parts
    }
