"""A small in-process stand-in for the hub API the fetcher uses (127.0.0.1, stdlib threads).

Serves ``/api/models/<repo>/revision/<rev>`` (commit sha and per-file size, git blob id and
LFS sha256, as ``HfApi.model_info(files_metadata=True)`` expects) and
``/<repo>/resolve/<rev>/<path>`` with HTTP Range. Unlike a read-only mirror, tests can push new
commits (a branch that moves), gate a repository or require a token.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".bin", ".h5", ".msgpack", ".onnx", ".ot", ".safetensors")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    token: str | None = None


class FakeHub:
    """``with FakeHub() as hub: hub.push(repo_id, files) ... hub.endpoint``."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def push(self, repo_id: str, files: dict[str, bytes], revision: str = "main") -> str:
        """Commit ``files`` (the whole tree) to ``revision``; returns the new commit sha."""
        repo = self.repos.setdefault(repo_id, Repo())
        digest = hashlib.sha1(repo_id.encode(), usedforsecurity=False)
        digest.update(str(len(repo.commits)).encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
        commit = digest.hexdigest()
        repo.commits[commit] = dict(files)
        repo.refs[revision] = commit
        return commit

    def push_dir(self, repo_id: str, directory: Path) -> str:
        files = {
            p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(Path(directory).rglob("*"))
            if p.is_file()
        }
        return self.push(repo_id, files)

    def files_at(self, repo_id: str, revision: str) -> dict[str, bytes] | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        commit = repo.refs.get(revision, revision)
        return repo.commits.get(commit)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    api = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)$")
    resolve = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return None

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _refuse(self, repo_id: str) -> bool:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._send(401, b"{}", {"X-Error-Code": "RepoNotFound"})
                return True
            auth = self.headers.get("Authorization", "")
            if repo.token is not None and auth != f"Bearer {repo.token}":
                code = "GatedRepo" if repo.gated else "RepoNotFound"
                self._send(401 if not auth else 403, b"{}", {"X-Error-Code": code})
                return True
            return False

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            if m := api.match(path):
                self._api(m["repo"], m["rev"])
            elif m := resolve.match(path):
                self._resolve(m["repo"], m["rev"], m["path"])
            else:
                self._send(404)

        def _api(self, repo_id: str, revision: str) -> None:
            if self._refuse(repo_id):
                return
            repo = hub.repos[repo_id]
            commit = repo.refs.get(revision, revision)
            if commit not in repo.commits:
                self._send(404, b"{}", {"X-Error-Code": "RevisionNotFound"})
                return
            siblings = []
            for name, data in sorted(repo.commits[commit].items()):
                sibling: dict = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
                if name.endswith(LFS_SUFFIXES):
                    sha = hashlib.sha256(data).hexdigest()
                    sibling["lfs"] = {"sha256": sha, "size": len(data), "pointerSize": 134}
                siblings.append(sibling)
            body = {"id": repo_id, "modelId": repo_id, "sha": commit, "siblings": siblings}
            self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

        def _resolve(self, repo_id: str, revision: str, name: str) -> None:
            if self._refuse(repo_id):
                return
            files = hub.files_at(repo_id, revision)
            if files is None or name not in files:
                self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                return
            data = files[name]
            ranged = re.match(r"^bytes=(\d+)-$", self.headers.get("Range", ""))
            if ranged:
                start = int(ranged.group(1))
                if start >= len(data):
                    self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
                content_range = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self._send(206, data[start:], {"Content-Range": content_range})
                return
            self._send(200, data, {"Accept-Ranges": "bytes"})

    return Handler
