"""A local, hub-compatible Hugging Face mirror for tests: :class:`HubMirror`.

Which server, and why
---------------------
This is a small fixture server (stdlib ``ThreadingHTTPServer`` in a thread), not ``olah``.
olah 0.5.4 was evaluated first as the real mirror: a git repo of a tiny model (LFS pointers
committed, objects under ``.git/lfs/objects``) in its ``mirrors-path``, ``offline = true``.
Measured against it (code in ``olah/mirror/repos.py``, ``server_file_routes.py``), it falls
short of what the fetcher needs:

- ``model_info(..., files_metadata=True)`` sends ``?blobs=true``; olah ignores it and returns
  siblings with ``rfilename`` only (``LocalMirrorRepo.get_meta``): no ``size``, ``blobId`` or
  ``lfs.sha256``, so a fetcher cannot learn sizes and hashes before downloading.
- ``GET /{repo}/resolve/{rev}/{path}`` with ``Range: bytes=100-199`` answers ``200`` with the
  whole file, chunked, without ``Content-Length``: no 206, no resume.
- ``HEAD`` has an unquoted ``ETag``, no ``Accept-Ranges``, no ``X-Linked-Etag``/``-Size``; a
  missing file answers ``401`` ``X-Error-Code: RepoNotFound`` instead of the hub's ``404``
  ``EntryNotFound``.
- It needs git repos with LFS objects built per test (and ``git`` to do it), takes ~2 s to
  start, and "upstream changed" would mean committing to those repos.

This server implements exactly what ``huggingface_hub`` (2.x) and the fetcher use, in memory, and
starts in milliseconds:

- ``GET /api/models/{repo_id}[/revision/{rev}]``: ``sha``, ``siblings`` (with ``size``,
  ``blobId`` and ``lfs{sha256,size,pointerSize}`` when ``?blobs=true``), ``gated``/``private``.
- ``GET /api/models/{repo_id}/tree/{rev}[/{path}]?recursive=``, ``POST .../paths-info/{rev}``,
  ``GET .../refs``, ``GET .../commits/{rev}``.
- ``HEAD``/``GET /{repo_id}/resolve/{rev}/{path}``: ``X-Repo-Commit``, quoted ``ETag`` (sha256 for
  LFS files, git blob sha1 otherwise), ``X-Linked-Etag``/``X-Linked-Size`` for LFS files,
  ``Content-Length``, ``Accept-Ranges: bytes``; ``Range`` gives 206 with ``Content-Range`` (416
  when unsatisfiable). With ``lfs_redirect=True`` LFS files answer 302 to a CDN-like URL on a
  second port (another origin), as the real hub redirects to its CDN.
- Errors as the hub: 404 + ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` /
  ``EntryNotFound``; private repos 401 ``RepoNotFound`` without a valid token; gated repos
  (metadata public) 401/403 ``GatedRepo`` on file downloads without an allowed token.

Files are LFS when their suffix is a weights/binary suffix (as the hub's default
``.gitattributes``) or they are at least ``lfs_threshold`` bytes. Commits are deterministic
40-hex ids derived from the parent commit and the file list; old commits stay resolvable after a
repo changes, as on the hub.

For tests of the fetcher's failure handling, :meth:`HubMirror.add_fault` makes matching requests
fail (any status, e.g. 503 or 429 with ``Retry-After``), stall, end early (truncated body) or
carry corrupted bytes, and :attr:`HubMirror.requests` records every request served.

Run standalone: ``python -m tests.support.mirror --port 8090 org/name=DIR ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

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


@dataclass
class Fault:
    """A scripted misbehaviour for matching requests; see :meth:`HubMirror.add_fault`."""

    repo_id: str | None = None
    path: str | None = None
    api: bool = False
    method: str | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    truncate_after: int | None = None
    corrupt: bool = False
    delay: float = 0.0
    times: int | None = 1
    hits: int = 0

    def matches(self, *, api: bool, repo_id: str | None, path: str | None, method: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if api != self.api or (self.method and self.method != method):
            return False
        if self.repo_id is not None and self.repo_id != repo_id:
            return False
        return self.path is None or (path is not None and fnmatch.fnmatchcase(path, self.path))


@dataclass(frozen=True)
class RequestRecord:
    """One request the mirror answered."""

    method: str
    url: str
    status: int
    repo_id: str | None = None
    revision: str | None = None
    file: str | None = None
    range: str | None = None
    authorization: str | None = None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


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


class HubMirror:
    """A hub-compatible server on 127.0.0.1 serving ``{repo_id: directory}``.

    Use as a context manager (or :meth:`start` / :meth:`stop`). ``endpoint`` is the base URL to
    give ``huggingface_hub`` (``HF_ENDPOINT`` / ``HfApi(endpoint=...)``); ``commits`` maps each
    repo id to the commit ``main`` points at (kept current by :meth:`update_repo`).

    ``private`` repos answer 401 ``RepoNotFound`` unless the request carries one of ``tokens``
    (``Authorization: Bearer <token>``). ``gated`` repos show their metadata to anyone but
    refuse file downloads (401 ``GatedRepo`` without a token, 403 with a token not in
    ``tokens``).
    """

    def __init__(
        self,
        repos: Mapping[str, Path] | None = None,
        *,
        private: tuple[str, ...] | list[str] = (),
        gated: tuple[str, ...] | list[str] = (),
        tokens: tuple[str, ...] | list[str] = (),
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        lfs_redirect: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.private = set(private)
        self.gated = set(gated)
        self.tokens = set(tokens)
        self.lfs_threshold = lfs_threshold
        self.lfs_redirect = lfs_redirect
        self.requests: list[RequestRecord] = []
        self.faults: list[Fault] = []
        self._repos: dict[str, Repo] = {}
        self._lock = threading.RLock()
        self._host, self._port = host, port
        self._server: _Server | None = None
        self._cdn: _Server | None = None
        self._threads: list[threading.Thread] = []
        for repo_id, source in (repos or {}).items():
            self.add_repo(repo_id, source)

    # ---------------------------------------------------------------- lifecycle

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash)."""
        if self._server is None:
            raise RuntimeError("the mirror is not running: call start() or use it in a with block")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cdn_endpoint(self) -> str:
        """Where LFS downloads are redirected with ``lfs_redirect=True``: another port, so
        another origin, as the hub's CDN (``huggingface_hub`` does not follow a HEAD there)."""
        if self._cdn is None:
            raise RuntimeError("no CDN: the mirror is not running or lfs_redirect is off")
        host, port = self._cdn.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubMirror:
        """Listen and serve in background threads; returns ``self``."""
        if self._server is not None:
            return self
        self._server = self._serve(self._port)
        if self.lfs_redirect:
            self._cdn = self._serve(0)
        return self

    def _serve(self, port: int) -> _Server:
        server = _Server((self._host, port), _Handler)
        server.mirror = self
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"hub-mirror-{server.server_address[1]}",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)
        return server

    def stop(self) -> None:
        """Stop serving and close every open connection."""
        servers = [s for s in (self._server, self._cdn) if s is not None]
        self._server = self._cdn = None
        for server in servers:
            server.shutdown()
            server.close_all()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def __enter__(self) -> HubMirror:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- repos

    @property
    def commits(self) -> dict[str, str]:
        """repo id -> the commit ``main`` points at."""
        with self._lock:
            return {repo_id: repo.refs["main"] for repo_id, repo in self._repos.items()}

    def repo_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._repos)

    def add_repo(self, repo_id: str, source: Path | Mapping[str, bytes]) -> str:
        """Create (or replace) ``repo_id`` with the files of ``source`` (a directory or
        ``{path: bytes}``) as a single commit on ``main``; returns the commit."""
        with self._lock:
            self._repos.pop(repo_id, None)
            return self.update_repo(repo_id, source, replace=True, message="Initial commit")

    def update_repo(
        self,
        repo_id: str,
        source: Path | Mapping[str, bytes | Path | None],
        *,
        replace: bool | None = None,
        message: str = "Update files",
        ref: str = "main",
    ) -> str:
        """Commit new content to ``ref`` of ``repo_id`` ("upstream changed"); returns the new
        commit, which ``commits`` then reports. Older commits stay downloadable.

        ``source`` is a directory (replaces every file, unless ``replace=False``) or a mapping
        ``{path: bytes | Path | None}`` laid over the current files (``None`` deletes a file;
        ``replace=True`` drops the files not in the mapping).
        """
        is_dir = isinstance(source, Path | str)
        if replace is None:
            replace = is_dir
        new_files: dict[str, bytes | None]
        if is_dir:
            new_files = dict(read_dir(Path(source)))  # type: ignore[arg-type]
        else:
            new_files = {
                path: (value.read_bytes() if isinstance(value, Path) else value)
                for path, value in source.items()  # type: ignore[union-attr]
            }
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                repo = self._repos[repo_id] = Repo(repo_id, created=_now())
            parent = repo.refs.get(ref)
            files: dict[str, RepoFile] = (
                {} if replace or parent is None else dict(repo.commits[parent].files)
            )
            for path, data in sorted(new_files.items()):
                if data is None:
                    files.pop(path, None)
                else:
                    files[path] = self._make_file(path, data)
            digest = hashlib.sha1(usedforsecurity=False)
            digest.update(f"{repo_id}\n{parent}\n{message}\n{len(repo.commits)}\n".encode())
            for path in sorted(files):
                digest.update(f"{path} {files[path].blob_id}\n".encode())
            commit = Commit(
                digest.hexdigest(), parent, message, _now(), dict(sorted(files.items()))
            )
            repo.commits[commit.sha] = commit
            repo.refs[ref] = commit.sha
            return commit.sha

    def set_ref(self, repo_id: str, ref: str, commit: str) -> None:
        """Point branch or tag ``ref`` of ``repo_id`` at an existing ``commit``."""
        with self._lock:
            repo = self._repos[repo_id]
            if commit not in repo.commits:
                raise KeyError(f"{repo_id} has no commit {commit}")
            repo.refs[ref] = commit

    def remove_repo(self, repo_id: str) -> None:
        """Delete ``repo_id`` (requests for it then get 404 ``RepoNotFound``)."""
        with self._lock:
            self._repos.pop(repo_id, None)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, RepoFile]:
        """The files of ``repo_id`` at ``revision``."""
        with self._lock:
            commit = self._resolve(self._repos[repo_id], revision)
            if commit is None:
                raise KeyError(f"{repo_id} has no revision {revision!r}")
            return dict(commit.files)

    def file_url(self, repo_id: str, path: str, revision: str = "main") -> str:
        """``<endpoint>/<repo_id>/resolve/<revision>/<path>``."""
        return f"{self.endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"

    def _make_file(self, path: str, data: bytes) -> RepoFile:
        lfs = path.endswith(LFS_SUFFIXES) or len(data) >= self.lfs_threshold
        return RepoFile(path, data, hashlib.sha256(data).hexdigest(), lfs)

    @staticmethod
    def _resolve(repo: Repo, revision: str) -> Commit | None:
        sha = repo.refs.get(revision, revision)
        return repo.commits.get(sha)

    # ---------------------------------------------------------------- faults and log

    def add_fault(
        self,
        repo_id: str | None = None,
        path: str | None = None,
        *,
        api: bool = False,
        method: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        truncate_after: int | None = None,
        corrupt: bool = False,
        delay: float = 0.0,
        times: int | None = 1,
    ) -> Fault:
        """Make the next ``times`` matching requests misbehave (``times=None``: all of them).

        Matches file requests (``/resolve/``) for ``repo_id`` (any if ``None``) and ``path`` (a
        glob; any if ``None``), or API requests for the repo with ``api=True``; ``method``
        narrows to ``"GET"`` or ``"HEAD"``. Effects: ``delay`` seconds first; then ``status``
        answers that status (with ``headers``, e.g. ``{"Retry-After": "1"}``) instead of the
        file; otherwise ``truncate_after`` closes the connection after that many body bytes
        (the headers announce the full length) and ``corrupt`` flips one byte of the body.
        Returns the fault; its ``hits`` counts the requests it affected.
        """
        fault = Fault(
            repo_id=repo_id,
            path=path,
            api=api,
            method=method,
            status=status,
            headers=dict(headers or {}),
            truncate_after=truncate_after,
            corrupt=corrupt,
            delay=delay,
            times=times,
        )
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def downloads(self, repo_id: str | None = None) -> list[str]:
        """Paths of files served by successful ``GET .../resolve/...`` requests, in order."""
        with self._lock:
            return [
                r.file
                for r in self.requests
                if r.method == "GET"
                and r.file is not None
                and r.status in (200, 206)
                and (repo_id is None or r.repo_id == repo_id)
            ]

    def _take_fault(
        self, *, api: bool, repo_id: str | None, path: str | None, method: str
    ) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(api=api, repo_id=repo_id, path=path, method=method):
                    fault.hits += 1
                    return fault
        return None

    def _log(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    # ---------------------------------------------------------------- request routing

    def _split_repo(self, rest: str) -> tuple[str | None, str]:
        """Longest known repo id that ``rest`` starts with, and what follows it."""
        with self._lock:
            ids = sorted(self._repos, key=len, reverse=True)
        for repo_id in ids:
            if rest == repo_id or rest.startswith(repo_id + "/"):
                return repo_id, rest[len(repo_id) + 1 :]
        return None, rest


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    mirror: HubMirror

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _HubError(Exception):
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


_API = re.compile(r"^/api/models/(?P<rest>.+)$")
_CDN = re.compile(r"^/_cdn/(?P<rest>.+)/(?P<sha256>[0-9a-f]{64})$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hubless-test-hub/1"
    timeout = 30
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: requests are recorded in ``HubMirror.requests`` instead."""

    # ------------------------------------------------------------ entry points

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        mirror = self.server.mirror
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        self._record: dict[str, Any] = {"method": method, "url": self.path}
        try:
            body = self._read_body()
            if match := _API.match(path):
                self._api(mirror, method, match["rest"], query, body)
            elif match := _CDN.match(path):
                self._cdn(mirror, method, match["rest"], match["sha256"])
            elif "/resolve/" in path:
                self._resolve(mirror, method, path.lstrip("/"))
            else:
                raise _HubError(404, None, f"no route for {path}")
        except _HubError as err:
            self._error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            if "status" in self._record:
                mirror._log(RequestRecord(**self._record))

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _check_access(self, mirror: HubMirror, repo_id: str, *, download: bool) -> None:
        token = self._token()
        allowed = token is not None and token in mirror.tokens
        if repo_id in mirror.private and not allowed:
            raise _HubError(401, "RepoNotFound", "Repository not found")
        if download and repo_id in mirror.gated and not allowed:
            status = 401 if token is None else 403
            raise _HubError(
                status,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
            )

    def _repo_commit(self, mirror: HubMirror, repo_id: str | None, revision: str) -> Commit:
        if repo_id is None:
            raise _HubError(404, "RepoNotFound", "Repository not found")
        self._record.update(repo_id=repo_id, revision=revision)
        with mirror._lock:
            repo = mirror._repos.get(repo_id)
            commit = None if repo is None else mirror._resolve(repo, revision)
        if repo is None:
            raise _HubError(404, "RepoNotFound", "Repository not found")
        if commit is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    # ------------------------------------------------------------ API

    def _api(
        self, mirror: HubMirror, method: str, rest: str, query: dict[str, list[str]], body: bytes
    ) -> None:
        repo_id, tail = mirror._split_repo(rest)
        if repo_id is None:
            self._record["repo_id"] = rest
            raise _HubError(404, "RepoNotFound", "Repository not found")
        self._record["repo_id"] = repo_id
        self._check_access(mirror, repo_id, download=False)
        fault = mirror._take_fault(api=True, repo_id=repo_id, path=None, method=method)
        if fault is not None:
            time.sleep(fault.delay)
            if fault.status is not None:
                raise _HubError(fault.status, None, f"injected HTTP {fault.status}")

        kind, _, arg = tail.partition("/")
        flag = lambda name: (query.get(name) or ["false"])[-1].lower() in ("1", "true")  # noqa: E731
        if kind in ("", "revision") and method in ("GET", "HEAD"):
            revision = unquote(arg) if kind == "revision" else "main"
            commit = self._repo_commit(mirror, repo_id, revision)
            self._json(self._model_info(mirror, repo_id, commit, flag("blobs")), method)
        elif kind == "tree" and method == "GET":
            revision, _, sub = arg.partition("/")
            commit = self._repo_commit(mirror, repo_id, unquote(revision))
            self._json(_tree(commit, sub.strip("/"), recursive=flag("recursive")), method)
        elif kind == "paths-info" and method == "POST":
            commit = self._repo_commit(mirror, repo_id, unquote(arg))
            form = parse_qs(body.decode("utf-8"))
            if not form and body:
                form = {"paths": json.loads(body).get("paths", [])}
            self._json(_paths_info(commit, form.get("paths", [])), method)
        elif kind == "refs" and method == "GET":
            self._json(self._refs(mirror, repo_id), method)
        elif kind == "commits" and method == "GET":
            commit = self._repo_commit(mirror, repo_id, unquote(arg or "main"))
            self._json(self._history(mirror, repo_id, commit), method)
        else:
            raise _HubError(404, None, f"no API route for {tail!r}")

    def _model_info(
        self, mirror: HubMirror, repo_id: str, commit: Commit, blobs: bool
    ) -> dict[str, Any]:
        with mirror._lock:
            created = mirror._repos[repo_id].created
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
            "private": repo_id in mirror.private,
            "gated": "manual" if repo_id in mirror.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [library],
            "library_name": library,
            "siblings": siblings,
            "usedStorage": sum(f.size for f in commit.files.values()),
        }

    def _refs(self, mirror: HubMirror, repo_id: str) -> dict[str, Any]:
        with mirror._lock:
            refs = dict(mirror._repos[repo_id].refs)
        return {
            "branches": [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
                for name, sha in sorted(refs.items())
            ],
            "converts": [],
            "tags": [],
        }

    def _history(self, mirror: HubMirror, repo_id: str, commit: Commit) -> list[dict[str, Any]]:
        with mirror._lock:
            commits = mirror._repos[repo_id].commits
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

    # ------------------------------------------------------------ files

    def _resolve(self, mirror: HubMirror, method: str, rest: str) -> None:
        if method not in ("GET", "HEAD"):
            raise _HubError(405, None, "method not allowed")
        prefix, _, after = rest.partition("/resolve/")
        repo_id, _ = mirror._split_repo(prefix)
        if repo_id is None or repo_id != prefix:
            self._record["repo_id"] = prefix
            raise _HubError(404, "RepoNotFound", "Repository not found")
        revision, _, file_path = after.partition("/")
        self._record["file"] = file_path
        self._record["range"] = self.headers.get("Range")
        self._record["authorization"] = self.headers.get("Authorization")
        self._check_access(mirror, repo_id, download=True)
        commit = self._repo_commit(mirror, repo_id, revision)
        file = commit.files.get(file_path)
        if file is None:
            raise _HubError(404, "EntryNotFound", f"{file_path} does not exist on {revision!r}")
        fault = mirror._take_fault(api=False, repo_id=repo_id, path=file_path, method=method)
        if fault is not None:
            time.sleep(fault.delay)
            if fault.status is not None:
                extra = dict(fault.headers)
                raise _HubError(fault.status, extra.pop("X-Error-Code", None), "injected", extra)
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{file.etag}"'}
        if file.lfs:
            headers["X-Linked-Etag"] = f'"{file.sha256}"'
            headers["X-Linked-Size"] = str(file.size)
        if file.lfs and mirror.lfs_redirect:
            location = f"{mirror.cdn_endpoint}/_cdn/{repo_id}/{file.sha256}"
            self._send(302, {**headers, "Location": location, "Content-Length": "0"}, b"", method)
            return
        self._send_file(file.data, headers, method, fault)

    def _cdn(self, mirror: HubMirror, method: str, repo_id: str, sha256: str) -> None:
        self._record.update(repo_id=repo_id, range=self.headers.get("Range"))
        with mirror._lock:
            repo = mirror._repos.get(repo_id)
            found = None
            for commit in repo.commits.values() if repo else ():
                for file in commit.files.values():
                    if file.sha256 == sha256:
                        found = file
        if found is None:
            raise _HubError(404, None, "no such object")
        self._record["file"] = found.path
        fault = mirror._take_fault(api=False, repo_id=repo_id, path=found.path, method=method)
        if fault is not None:
            time.sleep(fault.delay)
            if fault.status is not None:
                raise _HubError(fault.status, None, "injected", dict(fault.headers))
        self._send_file(found.data, {"ETag": f'"{sha256}"'}, method, fault)

    def _send_file(
        self, data: bytes, headers: dict[str, str], method: str, fault: Fault | None
    ) -> None:
        size = len(data)
        headers = {
            **headers,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        status, start, end = 200, 0, size - 1
        wanted = self.headers.get("Range")
        if wanted:
            parsed = _parse_range(wanted, size)
            if parsed is None:
                self._send(416, {**headers, "Content-Range": f"bytes */{size}"}, b"", method)
                return
            status, (start, end) = 206, parsed
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        body = data[start : end + 1]
        if fault is not None and fault.corrupt and body:
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
        headers["Content-Length"] = str(len(body))
        if fault is not None and fault.truncate_after is not None and method == "GET":
            self._record["status"] = status
            self._send_headers(status, headers)
            self.wfile.write(body[: fault.truncate_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(status, headers, body, method)

    # ------------------------------------------------------------ responses

    def _json(self, data: Any, method: str) -> None:
        body = json.dumps(data).encode()
        self._send(200, {"Content-Type": "application/json; charset=utf-8"}, body, method)

    def _error(self, err: _HubError) -> None:
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if err.code:
            headers["X-Error-Code"] = err.code
        headers["X-Error-Message"] = err.message
        headers.update(err.extra)
        body = json.dumps({"error": err.message}).encode()
        self._send(err.status, headers, body, self.command)

    def _send(self, status: int, headers: dict[str, str], body: bytes, method: str) -> None:
        headers.setdefault("Content-Length", str(len(body)))
        self._record["status"] = status
        self._send_headers(status, headers)
        if method != "HEAD" and body:
            self.wfile.write(body)

    def _send_headers(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status, HTTPStatus(status).phrase if status in _PHRASES else None)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()


_PHRASES = {s.value for s in HTTPStatus}


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
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


def _tree(commit: Commit, sub: str, *, recursive: bool) -> list[dict[str, Any]]:
    directories = _directories(commit)
    if sub and sub not in directories:
        raise _HubError(404, "EntryNotFound", f"{sub} does not exist")
    prefix = f"{sub}/" if sub else ""

    def wanted(path: str) -> bool:
        return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

    entries = [_dir_info(commit, d) for d in sorted(directories) if wanted(d)]
    entries += [_path_info(f) for p, f in commit.files.items() if wanted(p)]
    return entries


def _paths_info(commit: Commit, paths: list[str]) -> list[dict[str, Any]]:
    directories = _directories(commit)
    out = []
    for path in paths:
        path = path.strip("/")
        if path in commit.files:
            out.append(_path_info(commit.files[path]))
        elif path in directories:
            out.append(_dir_info(commit, path))
    return out


def iter_repo_args(values: list[str]) -> Iterator[tuple[str, Path]]:
    """Parse ``org/name=DIR`` command-line arguments."""
    for value in values:
        repo_id, sep, directory = value.partition("=")
        if not sep:
            raise SystemExit(f"expected org/name=DIR, got {value!r}")
        yield repo_id, Path(directory)


def main(argv: list[str] | None = None) -> None:
    """Serve directories as hub repos until interrupted (prints the endpoint first)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repos", nargs="*", help="org/name=DIR")
    parser.add_argument("--tiny-models", type=Path, help="build/cache the tiny models here, serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    repos = dict(iter_repo_args(args.repos))
    if args.tiny_models:
        from tests.support.tiny_models import cached_tiny_models

        repos.update({m.repo_id: m.path for m in cached_tiny_models(args.tiny_models).values()})
    with HubMirror(repos, host=args.host, port=args.port) as mirror:
        print(mirror.endpoint, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
