"""The fake hub's front object, :class:`HubMirror`: lifecycle, repos, faults and request log.

Tests and the demo use only this class: start it (a context manager), give ``endpoint`` to
``huggingface_hub`` or the fetcher as ``HF_ENDPOINT``, change repos ("upstream changed"), script
faults, and read back what was requested. The HTTP routes live in :mod:`hubless_fakehub.handler`,
the stored data in :mod:`hubless_fakehub.repos`; see the package docstring for what is served.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from hubless_fakehub.faults import Fault, RequestRecord
from hubless_fakehub.handler import Handler, Server
from hubless_fakehub.repos import (
    DEFAULT_LFS_THRESHOLD,
    Commit,
    Repo,
    RepoFile,
    commit_sha,
    make_file,
    now,
    read_dir,
)


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
        self._server: Server | None = None
        self._cdn: Server | None = None
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

    def _serve(self, port: int) -> Server:
        server = Server((self._host, port), Handler)
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
                repo = self._repos[repo_id] = Repo(repo_id, created=now())
            parent = repo.refs.get(ref)
            files: dict[str, RepoFile] = (
                {} if replace or parent is None else dict(repo.commits[parent].files)
            )
            for path, data in sorted(new_files.items()):
                if data is None:
                    files.pop(path, None)
                else:
                    files[path] = make_file(path, data, self.lfs_threshold)
            sha = commit_sha(repo_id, parent, message, len(repo.commits), files)
            commit = Commit(sha, parent, message, now(), dict(sorted(files.items())))
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
            commit = self._repos[repo_id].resolve(revision)
            if commit is None:
                raise KeyError(f"{repo_id} has no revision {revision!r}")
            return dict(commit.files)

    def file_url(self, repo_id: str, path: str, revision: str = "main") -> str:
        """``<endpoint>/<repo_id>/resolve/<revision>/<path>``."""
        return f"{self.endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"

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
