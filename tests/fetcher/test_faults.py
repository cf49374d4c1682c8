"""Retries, resume and integrity under injected faults; each test checks the end state."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hubless_fakehub import HubMirror
from hubless_fakehub.proxy import Fault, FaultProxy
from hubless_fetcher.download import Downloader
from hubless_fetcher.errors import ExitCode
from hubless_volume import Manifest
from tests.fetcher.conftest import Run


def _installed_and_sound(run: Run, models_dir: Path, name: str) -> None:
    assert name in Manifest.load(models_dir).models
    assert run("verify", "--deep", name).code == ExitCode.OK


def _past_the_check(proxy: FaultProxy) -> list:
    """The requests after the fetcher's connectivity check (one ``HEAD /``)."""
    check, *rest = proxy.log
    assert (check.method, check.path) == ("HEAD", "/")
    return rest


def test_429_retry_after_is_honoured(run: Run, proxy: FaultProxy, models_dir: Path) -> None:
    proxy.faults += [
        Fault("status", "/api/models/microsoft/DialoGPT-small", status=429, retry_after="1"),
        Fault("status", "DialoGPT-small/resolve/", status=503, retry_after="0"),
    ]
    started = time.monotonic()
    result = run("fetch", "dialogpt-small")
    assert result.code == ExitCode.OK, result.err
    assert time.monotonic() - started >= 1.0  # backoff is 10 ms: the wait came from Retry-After
    assert [r.status for r in _past_the_check(proxy)[:2]] == [429, 200]
    assert "HTTP 429" in result.err and "HTTP 503" in result.err
    _installed_and_sound(run, models_dir, "dialogpt-small")


def test_connection_cut_mid_file_resumes_with_range(
    run: Run, proxy: FaultProxy, models_dir: Path
) -> None:
    proxy.faults.append(Fault("cut", "DialoGPT-small/resolve/", at=0))  # warm-up: cut at once
    proxy.faults.append(Fault("cut", "model.safetensors", at=50_000))
    result = run("fetch", "dialogpt-small", HUBLESS_JOBS="1")
    assert result.code == ExitCode.OK, result.err
    weights = [r for r in proxy.file_requests() if r.path.endswith("/model.safetensors")]
    assert [r.range for r in weights] == [None, "bytes=50000-"]
    assert [r.status for r in weights] == [200, 206]
    _installed_and_sound(run, models_dir, "dialogpt-small")


def test_flipped_byte_is_detected_and_refetched(
    run: Run, proxy: FaultProxy, models_dir: Path
) -> None:
    proxy.faults += [
        Fault("flip", "model.safetensors", at=10),  # an LFS file: sha256
        Fault("flip", "vocab.json", at=3),  # a git (non-LFS) file: git blob id
    ]
    result = run("fetch", "dialogpt-small")
    assert result.code == ExitCode.OK, result.err
    assert "sha256" in result.err and "git blob id" in result.err
    weights = [r for r in proxy.file_requests() if r.path.endswith("/model.safetensors")]
    assert len(weights) == 2 and weights[1].range is None  # bad bytes are never resumed
    _installed_and_sound(run, models_dir, "dialogpt-small")


def test_file_corrupt_every_time_fails_loudly_and_installs_nothing_of_it(
    run: Run, proxy: FaultProxy, models_dir: Path
) -> None:
    proxy.faults.append(Fault("flip", "DialoGPT-small/resolve/", times=-1, at=5))
    result = run("fetch", "dialogpt-small", "distilbert-sst2")
    assert result.code == ExitCode.FAILED
    assert "dialogpt-small" in result.err and "giving up" in result.err
    assert "failed" in result.out
    assert sorted(Manifest.load(models_dir).models) == ["distilbert-sst2"]  # the good one stays
    _installed_and_sound(run, models_dir, "distilbert-sst2")
    attempts = [r for r in proxy.file_requests() if r.path.endswith("DialoGPT-small/resolve/")]
    assert len(attempts) <= 4 * 7  # bounded: HUBLESS_RETRIES per file


def test_slow_drip_past_the_timeout_is_retried(
    run: Run, proxy: FaultProxy, models_dir: Path
) -> None:
    proxy.faults.append(Fault("drip", "model.safetensors", at=1000, stall=3))
    started = time.monotonic()
    result = run("fetch", "dialogpt-small", HUBLESS_TIMEOUT="1")
    assert result.code == ExitCode.OK, result.err
    assert time.monotonic() - started < 10
    assert "ReadTimeout" in result.err
    _installed_and_sound(run, models_dir, "dialogpt-small")


def test_server_errors_until_attempts_run_out(
    run: Run, proxy: FaultProxy, models_dir: Path
) -> None:
    proxy.faults.append(Fault("status", "/api/models/", times=-1, status=503))
    result = run("fetch", "dialogpt-small")
    assert result.code == ExitCode.FAILED
    assert "after 4 attempts" in result.err
    assert len(_past_the_check(proxy)) == 4
    assert Manifest.load(models_dir).models == {}


def test_missing_repo_fails_at_once_with_advice(
    run: Run, proxy: FaultProxy, catalog: Path, models_dir: Path
) -> None:
    text = catalog.read_text().replace("microsoft/DialoGPT-small", "microsoft/DialoGPT-tiny")
    catalog.write_text(text)
    result = run("fetch", "dialogpt-small", "distilbert-sst2")
    assert result.code == ExitCode.ACCESS
    assert "repository not found" in result.err and "HF_TOKEN" in result.err
    assert len([r for r in proxy.log if "DialoGPT-tiny" in r.path]) == 1  # no retries
    assert sorted(Manifest.load(models_dir).models) == ["distilbert-sst2"]


def test_missing_revision(run: Run, catalog: Path) -> None:
    text = catalog.read_text().replace(
        'repo_id = "microsoft/DialoGPT-small"\nrevision = "main"',
        'repo_id = "microsoft/DialoGPT-small"\nrevision = "v9"',
    )
    catalog.write_text(text)
    missing = run("fetch", "dialogpt-small")
    assert missing.code == ExitCode.ACCESS and "revision 'v9' does not exist" in missing.err


def test_gated_and_private_repos_need_a_token_that_is_never_logged(
    run: Run, hub_mirror_factory: Callable[..., HubMirror], models_dir: Path
) -> None:
    token = "hf_secret_token_value"
    mirror = hub_mirror_factory(
        gated=["microsoft/DialoGPT-medium"],
        private=["microsoft/DialoGPT-small"],
        tokens=[token],
        lfs_redirect=True,
    )
    for name, words in (("dialogpt-medium", "gated"), ("dialogpt-small", "not found")):
        refused = run("fetch", name, HF_ENDPOINT=mirror.endpoint)
        assert refused.code == ExitCode.ACCESS and words in refused.err
        assert "HF_TOKEN" in refused.err
    wrong = run("fetch", "dialogpt-medium", HF_ENDPOINT=mirror.endpoint, HF_TOKEN="hf_wrong")
    assert wrong.code == ExitCode.ACCESS and "gated" in wrong.err
    assert Manifest.load(models_dir).models == {}

    ok = run(
        "fetch",
        "dialogpt-medium",
        "dialogpt-small",
        "-v",
        HF_ENDPOINT=mirror.endpoint,
        HF_TOKEN=token,
    )
    assert ok.code == ExitCode.OK, ok.err
    assert token not in ok.err + ok.out
    assert sorted(Manifest.load(models_dir).models) == ["dialogpt-medium", "dialogpt-small"]
    cdn = [r for r in mirror.requests if r.url.startswith("/_cdn/")]
    assert cdn and all(r.authorization is None for r in cdn)  # no token to another origin
    assert run("verify", "--deep").code == ExitCode.OK


def test_volume_filling_up_mid_download(
    run: Run, monkeypatch: pytest.MonkeyPatch, models_dir: Path
) -> None:
    def disk_full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Downloader, "_stream", disk_full)
    result = run("fetch", "dialogpt-small")
    assert result.code == ExitCode.NO_SPACE and "the volume is full" in result.err
    assert Manifest.load(models_dir).models == {}
