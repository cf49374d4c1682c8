"""Helpers of the hostile-input tests: hand-made bundles, a picture of a folder tree, and the
CLI run with no hub at all (an unreachable endpoint, offline)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hubless_fetcher.bundle import BUNDLE_INDEX
from hubless_fetcher.cli import main

COMMIT_1 = "1" * 40
COMMIT_2 = "2" * 40
UNREACHABLE = "http://127.0.0.1:9"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_json(
    name: str = "m",
    files: dict[str, bytes] | None = None,
    *,
    repo_id: str | None = None,
    commit: str = COMMIT_1,
    revision: str = "main",
    task: str = "emotion",
) -> dict[str, Any]:
    """A manifest/bundle entry for ``files`` (``{path: bytes}``)."""
    files = {"config.json": b'{"a": 1}\n'} if files is None else files
    return {
        "name": name,
        "repo_id": repo_id or f"org/{name}",
        "revision": revision,
        "commit": commit,
        "task": task,
        "files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()],
        "installed_at": "2026-01-01T00:00:00+00:00",
        "verified_at": "2026-01-01T00:00:00+00:00",
    }


def index_json(*entries: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 1,
        "tasks": {},
        "models": {e["name"] if isinstance(e.get("name"), str) else "?": e for e in entries},
    }


Member = tuple[tarfile.TarInfo, bytes | None]


def file_member(name: str, data: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link_member(name: str, target: str, *, hard: bool = False) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def bundle_members(index: dict[str, Any] | bytes, blobs: list[bytes]) -> list[Member]:
    """The index first (JSON, or raw bytes), then ``blobs/<sha256>`` of each blob."""
    raw = index if isinstance(index, bytes) else json.dumps(index).encode()
    return [file_member(BUNDLE_INDEX, raw)] + [file_member(f"blobs/{sha(b)}", b) for b in blobs]


def write_tar(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def tree(root: Path, skip: Path | None = None) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root`` (not under ``skip``): a link's target, a folder, or a file's
    size and sha256. Two pictures are equal iff nothing was created, deleted or changed."""
    picture: dict[str, tuple[Any, ...]] = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            picture[rel] = ("link", str(path.readlink()))
        elif path.is_dir():
            picture[rel] = ("dir",)
        else:
            picture[rel] = ("file", path.stat().st_size, sha(path.read_bytes()))
    return picture


@dataclass
class Result:
    code: int
    out: str
    err: str

    def refused(self, code: int, *fragments: str) -> None:
        """Exit ``code``, one ERROR line naming every fragment, and no traceback."""
        assert self.code == code, (self.code, self.out, self.err)
        assert "Traceback" not in self.err + self.out
        errors = [line for line in self.err.splitlines() if " ERROR " in f" {line}"]
        assert any(all(f in line for f in fragments) for line in errors), self.err


Cli = Callable[..., Result]


def make_cli(
    capsys: pytest.CaptureFixture[str], models_dir: Path, catalog: Path | None = None
) -> Cli:
    """``cli(*argv, free_space=None, **env)``: the CLI in-process, offline by default, with a
    hub endpoint nothing listens on."""

    def call(*argv: str, free_space: Callable[[Path], int] | None = None, **env: str) -> Result:
        base = {
            "HUBLESS_MODELS_DIR": str(models_dir),
            "HF_ENDPOINT": UNREACHABLE,
            "HF_HUB_OFFLINE": "1",
            "HUBLESS_RETRIES": "1",
            "HUBLESS_DISK_MARGIN": "0",
        }
        if catalog is not None:
            base["HUBLESS_CATALOG"] = str(catalog)
        capsys.readouterr()
        kwargs = {"free_space": free_space} if free_space else {}
        code = main(list(argv), env={**base, **env}, **kwargs)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return call
