"""The fetcher's log lines: ``HUBLESS_LOG_FORMAT=json`` (or ``--log-format json``) makes stderr
JSON lines, ISO-8601 UTC timestamps in both formats, the server's field names (one shared
formatter, :mod:`hubless_volume.logfmt`), and redaction whatever the format."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest

from hubless_fetcher.errors import ExitCode
from hubless_volume import Manifest
from hubless_volume.logfmt import JsonFormatter, TextFormatter
from tests.fetcher.conftest import Run, spawn

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def json_lines(err: str) -> list[dict[str, object]]:
    """Every stderr line as a JSON object (fails on a line that is not one)."""
    records = [json.loads(line) for line in err.splitlines()]
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= set(record), record
        assert ISO_UTC.match(str(record["ts"])), record["ts"]
    return records


def test_a_fetch_logs_json_lines(run: Run, models_dir) -> None:
    result = run("fetch", "distilbert-sst2", "-v", HUBLESS_LOG_FORMAT="json")
    assert result.code == ExitCode.OK, result.err
    records = json_lines(result.err)
    assert len(records) > 3
    assert {r["level"] for r in records} >= {"INFO", "DEBUG"}
    assert all(str(r["logger"]).startswith("hubless_fetcher") for r in records)
    assert any("distilbert-sst2" in str(r["msg"]) for r in records)
    assert sorted(Manifest.load(models_dir).models) == ["distilbert-sst2"]


def test_the_flag_wins_over_the_environment(run: Run) -> None:
    result = run("verify", "--log-format", "json", HUBLESS_LOG_FORMAT="text")
    assert result.code == ExitCode.CORRUPT  # nothing installed: one error line
    (record,) = json_lines(result.err)
    assert record["level"] == "ERROR" and "no models installed" in str(record["msg"])


def test_no_route_in_json_is_one_redacted_line(env: dict[str, str]) -> None:
    """A process of its own (stderr is not a terminal), an endpoint with credentials: one
    JSON line with the reason and the advice, the credentials masked."""
    env = {
        **env,
        "HUBLESS_LOG_FORMAT": "json",
        "HF_ENDPOINT": "http://user:s3cret@127.0.0.1:9/?token=qs-secret",
        "HF_TOKEN": "hf_TokenValue12345",
    }
    process = spawn(env, "fetch")
    out, err = process.communicate(timeout=60)
    assert process.returncode == ExitCode.NO_ROUTE, err
    (record,) = json_lines(err)
    assert record["level"] == "ERROR" and record["logger"] == "hubless_fetcher.fetch"
    message = str(record["msg"])
    assert "cannot reach http://***@127.0.0.1:9/?token=***" in message
    assert "make demo" in message
    for secret in ("s3cret", "qs-secret", "hf_TokenValue12345"):
        assert secret not in out + err


def test_text_lines_carry_an_iso_utc_timestamp(env: dict[str, str]) -> None:
    process = spawn({**env, "HUBLESS_MODELS_DIR": "/nonexistent/models"}, "verify")
    _, err = process.communicate(timeout=60)
    assert process.returncode != ExitCode.OK
    stamp, level, name, *_ = err.splitlines()[0].split(" ")
    assert ISO_UTC.match(stamp) and level == "ERROR" and name.startswith("hubless_fetcher")


def test_an_unknown_format_is_a_usage_error(run: Run) -> None:
    result = run("list", HUBLESS_LOG_FORMAT="xml")
    assert result.code == ExitCode.USAGE
    assert "HUBLESS_LOG_FORMAT='xml': one of text, json" in result.err


def test_library_warnings_come_out_in_the_same_format(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    """What no handler takes (a library's logger, ``warnings.warn``) goes through the
    fetcher's format too once it has set up its logging."""
    run("list", "--log-format", "json")
    logging.lastResort.handle(  # type: ignore[union-attr]
        logging.makeLogRecord({"name": "huggingface_hub", "levelname": "WARNING", "msg": "x"})
    )
    (record,) = json_lines(capsys.readouterr().err)
    assert record["logger"] == "huggingface_hub"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_the_server_writes_the_same_lines(fmt: str) -> None:
    """The shared formatter and the server's own give one record the same line, so the server
    can switch to hubless_volume.logfmt and a log pipeline parses both with one rule."""
    from hubless_server.observability import logs as server_logs

    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("hubless_x", logging.WARNING, __file__, 1, "a %s", ("b",), exc_info)
    record.fields = {"model": "m 1", "n": 3}
    ours = (JsonFormatter() if fmt == "json" else TextFormatter()).format(record)
    record.exc_text = None
    theirs = server_logs.JsonFormatter() if fmt == "json" else server_logs.TextFormatter()
    server = theirs.format(record)
    if fmt == "json":
        assert json.loads(ours) == json.loads(server)
        assert list(json.loads(ours))[:4] == ["ts", "level", "logger", "msg"]
    else:
        assert ours == server
