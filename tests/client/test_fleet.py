"""The fleet view (``hubless-client status``, :mod:`hubless_client.fleet`): fake replicas on
127.0.0.1 serving the same or different commits, one that is down, and the CLI's flags,
output and exit codes."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path

import pytest

from hubless.v1 import models_pb2
from hubless_client import ConnectionFailed, ModelState, __version__
from hubless_client.cli import EXIT_CONSISTENT, EXIT_SKEW, EXIT_UNREACHABLE, EXIT_USAGE, main
from hubless_client.fleet import Replica, find_skew, fleet_status, served_commit
from hubless_client.types import ModelInfo
from tests.client.fake_server import MODELS, FakeServer, start_fake_server

REPO_ROOT = Path(__file__).resolve().parents[2]
OLD, NEW = "c" * 40, "f" * 40


def models_with(name: str, **fields: object) -> list[models_pb2.ModelInfo]:
    """The fake's models with ``fields`` changed on model ``name``."""
    changed = []
    for model in MODELS:
        copy = models_pb2.ModelInfo()
        copy.CopyFrom(model)
        if copy.name == name:
            for key, value in fields.items():
                setattr(copy, key, value)
        changed.append(copy)
    return changed


@pytest.fixture(scope="module")
def replicas() -> Iterator[dict[str, FakeServer]]:
    """``a`` and ``b`` serve the same models; ``new`` serves ``mini`` at another commit."""
    servers = {
        "a": start_fake_server(),
        "b": start_fake_server(),
        "new": start_fake_server(models_with("mini", commit=NEW)),
    }
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def servers_flag(*servers: FakeServer | str) -> str:
    return ",".join(s if isinstance(s, str) else s.target for s in servers)


def test_replicas_serving_the_same_commits_are_consistent(replicas, capsys) -> None:
    a, b = replicas["a"], replicas["b"]
    status = fleet_status([a.target, b.target])
    assert status.consistent and status.skew == () and status.unreachable == ()
    assert [r.target for r in status.replicas] == [a.target, b.target]
    assert [m.name for m in status.replicas[0].models] == [m.name for m in MODELS]

    assert main(["status", "--servers", servers_flag(a, b)]) == EXIT_CONSISTENT
    out = capsys.readouterr().out
    header, *rows = out.splitlines()
    assert header.split() == ["REPLICA", "MODEL", "TASK", "COMMIT", "BACKEND", "DTYPE", "STATE"]
    assert [row.split()[1] for row in rows if row.startswith(b.target)] == [m.name for m in MODELS]
    assert f"{a.target}  mini" in out and "embedding" in out and "c" * 12 in out
    assert "float32" in out and "ready" in out and "missing" in out
    assert "consistent: every model is served at one commit by all 2 replicas" in out


def test_a_model_at_two_commits_is_skew(replicas, capsys) -> None:
    a, new = replicas["a"], replicas["new"]
    status = fleet_status([a.target, new.target])
    assert not status.consistent and len(status.skew) == 1
    skew = status.skew[0]
    assert skew.model == "mini" and skew.commits == {a.target: OLD, new.target: NEW}

    assert main(["status", "--servers", servers_flag(a, new)]) == EXIT_SKEW
    out = capsys.readouterr().out
    assert f"skew: mini: {a.target} serves {OLD[:12]}, {new.target} serves {NEW[:12]}" in out
    assert "consistent" not in out


def test_an_unreachable_replica_is_named_and_exits_2(replicas, closed_port, capsys) -> None:
    a, new = replicas["a"], replicas["new"]
    down = f"127.0.0.1:{closed_port}"
    status = fleet_status([a.target, down, new.target], timeout=3)
    assert [r.target for r in status.unreachable] == [down]
    assert isinstance(status.unreachable[0].error, ConnectionFailed)
    assert len(status.skew) == 1  # the others are still compared

    assert main(["status", "--servers", servers_flag(a, down), "--timeout", "3"]) == 2
    out = capsys.readouterr().out
    assert f"unreachable: {down}: UNAVAILABLE" in out and "[UNREACHABLE]" in out
    assert EXIT_UNREACHABLE == 2
    # skew and a replica down: the replica down decides the exit code
    assert main(["status", "--servers", servers_flag(a, down, new), "--timeout", "3"]) == 2


def test_json_output(replicas, closed_port, capsys) -> None:
    a, new = replicas["a"], replicas["new"]
    down = f"127.0.0.1:{closed_port}"
    code = main(["status", "--servers", servers_flag(a, new), "--servers", down, "--json"])
    assert code == EXIT_UNREACHABLE
    report = json.loads(capsys.readouterr().out)
    assert report["consistent"] is False and report["unreachable"] == [down]
    assert report["skew"] == [{"model": "mini", "commits": {a.target: OLD, new.target: NEW}}]
    first = report["replicas"][0]
    assert first["target"] == a.target and first["error"] is None
    mini = first["models"][0]
    assert (mini["name"], mini["task"], mini["commit"], mini["state"]) == (
        "mini",
        "embedding",
        OLD,
        "ready",
    )
    assert report["replicas"][2]["error"]["reason"] == "UNREACHABLE"


def info(
    name: str, commit: str, state: ModelState = ModelState.READY, replacing: str = ""
) -> ModelInfo:
    return ModelInfo(
        name=name,
        task="embedding",
        repo_id="org/x",
        commit=commit,
        device="cpu",
        dtype="float32",
        state=state,
        error="",
        is_default=True,
        size_bytes=0,
        load_seconds=0.0,
        replacing_commit=replacing,
    )


def test_missing_on_one_replica_is_skew_unlisted_is_not() -> None:
    a = Replica("a:1", (info("x", OLD), info("y", OLD)))
    b = Replica("b:1", (info("x", "", ModelState.MISSING),))  # y: its task not served here
    (skew,) = find_skew([a, b])
    assert skew.model == "x"
    assert skew.describe() == f"x: a:1 serves {OLD[:12]}, b:1 has it not installed"


def test_a_live_update_serves_the_old_commit_until_the_new_one_is_ready() -> None:
    updating = info("x", NEW, ModelState.LOADING, replacing=OLD)
    assert served_commit(updating) == OLD
    assert find_skew([Replica("a:1", (updating,)), Replica("b:1", (info("x", OLD),))]) == []
    assert served_commit(info("x", NEW, ModelState.READY, replacing=OLD)) == NEW


def test_token_file_is_sent_and_checked(replicas, tmp_path: Path, capsys) -> None:
    a = replicas["a"]
    a.recorder.reset()
    token = tmp_path / "token"
    token.write_text("# the fleet's read token\n\ns3cret-token\n")
    assert main(["status", "--servers", a.target, "--token-file", str(token)]) == 0
    assert a.recorder.metadata["ListModels"][0]["authorization"] == "Bearer s3cret-token"

    token.write_text("one\ntwo\n")
    assert main(["status", "--servers", a.target, "--token-file", str(token)]) == EXIT_USAGE
    assert "holds 2 tokens" in capsys.readouterr().err
    assert main(["status", "--servers", a.target, "--token-file", str(tmp_path / "no")]) == 3


def test_token_over_plaintext_to_another_host_is_a_usage_error(tmp_path: Path, capsys) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    code = main(["status", "--servers", "10.0.0.7:50051", "--token-file", str(token)])
    assert code == EXIT_USAGE
    assert "refusing to send a bearer token over plaintext" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "--servers", ","],
        ["status", "--servers", "a:1", "--timeout", "0"],
        ["status", "--servers", "a:1", "--cert-file", "c.pem"],
        ["status", "--servers", "a:1,a:1"],
        ["nosuch"],
    ],
)
def test_usage_errors_exit_3(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        code = main(argv)
        raise SystemExit(code)
    assert info.value.code == EXIT_USAGE
    assert "error" in capsys.readouterr().err


def test_version_and_help(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hubless-client {__version__}"
    with pytest.raises(SystemExit):
        main(["status", "--help"])
    out = capsys.readouterr().out
    assert "--servers" in out and "exit codes:" in out and "2  a replica could not" in out


def test_the_console_script_is_declared() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "clients/python/pyproject.toml").read_text())
    module, _, function = pyproject["project"]["scripts"]["hubless-client"].partition(":")
    assert getattr(import_module(module), function) is main
    assert pyproject["project"]["version"] == __version__
