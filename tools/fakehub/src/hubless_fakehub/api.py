"""The hub's JSON answers and error shape, as pure functions of repos and commits.

Split from the request handler (:mod:`hubless_fakehub.handler`) so the bodies ``huggingface_hub``
parses (model info with ``?blobs=true`` siblings, tree listings, paths-info, refs, commit
history) and the ``Range`` arithmetic sit in one readable place, free of sockets and locks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from hubless_fakehub.repos import Commit, RepoFile, git_blob_sha1


class HubError(Exception):
    """An error answer: status, ``X-Error-Code`` and extra headers."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.extra = dict(extra or {})


def model_info(
    repo_id: str,
    commit: Commit,
    *,
    created: str,
    private: bool,
    gated: bool,
    blobs: bool,
) -> dict[str, Any]:
    """``GET /api/models/{repo_id}[/revision/{rev}]``; siblings carry sizes and hashes with
    ``blobs`` (``?blobs=true``, what ``model_info(files_metadata=True)`` sends)."""
    siblings = []
    for file in commit.files.values():
        sibling: dict[str, Any] = {"rfilename": file.path}
        if blobs:
            sibling.update(size=file.size, blobId=file.blob_id)
            if file.lfs:
                sibling["lfs"] = {
                    "sha256": file.sha256,
                    "size": file.size,
                    "pointerSize": len(file.pointer),
                }
        siblings.append(sibling)
    library = "sentence-transformers" if "modules.json" in commit.files else "transformers"
    return {
        "_id": hashlib.sha1(repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
        "id": repo_id,
        "modelId": repo_id,
        "author": repo_id.split("/")[0] if "/" in repo_id else None,
        "sha": commit.sha,
        "lastModified": commit.date,
        "createdAt": created,
        "private": private,
        "gated": "manual" if gated else False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [library],
        "library_name": library,
        "siblings": siblings,
        "usedStorage": sum(f.size for f in commit.files.values()),
    }


def refs(branches: Mapping[str, str]) -> dict[str, Any]:
    """``GET /api/models/{repo_id}/refs``: every ref as a branch."""
    return {
        "branches": [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
            for name, sha in sorted(branches.items())
        ],
        "converts": [],
        "tags": [],
    }


def history(commits: Mapping[str, Commit], commit: Commit) -> list[dict[str, Any]]:
    """``GET /api/models/{repo_id}/commits/{rev}``: ``commit`` and its ancestors, newest first."""
    out: list[dict[str, Any]] = []
    current: Commit | None = commit
    while current is not None:
        out.append(
            {
                "id": current.sha,
                "title": current.message,
                "message": "",
                "authors": [{"user": "hubless-tests", "avatar": None}],
                "date": current.date,
            }
        )
        current = commits.get(current.parent) if current.parent else None
    return out


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (start, end); None if invalid."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not match or (not match[1] and not match[2]):
        return None
    if not match[1]:
        length = int(match[2])
        if length == 0:
            return None
        return max(size - length, 0), size - 1
    start = int(match[1])
    end = int(match[2]) if match[2] else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


def _path_info(file: RepoFile) -> dict[str, Any]:
    info: dict[str, Any] = {
        "type": "file",
        "oid": file.blob_id,
        "size": file.size,
        "path": file.path,
    }
    if file.lfs:
        info["lfs"] = {"oid": file.sha256, "size": file.size, "pointerSize": len(file.pointer)}
    return info


def _dir_info(commit: Commit, directory: str) -> dict[str, Any]:
    listing = "".join(
        f"{p} {f.blob_id}\n" for p, f in commit.files.items() if p.startswith(directory + "/")
    )
    return {
        "type": "directory",
        "oid": git_blob_sha1(listing.encode()),
        "size": 0,
        "path": directory,
    }


def _directories(commit: Commit) -> set[str]:
    out = set()
    for path in commit.files:
        parts = path.split("/")[:-1]
        out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return out


def tree(commit: Commit, sub: str, *, recursive: bool) -> list[dict[str, Any]]:
    """``GET /api/models/{repo_id}/tree/{rev}[/{sub}]?recursive=``: directories, then files."""
    directories = _directories(commit)
    if sub and sub not in directories:
        raise HubError(404, "EntryNotFound", f"{sub} does not exist")
    prefix = f"{sub}/" if sub else ""

    def wanted(path: str) -> bool:
        return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

    entries = [_dir_info(commit, d) for d in sorted(directories) if wanted(d)]
    entries += [_path_info(f) for p, f in commit.files.items() if wanted(p)]
    return entries


def paths_info(commit: Commit, paths: list[str]) -> list[dict[str, Any]]:
    """``POST /api/models/{repo_id}/paths-info/{rev}``: the entries of the paths that exist."""
    directories = _directories(commit)
    out = []
    for path in paths:
        path = path.strip("/")
        if path in commit.files:
            out.append(_path_info(commit.files[path]))
        elif path in directories:
            out.append(_dir_info(commit, path))
    return out
