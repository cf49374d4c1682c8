"""The fake hub's HTTP side: routes, access checks, fault application and file responses.

One :class:`Handler` per request, in a :class:`Server` thread per connection. It routes
``/api/models/...`` (JSON built by :mod:`hubless_fakehub.api`), ``/{repo}/resolve/{rev}/{path}``
(``HEAD``/``GET`` with ``Range``) and ``/_cdn/...`` (LFS redirect target), reads repos from the
owning :class:`~hubless_fakehub.HubMirror` under its lock, applies its faults and records every
answered request in ``HubMirror.requests``.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from hubless_fakehub import api
from hubless_fakehub.api import HubError
from hubless_fakehub.faults import Fault, RequestRecord
from hubless_fakehub.repos import Commit

if TYPE_CHECKING:
    from hubless_fakehub.server import HubMirror


class Server(ThreadingHTTPServer):
    """A threading HTTP server that can close its open connections on stop."""

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


_API = re.compile(r"^/api/models/(?P<rest>.+)$")
_CDN = re.compile(r"^/_cdn/(?P<rest>.+)/(?P<sha256>[0-9a-f]{64})$")
_PHRASES = {s.value for s in HTTPStatus}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hubless-test-hub/1"
    timeout = 30
    server: Server

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
                raise HubError(404, None, f"no route for {path}")
        except HubError as err:
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
            raise HubError(401, "RepoNotFound", "Repository not found")
        if download and repo_id in mirror.gated and not allowed:
            status = 401 if token is None else 403
            raise HubError(
                status,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
            )

    def _repo_commit(self, mirror: HubMirror, repo_id: str | None, revision: str) -> Commit:
        if repo_id is None:
            raise HubError(404, "RepoNotFound", "Repository not found")
        self._record.update(repo_id=repo_id, revision=revision)
        with mirror._lock:
            repo = mirror._repos.get(repo_id)
            commit = None if repo is None else repo.resolve(revision)
        if repo is None:
            raise HubError(404, "RepoNotFound", "Repository not found")
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    # ------------------------------------------------------------ API

    def _api(
        self, mirror: HubMirror, method: str, rest: str, query: dict[str, list[str]], body: bytes
    ) -> None:
        repo_id, tail = mirror._split_repo(rest)
        if repo_id is None:
            self._record["repo_id"] = rest
            raise HubError(404, "RepoNotFound", "Repository not found")
        self._record["repo_id"] = repo_id
        self._check_access(mirror, repo_id, download=False)
        fault = mirror._take_fault(api=True, repo_id=repo_id, path=None, method=method)
        if fault is not None:
            time.sleep(fault.delay)
            if fault.status is not None:
                raise HubError(fault.status, None, f"injected HTTP {fault.status}")

        kind, _, arg = tail.partition("/")
        flag = lambda name: (query.get(name) or ["false"])[-1].lower() in ("1", "true")  # noqa: E731
        if kind in ("", "revision") and method in ("GET", "HEAD"):
            revision = unquote(arg) if kind == "revision" else "main"
            commit = self._repo_commit(mirror, repo_id, revision)
            with mirror._lock:
                created = mirror._repos[repo_id].created
            info = api.model_info(
                repo_id,
                commit,
                created=created,
                private=repo_id in mirror.private,
                gated=repo_id in mirror.gated,
                blobs=flag("blobs"),
            )
            self._json(info, method)
        elif kind == "tree" and method == "GET":
            revision, _, sub = arg.partition("/")
            commit = self._repo_commit(mirror, repo_id, unquote(revision))
            self._json(api.tree(commit, sub.strip("/"), recursive=flag("recursive")), method)
        elif kind == "paths-info" and method == "POST":
            commit = self._repo_commit(mirror, repo_id, unquote(arg))
            form = parse_qs(body.decode("utf-8"))
            if not form and body:
                form = {"paths": json.loads(body).get("paths", [])}
            self._json(api.paths_info(commit, form.get("paths", [])), method)
        elif kind == "refs" and method == "GET":
            with mirror._lock:
                branches = dict(mirror._repos[repo_id].refs)
            self._json(api.refs(branches), method)
        elif kind == "commits" and method == "GET":
            commit = self._repo_commit(mirror, repo_id, unquote(arg or "main"))
            with mirror._lock:
                log = api.history(mirror._repos[repo_id].commits, commit)
            self._json(log, method)
        else:
            raise HubError(404, None, f"no API route for {tail!r}")

    # ------------------------------------------------------------ files

    def _resolve(self, mirror: HubMirror, method: str, rest: str) -> None:
        if method not in ("GET", "HEAD"):
            raise HubError(405, None, "method not allowed")
        prefix, _, after = rest.partition("/resolve/")
        repo_id, _ = mirror._split_repo(prefix)
        if repo_id is None or repo_id != prefix:
            self._record["repo_id"] = prefix
            raise HubError(404, "RepoNotFound", "Repository not found")
        revision, _, file_path = after.partition("/")
        self._record["file"] = file_path
        self._record["range"] = self.headers.get("Range")
        self._record["authorization"] = self.headers.get("Authorization")
        self._check_access(mirror, repo_id, download=True)
        commit = self._repo_commit(mirror, repo_id, revision)
        file = commit.files.get(file_path)
        if file is None:
            raise HubError(404, "EntryNotFound", f"{file_path} does not exist on {revision!r}")
        fault = mirror._take_fault(api=False, repo_id=repo_id, path=file_path, method=method)
        if fault is not None:
            time.sleep(fault.delay)
            if fault.status is not None:
                extra = dict(fault.headers)
                raise HubError(fault.status, extra.pop("X-Error-Code", None), "injected", extra)
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
            raise HubError(404, None, "no such object")
        self._record["file"] = found.path
        fault = mirror._take_fault(api=False, repo_id=repo_id, path=found.path, method=method)
        if fault is not None:
            time.sleep(fault.delay)
            if fault.status is not None:
                raise HubError(fault.status, None, "injected", dict(fault.headers))
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
            parsed = api.parse_range(wanted, size)
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

    def _error(self, err: HubError) -> None:
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
