"""``lock`` pins commits and hashes; ``fetch --locked`` installs exactly that or refuses."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hubless_fakehub import HubMirror
from hubless_fakehub.proxy import FaultProxy
from hubless_fakehub.tiny import TinyModel
from hubless_fetcher.errors import ExitCode
from hubless_fetcher.lockfile import LockFile
from hubless_volume import Manifest
from tests.fetcher.conftest import Run

REPO = "microsoft/DialoGPT-small"


def test_lock_then_fetch_locked_installs_exactly_the_lock(
    run: Run,
    hub: HubMirror,
    proxy: FaultProxy,
    catalog: Path,
    models_dir: Path,
    tiny_models: dict[str, TinyModel],
) -> None:
    result = run("lock")
    assert result.code == ExitCode.OK, result.err
    lock_path = catalog.with_name("catalog.lock.json")
    lock = LockFile.load(lock_path)
    assert sorted(lock.models) == sorted(tiny_models)
    locked = lock.models["dialogpt-small"]
    assert locked.commit == hub.commits[REPO]
    for record in locked.files:  # every file has its real sha256, LFS or not
        data = (tiny_models["dialogpt-small"].path / record.path).read_bytes()
        assert record.size == len(data)
        assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert json.loads(lock_path.read_text())["version"] == 1

    hub.update_repo(REPO, {"config.json": b'{"moved": true}\n'})  # main moves on

    fetched = run("fetch", "--locked", "dialogpt-small")
    assert fetched.code == ExitCode.OK, fetched.err
    entry = Manifest.load(models_dir).models["dialogpt-small"]
    assert entry.commit == locked.commit
    assert {(f.path, f.sha256) for f in entry.files} == {(f.path, f.sha256) for f in locked.files}

    before = len(proxy.log)
    assert run("fetch", "--locked", "dialogpt-small").code == ExitCode.OK
    assert len(proxy.log) == before  # already exactly the lock: no network


def test_fetch_locked_refuses_when_upstream_differs(
    run: Run, hub: HubMirror, models_dir: Path
) -> None:
    assert run("lock").code == ExitCode.OK
    files = {path: f.data for path, f in hub.files(REPO).items()}
    files["model.safetensors"] += b"\0"
    hub.remove_repo(REPO)  # history rewritten upstream: the locked commit is gone
    hub.add_repo(REPO, files)
    result = run("fetch", "--locked", "dialogpt-small", "distilbert-sst2")
    assert result.code == ExitCode.LOCK_MISMATCH
    assert "no longer exists upstream" in result.err
    assert sorted(Manifest.load(models_dir).models) == ["distilbert-sst2"]


def test_fetch_locked_needs_a_lock_in_step_with_the_catalog(run: Run, catalog: Path) -> None:
    missing = run("fetch", "--locked")
    assert missing.code == ExitCode.USAGE and "hubless-fetch lock" in missing.err
    assert run("lock").code == ExitCode.OK
    catalog.write_text(catalog.read_text().replace('revision = "main"', 'revision = "v2"', 1))
    stale = run("fetch", "--locked")
    assert stale.code == ExitCode.LOCK_MISMATCH
    assert "out of date" in stale.err and "emotion-english-distilroberta" in stale.err


def test_lock_writes_nothing_when_a_model_fails(run: Run, catalog: Path) -> None:
    catalog.write_text(catalog.read_text().replace("microsoft/DialoGPT-small", "nobody/nothing"))
    result = run("lock")
    assert result.code == ExitCode.ACCESS
    assert not catalog.with_name("catalog.lock.json").exists()
    assert run("lock", HF_HUB_OFFLINE="1").code == ExitCode.OFFLINE_MISSING
