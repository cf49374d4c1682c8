"""``hubless-health-probe`` exit codes (Docker HEALTHCHECK: 0 healthy, 1 unhealthy)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from hubless_client.probe import main, probe
from tests.client.fake_server import FakeServer


def test_serving_exits_0(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", fake.target, "--timeout", "3"]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert main(["--target", fake.target, "--service", "hubless.v1.EmbeddingsService"]) == 0


def test_not_serving_service_exits_1(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", fake.target, "--service", "hubless.v1.SentimentService"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hubless.v1.SentimentService" in err and "NOT_SERVING" in err


def test_unknown_service_exits_1(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", fake.target, "--service", "no.Such"]) == 1
    assert "unknown service" in capsys.readouterr().err


def test_unreachable_exits_1_quickly(closed_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    assert main(["--target", f"127.0.0.1:{closed_port}", "--timeout", "2"]) == 1
    assert time.monotonic() - started < 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "UNAVAILABLE" in err


def test_usage_errors_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 1
    with pytest.raises(SystemExit) as info:
        main(["--target", "x:1", "--timeout", "0"])
    assert info.value.code == 1


def test_missing_root_certificates_exit_1(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "ca.pem"
    assert main(["--target", "127.0.0.1:1", "--root-certificates", str(missing)]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_probe_function(fake: FakeServer) -> None:
    assert probe(fake.target) == (True, f"server at {fake.target}: SERVING")


def test_console_script(fake: FakeServer) -> None:
    script = f"{sys.prefix}/bin/hubless-health-probe"
    ok = subprocess.run([script, "--target", fake.target], capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [script, "--target", fake.target, "--service", "hubless.v1.SentimentService"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1 and "NOT_SERVING" in bad.stderr
