"""No route to the hub: one bounded connectivity check before any model fails the run at once
(exit 9, NO_ROUTE) with advice (a mirror, a bundle, the demo), instead of every model
spending its retries on the same failure; and the summary's per-model times are real."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hubless_fakehub.proxy import Fault, FaultProxy
from hubless_fetcher.catalog import Catalog
from hubless_fetcher.errors import ExitCode
from hubless_volume import Manifest
from tests.fetcher.conftest import Run, spawn

ADVICE = ("HF_ENDPOINT=", "hubless-fetch import", "make demo")


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 that takes connections (the kernel's backlog) and never answers:
    nothing accepts or reads them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def _summary(out: str) -> dict[str, list[str]]:
    """The summary table's rows by model name: [commit, files, size, time, status], cut at
    the header's column starts."""
    header, *lines = out.splitlines()
    starts = [header.index(c) for c in ("commit", "files", "size", "time", "status")]
    rows = {}
    for line in lines:
        if line.startswith("total disk use"):
            break
        bounds = zip(starts, [*starts[1:], None], strict=True)
        rows[line.split()[0]] = [line[a:b].strip() for a, b in bounds]
    return rows


def _no_route(code: int, out: str, err: str, catalog: Path, models_dir: Path) -> None:
    """Exit 9, every model `no route` in the summary (stdout), and the reason with the
    advice said once (stderr), not once per stream or per model."""
    assert code == ExitCode.NO_ROUTE == 9
    rows = _summary(out)
    assert sorted(rows) == sorted(Catalog.load(catalog).models)
    assert all(cells[-1] == "no route" and cells[3] == "-" for cells in rows.values()), rows
    for advice in ADVICE:
        assert (out + err).count(advice) == 1, advice
    assert (out + err).count("cannot reach") == 1
    assert (out + err).count("cannot be reached from here") == 1
    assert Manifest.load(models_dir).models == {}


@pytest.mark.timeout(30)
def test_a_closed_port_fails_at_once(
    run: Run, closed_port: int, catalog: Path, models_dir: Path
) -> None:
    result = run("fetch", HF_ENDPOINT=f"http://127.0.0.1:{closed_port}")
    _no_route(result.code, result.out, result.err, catalog, models_dir)
    assert "refused" in result.err


@pytest.mark.timeout(30)
def test_an_endpoint_that_never_answers_fails_within_the_check_timeout(
    env: dict[str, str], silent_port: int, catalog: Path, models_dir: Path
) -> None:
    """The default check timeout (5 s) bounds it, in a process of its own (HUBLESS_TIMEOUT,
    30 s by default, would be per attempt and per model)."""
    env = {**env, "HF_ENDPOINT": f"http://127.0.0.1:{silent_port}", "HUBLESS_TIMEOUT": "30"}
    process = spawn(env, "fetch")
    out, err = process.communicate(timeout=25)
    _no_route(process.returncode, out, err, catalog, models_dir)
    assert "no HTTP answer within 5s" in err, out + err


def test_lock_checks_the_route_too(run: Run, closed_port: int, catalog: Path) -> None:
    result = run("lock", HF_ENDPOINT=f"http://127.0.0.1:{closed_port}")
    assert result.code == ExitCode.NO_ROUTE
    assert all(advice in result.err for advice in ADVICE), result.err
    assert not catalog.with_name("catalog.lock.json").exists()


def test_any_http_answer_is_a_route_and_retries_stay_for_what_fails_later(
    run: Run, proxy: FaultProxy, models_dir: Path
) -> None:
    """The check takes a 503 for an answer; the model's own requests still get retries."""
    proxy.faults += [
        Fault("status", "^/$", status=503),
        Fault("status", "/api/models/", status=503, times=2),
    ]
    result = run("fetch", "distilbert-sst2")
    assert result.code == ExitCode.OK, result.err
    assert [r.status for r in proxy.log[:3]] == [503, 503, 503]  # the check, then 2 retried
    assert sorted(Manifest.load(models_dir).models) == ["distilbert-sst2"]


def test_the_check_can_be_turned_off(run: Run, closed_port: int, models_dir: Path) -> None:
    """HUBLESS_CHECK_TIMEOUT=0: no check, today's per-model retries (fast ones here)."""
    result = run(
        "fetch", "distilbert-sst2", HF_ENDPOINT=f"http://127.0.0.1:{closed_port}",
        HUBLESS_CHECK_TIMEOUT="0",
    )  # fmt: skip
    assert result.code == ExitCode.FAILED
    assert "after 4 attempts" in result.err and "no route" not in result.out


def test_the_summary_shows_real_times_per_model(run: Run, proxy: FaultProxy) -> None:
    """A model that took time shows it, whether it failed (here: its retries waited 3 x 0.3 s
    for Retry-After) or was installed (its metadata answered after 0.6 s); one with nothing
    to do shows ``-``."""
    proxy.faults += [
        Fault("status", "/api/models/microsoft/DialoGPT-small", -1, 503, retry_after="0.3"),
        Fault("delay", "/api/models/distilbert/", stall=0.6),
    ]
    result = run("fetch", "dialogpt-small", "distilbert-sst2")
    assert result.code == ExitCode.FAILED
    rows = _summary(result.out)

    def seconds(name: str) -> float:
        match = re.fullmatch(r"(\d+\.\d)s", rows[name][3])
        assert match, rows[name]
        return float(match.group(1))

    assert rows["dialogpt-small"][-1] == "failed" and seconds("dialogpt-small") >= 0.8
    assert rows["distilbert-sst2"][-1] == "installed" and seconds("distilbert-sst2") >= 0.6
    again = _summary(run("fetch", "distilbert-sst2").out)
    assert again["distilbert-sst2"][3:] == ["-", "up to date"]
