"""Two fetchers on one volume, and fetchers killed mid-download: never a half model."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from hubless_fakehub.proxy import Fault, FaultProxy
from hubless_fetcher.errors import ExitCode
from hubless_volume import Manifest
from tests.fetcher.conftest import Run, spawn

NAMES = ("dialogpt-small", "distilbert-sst2")


def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_two_fetchers_at_once_one_works_the_other_waits(
    run: Run, proxy: FaultProxy, env: dict[str, str], models_dir: Path
) -> None:
    proxy.faults.append(Fault("delay", r"DialoGPT-small/.*/model\.safetensors", stall=5))
    env = {**env, "HUBLESS_TIMEOUT": "30"}
    first = spawn(env, "fetch", *NAMES)
    _wait_for(lambda: any(r.fault == "delay" for r in proxy.log))  # first holds the lock 5 s
    second = spawn(env, "fetch", *NAMES)
    _, err1 = first.communicate(timeout=60)
    out2, err2 = second.communicate(timeout=60)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert "waiting" in err2
    assert out2.count("up to date") == 2
    manifest = Manifest.load(models_dir)
    assert sorted(manifest.models) == sorted(NAMES)
    files = sum(len(manifest.models[n].files) for n in NAMES)
    assert len(proxy.file_requests()) == files  # every file transferred once
    assert run("verify", "--deep").code == ExitCode.OK


def test_killed_mid_file_leaves_no_half_model_and_resumes(
    run: Run, proxy: FaultProxy, env: dict[str, str], models_dir: Path
) -> None:
    proxy.faults.append(Fault("drip", r"DialoGPT-small/.*/model\.safetensors", at=40_000, stall=30))
    proc = spawn({**env, "HUBLESS_TIMEOUT": "60"}, "fetch", *NAMES)
    _wait_for(lambda: any(r.fault == "drip" for r in proxy.log))
    _wait_for(lambda: any(p.stat().st_size for p in (models_dir / ".staging").glob("*")))
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)

    manifest = Manifest.load(models_dir)
    assert "dialogpt-small" not in manifest.models
    assert not (models_dir / "hubless-manifest.json").with_suffix(".json.tmp").exists()
    for entry in manifest.models.values():  # whatever did get in is complete
        assert run("verify", "--deep", entry.name).code == ExitCode.OK

    proxy.faults.clear()
    result = run("fetch", *NAMES)
    assert result.code == ExitCode.OK, result.err
    resumed = [r for r in proxy.file_requests() if r.range]
    assert resumed and resumed[-1].range.startswith("bytes=")
    assert int(resumed[-1].range[6:-1]) >= 40_000 - 65_536
    assert run("verify", "--deep").code == ExitCode.OK


def test_sigterm_exits_130_promptly_with_nothing_half_installed(
    proxy: FaultProxy, env: dict[str, str], models_dir: Path
) -> None:
    proxy.faults.append(Fault("drip", "model.safetensors", times=-1, at=1000, stall=30))
    proc = spawn({**env, "HUBLESS_TIMEOUT": "60"}, "fetch", "dialogpt-small")
    _wait_for(lambda: any(r.path.endswith("/model.safetensors") for r in proxy.log))
    time.sleep(0.3)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert time.monotonic() - started < 10
    assert "interrupted" in err
    assert "dialogpt-small" not in Manifest.load(models_dir).models
