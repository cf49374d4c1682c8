"""``python -m hubless_server`` as a real process: env settings, port file, JSON logs,
health over the socket, SIGTERM drain, configuration errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubless.v1 import conversation_pb2, conversation_pb2_grpc, embeddings_pb2, embeddings_pb2_grpc

MakeVolume = Callable[[list[str] | None], Path]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def overall_status(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            return (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                .status
            )
        except grpc.RpcError:
            return -1


def test_serve_process_end_to_end(volume_factory: MakeVolume, tmp_path: Path) -> None:
    volume = volume_factory(["all-minilm-l6-v2", "dialogpt-small"])
    port_file = tmp_path / "run" / "port"
    env = {
        **os.environ,
        "HUBLESS_MODELS_DIR": str(volume),
        "HUBLESS_HOST": "127.0.0.1",
        "HUBLESS_PORT": "50051",  # the flag below wins
        "HUBLESS_METRICS_PORT": "0",
        "HUBLESS_LOG_FORMAT": "json",
        "HUBLESS_TASKS": "embedding,conversation",
        "HUBLESS_THREADS": "1",
        "HUBLESS_GRACE_PERIOD": "10",
        "HF_HUB_OFFLINE": "0",  # forced back on by the server
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubless_server", "--port", "0", "--port-file", str(port_file)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(port_file.exists, 60, "the port file")
        port = int(port_file.read_text())
        assert port != 50051
        wait_for(
            lambda: overall_status(port) == health_pb2.HealthCheckResponse.SERVING, 120, "SERVING"
        )
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            embedded = embeddings_pb2_grpc.EmbeddingsServiceStub(channel).Embed(
                embeddings_pb2.EmbedRequest(texts=["hello"]), timeout=30
            )
            assert embedded.model.name == "all-minilm-l6-v2"
            # SIGTERM while a reply is in flight (its first piece has arrived, so the server has
            # it; a call that arrives after SIGTERM is refused with SHUTTING_DOWN instead): the
            # reply still completes, the exit is clean. Seeded sampling keeps the tiny model
            # from ending its turn at the first token.
            chat = conversation_pb2_grpc.ConversationServiceStub(channel)
            stream = chat.StreamReply(
                conversation_pb2.StreamReplyRequest(
                    turns=["Hello there"], max_new_tokens=64, temperature=1.0, seed=7
                ),
                timeout=60,
            )
            first = next(stream)
            proc.send_signal(signal.SIGTERM)
            pieces = [first, *stream]
            assert first.model.name == "dialogpt-small"
            assert pieces[-1].finish_reason != conversation_pb2.FINISH_REASON_UNSPECIFIED
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.stderr is not None
    records = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    messages = [r["msg"] for r in records]
    assert any(m.startswith("listening on 127.0.0.1:") for m in messages)
    assert any(m.startswith("Loading cached model all-minilm-l6-v2") for m in messages)
    assert any(m.startswith("Model dialogpt-small loaded offline in") for m in messages)
    access = [r for r in records if r["logger"] == "hubless_server.access"]
    assert {(r["method"], r["model"], r["code"]) for r in access} >= {
        ("EmbeddingsService.Embed", "all-minilm-l6-v2", "OK"),
        ("ConversationService.StreamReply", "dialogpt-small", "OK"),
    }
    assert all(isinstance(r["ms"], float | int) for r in access)
    assert messages[-1] == "server stopped"


def test_bad_configuration_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hubless_server", "--models-dir", str(tmp_path), "--dtype", "int4"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("HUBLESS_")},
    )
    assert result.returncode == 2
    assert "invalid configuration: --dtype='int4'" in result.stderr


def test_missing_models_dir_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hubless_server", "--models-dir", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("HUBLESS_")},
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "hubless-fetch fetch" in result.stderr


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "hubless_server",
                "--models-dir",
                str(tmp_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--metrics-port",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith("HUBLESS_")},
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def _serve_argv(volume: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hubless_server",
        "--models-dir",
        str(volume),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--threads",
        "1",
        *extra,
    ]


def test_require_models_exits_3_naming_the_tasks_without_a_model(
    volume_factory: MakeVolume,
) -> None:
    volume = volume_factory(["all-minilm-l6-v2"])
    result = subprocess.run(
        _serve_argv(volume, "--tasks", "embedding,conversation,emotion", "--require-models"),
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("HUBLESS_")},
    )
    assert result.returncode == 3, result.stderr
    assert "no model for the served task(s) emotion, conversation" in result.stderr
    assert "hubless-fetch fetch --tasks emotion,conversation" in result.stderr
    assert "Traceback" not in result.stderr


def test_require_models_keeps_serving_when_every_task_has_a_model(
    volume_factory: MakeVolume, tmp_path: Path
) -> None:
    volume = volume_factory(["all-minilm-l6-v2"])
    port_file = tmp_path / "port"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBLESS_")}
    env["HUBLESS_REQUIRE_MODELS"] = "true"
    proc = subprocess.Popen(
        _serve_argv(volume, "--tasks", "embedding", "--port-file", str(port_file)),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(port_file.exists, 60, "the port file")
        port = int(port_file.read_text())
        wait_for(
            lambda: overall_status(port) == health_pb2.HealthCheckResponse.SERVING, 120, "SERVING"
        )
        time.sleep(0.5)  # past the check that follows the initial loading
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _markdown_rows(doc: Path, heading: str) -> dict[int, str]:
    """``| code | meaning |`` rows of the first such table after ``heading`` in ``doc``."""
    text = doc.read_text(encoding="utf-8").split(heading, 1)[1]
    table = text.split("| code | meaning |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = [line.strip("|").split(" | ", 1) for line in table.splitlines()]
    return {int(code.strip()): meaning.strip() for code, meaning in rows}


def test_version_exit_codes_and_defaults_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    from hubless_server import __version__
    from hubless_server.cli import main
    from hubless_server.core.flags import EXIT_CODES, build_parser

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"hubless-serve {__version__}"
    text = build_parser().format_help()
    epilog = " ".join(text.split("exit codes:", 1)[1].split())
    for code, meaning in EXIT_CODES.items():
        assert f"{int(code)} {meaning.replace('`', '')}" in epilog, code
    docs = Path(__file__).resolve().parents[2] / "docs" / "server.md"
    assert _markdown_rows(docs, "\n## Settings\n") == {int(c): m for c, m in EXIT_CODES.items()}
    flat = " ".join(text.split())
    assert (
        "non-default models of single-model tasks (sentiment always loads all) (default: on)"
        in flat
    )
    assert "README" not in flat and "docs/operations.md, Precision and threads" in flat


def test_the_settings_table_says_what_help_says() -> None:
    """docs/server.md's settings table is ``describe()``: each row's text is the flag's help."""
    from hubless_server.core.flags import describe

    doc = Path(__file__).resolve().parents[2] / "docs" / "server.md"
    section = doc.read_text(encoding="utf-8").split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = {
        line.split(" | ", 1)[0].strip("| `"): line.rstrip(" |").rsplit(" | ", 1)[-1]
        for line in section.splitlines()
        if line.startswith("| `--")
    }
    assert {flag: rows.get(flag) for flag, *_ in describe()} == {
        flag: text for flag, _, _, text in describe()
    }
