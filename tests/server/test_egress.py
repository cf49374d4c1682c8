"""``--assert-no-egress``: a local listener on 127.0.0.1 stands in for the hub
(``HF_ENDPOINT=http://127.0.0.1:PORT``) and is detected (``hubless_egress_reachable`` 1, an
error line naming what succeeded, whole-server health NOT_SERVING with ``refuse``); a closed
port passes (0). Nothing here connects anywhere but the loopback interface: the tests never
aim the check at an address off this machine, not even one without a route."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubless_server.app import HublessServer
from hubless_server.core.config import Settings
from hubless_server.core.flags import load_settings
from hubless_server.core.values import EGRESS_MODES, ConfigError, parse_duration
from hubless_server.observability import egress, metrics
from hubless_server.observability.egress import EgressCheck, EgressConfigError, Target, probe
from tests.server.conftest import StartFake
from tests.server.harness import RunningServer, settings_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
EMBEDDER = "all-minilm-l6-v2"


@pytest.fixture
def hub() -> Iterator[socket.socket]:
    """A listening TCP socket on 127.0.0.1: the hub, reachable."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return int(listener.getsockname()[1])


def reachable(target: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("hubless_egress_reachable", {"target": target})


def health(server: RunningServer, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ---- the target and the probe ---------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "host", "port"),
    [
        ("https://huggingface.co", "huggingface.co", 443),
        ("http://mirror.internal", "mirror.internal", 80),
        ("https://hub.example:8443/prefix/", "hub.example", 8443),
        ("http://127.0.0.1:5000", "127.0.0.1", 5000),
        ("http://[::1]:5000", "::1", 5000),
    ],
)
def test_the_target_is_the_endpoints_host_and_port(endpoint: str, host: str, port: int) -> None:
    target = Target.from_endpoint(endpoint)
    assert (target.host, target.port) == (host, port)
    assert target.is_address == (host[0].isdigit() or ":" in host)


@pytest.mark.parametrize("endpoint", ["huggingface.co", "ftp://hub", "https://", "http://h:99999"])
def test_an_endpoint_without_a_usable_host_is_refused(endpoint: str) -> None:
    with pytest.raises(EgressConfigError, match="hub endpoint"):
        Target.from_endpoint(endpoint)


def test_the_endpoint_is_hf_endpoint_or_the_public_hub() -> None:
    assert egress.hub_endpoint({}) == "https://huggingface.co"
    assert egress.hub_endpoint({"HF_ENDPOINT": " http://127.0.0.1:1 "}) == "http://127.0.0.1:1"


def test_a_listener_is_detected(hub: socket.socket) -> None:
    port = hub.getsockname()[1]
    found = probe(Target("127.0.0.1", port))
    assert found.reachable and found.connected == f"127.0.0.1:{port}"
    assert found.resolved == ()  # an address: nothing was looked up
    assert found.succeeded() == f"a TCP connection to 127.0.0.1:{port} was accepted"


def test_a_closed_port_passes(closed_port: int) -> None:
    found = probe(Target("127.0.0.1", closed_port))
    assert not found.reachable and found.succeeded() == ""
    assert found.failures == (f"TCP connection to 127.0.0.1:{closed_port}: Connection refused",)


def test_a_name_that_resolves_is_detected_even_without_a_connection(closed_port: int) -> None:
    """A DNS answer alone opens the gap (the resolver answers for the hub's name); the name
    here is localhost, answered from /etc/hosts."""
    if "localhost" not in Path("/etc/hosts").read_text(encoding="utf-8"):
        pytest.skip("/etc/hosts has no localhost entry")
    found = probe(Target("localhost", closed_port))
    assert found.reachable and not found.connected
    assert set(found.resolved) <= {"127.0.0.1", "::1"} and found.resolved
    assert found.succeeded().startswith("the DNS lookup of localhost answered ")


# ---- settings -------------------------------------------------------------------------


def test_settings(tmp_path: Path) -> None:
    assert EGRESS_MODES == egress.MODES
    defaults = load_settings(["--models-dir", str(tmp_path)], {})
    assert (defaults.assert_no_egress, defaults.egress_check_interval) == ("off", 300.0)
    env = {"HUBLESS_ASSERT_NO_EGRESS": "Refuse", "HUBLESS_EGRESS_CHECK_INTERVAL": "5m"}
    given: Settings = load_settings(["--models-dir", str(tmp_path)], env)
    assert (given.assert_no_egress, given.egress_check_interval) == ("refuse", 300.0)
    assert [parse_duration(v) for v in ("0", "off", "90", "90s", "1.5m", "1h")] == [
        0,
        0,
        90,
        90,
        90,
        3600,
    ]
    for bad in ("soon", "-5", "5d", ""):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    with pytest.raises(ConfigError, match="--assert-no-egress='on'"):
        load_settings(["--models-dir", str(tmp_path), "--assert-no-egress", "on"], {})


def test_a_bad_hub_endpoint_fails_the_start_only_when_checking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "not a url")
    HublessServer(settings_for(tmp_path))  # off: never read
    with pytest.raises(EgressConfigError, match="set HF_ENDPOINT"):
        HublessServer(settings_for(tmp_path, "--assert-no-egress", "warn"))


# ---- the server -----------------------------------------------------------------------


def test_refuse_holds_whole_server_health_while_the_hub_answers(
    start_fake: StartFake,
    hub: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = hub.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    caplog.set_level(logging.INFO, logger="hubless_server.observability.egress")
    server = start_fake([EMBEDDER], "--tasks", "embedding", "--assert-no-egress", "refuse")
    wait_for(lambda: server.server.egress.last is not None, "the first check")
    assert reachable(f"127.0.0.1:{port}") == 1
    assert health(server) == NOT_SERVING
    assert health(server, "hubless.v1.EmbeddingsService") == SERVING  # the model serves
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert f"can reach the hub 127.0.0.1:{port}" in message
    assert f"a TCP connection to 127.0.0.1:{port} was accepted" in message
    assert 'health "" is NOT_SERVING' in message

    hub.close()  # the gap closes: the next check lets the server be ready
    server.call(server.server.egress.check())
    assert reachable(f"127.0.0.1:{port}") == 0
    assert health(server) == SERVING
    assert "is unreachable" in caplog.records[-1].getMessage()


def test_the_check_repeats_every_interval(
    start_fake: StartFake, hub: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = hub.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    server = start_fake(
        [EMBEDDER],
        "--tasks",
        "embedding",
        "--assert-no-egress",
        "refuse",
        "--egress-check-interval",
        "0.05",
    )
    wait_for(lambda: reachable(f"127.0.0.1:{port}") == 1, "the hub detected")
    assert health(server) == NOT_SERVING
    hub.close()
    wait_for(lambda: health(server) == SERVING, "a later check to pass")
    assert reachable(f"127.0.0.1:{port}") == 0


def test_warn_logs_and_counts_but_serves(
    start_fake: StartFake,
    hub: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = hub.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}/")
    caplog.set_level(logging.ERROR, logger="hubless_server.observability.egress")
    server = start_fake([EMBEDDER], "--tasks", "embedding", "--assert-no-egress", "warn")
    wait_for(lambda: server.server.egress.last is not None, "the first check")
    assert reachable(f"127.0.0.1:{port}") == 1
    assert health(server) == SERVING
    assert "serving on (--assert-no-egress warn)" in caplog.records[-1].getMessage()


def test_a_closed_port_passes_and_the_server_is_ready(
    start_fake: StartFake, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    server = start_fake([EMBEDDER], "--tasks", "embedding", "--assert-no-egress", "refuse")
    wait_for(lambda: server.server.egress.last is not None, "the first check")
    assert reachable(f"127.0.0.1:{closed_port}") == 0
    wait_for(lambda: health(server) == SERVING, "whole-server SERVING")


def test_off_checks_nothing(
    start_fake: StartFake, hub: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = hub.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    server = start_fake([EMBEDDER], "--tasks", "embedding")
    assert server.server.egress.target is None and server.server.egress.last is None
    assert reachable(f"127.0.0.1:{port}") is None  # no series at all
    assert health(server) == SERVING


def test_on_change_is_told_only_when_refusing_changes(hub: socket.socket) -> None:
    port = hub.getsockname()[1]
    told: list[bool] = []

    async def scenario() -> None:
        async def on_change() -> None:
            told.append(check.refusing)

        check = EgressCheck("refuse", 0, f"http://127.0.0.1:{port}", on_change)
        assert check.refusing  # nothing checked yet: held
        await check.check()
        assert told == []  # reachable: still held
        hub.close()
        await check.check()
        await check.check()
        assert told == [False]
        await check.stop()

    asyncio.run(scenario())
    assert reachable(f"127.0.0.1:{port}") is None  # stop() removed its series
