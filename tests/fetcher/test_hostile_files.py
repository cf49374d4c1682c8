"""Hostile lock files, catalogs, manifests and hub listings (``hub``: the fetcher fixtures'
local hub mirror): every command exits 8 (invalid input file) with one line naming the file
and the field, writes nothing outside the volume and deletes nothing there; credentials in
``HF_ENDPOINT`` never reach a message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hubless_fetcher.errors import ExitCode
from hubless_fetcher.redact import redact
from hubless_fetcher.settings import PACKAGED_CATALOG
from hubless_volume import MANIFEST_NAME, Manifest
from tests.fetcher.conftest import Run
from tests.fetcher.hostile import (
    Cli,
    bundle_members,
    entry_json,
    index_json,
    make_cli,
    sha,
    tree,
    write_tar,
)

SST2 = "distilbert/distilbert-base-uncased-finetuned-sst-2-english"


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """``tmp_path/work/{volume,catalog}``, a sentinel beside the volume, and files named ``x``
    where a ``../../x`` would land."""
    work = tmp_path / "work"
    (work / "volume").mkdir(parents=True)
    (work / "volume" / ".hubless.lock").touch()
    (work / "catalog").mkdir()
    (work / "catalog" / "catalog.toml").write_text(PACKAGED_CATALOG.read_text("utf-8"))
    (work / "sentinel.txt").write_text("do not touch")
    (work / "x").write_text("an outside file named x")
    (tmp_path / "x").write_text("another outside file named x")
    return tmp_path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], area: Path) -> Cli:
    return make_cli(capsys, area / "work" / "volume", area / "work" / "catalog" / "catalog.toml")


def _untouched(area: Path, run: Any) -> Any:
    """Run ``run()``; assert nothing changed anywhere under ``area``, the volume included."""
    before = tree(area)
    result = run()
    assert tree(area) == before, "files appeared, changed or vanished"
    assert (area / "work" / "sentinel.txt").read_text() == "do not touch"
    return result


# ---- lock file -------------------------------------------------------------------------------


def _lock(**file_changes: Any) -> dict[str, Any]:
    record = {"path": "config.json", "size": 2, "sha256": sha(b"{}"), **file_changes}
    model = {"repo_id": SST2, "revision": "main", "commit": "a" * 40, "files": [record]}
    return {"version": 1, "locked_at": "", "models": {"distilbert-sst2": model}}


@pytest.mark.parametrize(
    ("lock", "field"),
    [
        (_lock(sha256="../../x"), "models['distilbert-sst2'].files[0].sha256"),
        (_lock(path="../../x"), "models['distilbert-sst2'].files[0].path"),
        (_lock(blob_id="../../x"), "models['distilbert-sst2'].files[0].blob_id"),
        (_lock(size=-1), "models['distilbert-sst2'].files[0].size"),
        ({**_lock(), "models": []}, "models: is list"),
        ({"version": 1, "models": {"../x": {}}}, "models['../x']"),
    ],
)
def test_hostile_lock_file(cli: Cli, area: Path, lock: dict[str, Any], field: str) -> None:
    path = area / "work" / "catalog" / "catalog.lock.json"
    path.write_text(json.dumps(lock))
    result = _untouched(area, lambda: cli("fetch", "--locked", "distilbert-sst2"))
    result.refused(ExitCode.INVALID_FILE, f"lock file {path}: {field}")


# ---- catalog ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ('revision = "main"', "revision"),
        ('revision = "../../x"', "revision"),
        ('revision = "/etc/x"', "revision"),
        ('revision = "a/../../x"', "revision"),
    ],
)
def test_hostile_catalog(cli: Cli, area: Path, change: str, field: str) -> None:
    path = area / "work" / "catalog" / "catalog.toml"
    text = path.read_text().replace('revision = "main"', "# no revision")
    model = f'\n[[models]]\nname = "evil"\nrepo_id = "org/evil"\ntask = "emotion"\n{change}\n'
    path.write_text(text + model)
    evil = sum(line.startswith("[[models]]") for line in text.splitlines())  # its index
    if change == 'revision = "main"':
        assert cli("fetch", "--dry-run", "evil").code != ExitCode.INVALID_FILE  # the control
        return
    for command in (("fetch", "evil"), ("lock",), ("fetch", "--locked")):
        result = _untouched(area, lambda c=command: cli(*c, HF_HUB_OFFLINE="0"))
        result.refused(ExitCode.INVALID_FILE, f"catalog {path} is invalid: models[{evil}].{field}")


# ---- manifest --------------------------------------------------------------------------------


def _manifest_with(**changes: Any) -> dict[str, Any]:
    entry = entry_json("distilbert-sst2", repo_id=SST2)
    entry.update(changes)
    return {"version": 1, "tasks": {}, "models": {"distilbert-sst2": entry}}


HOSTILE_MANIFESTS: dict[str, tuple[dict[str, Any] | list[Any], str]] = {
    "commit ../..": (_manifest_with(commit="../.."), "models['distilbert-sst2'].commit"),
    "absolute file path": (
        _manifest_with(files=[{"path": "/etc/passwd", "size": 1, "sha256": "0" * 64}]),
        "models['distilbert-sst2'].files[0].path",
    ),
    "file path ../": (
        _manifest_with(files=[{"path": "../../../x", "size": 1, "sha256": "0" * 64}]),
        "models['distilbert-sst2'].files[0].path",
    ),
    "sha256 ../../x": (
        _manifest_with(files=[{"path": "config.json", "size": 1, "sha256": "../../x"}]),
        "models['distilbert-sst2'].files[0].sha256",
    ),
    "revision ../../x": (
        _manifest_with(revision="../../../x"),
        "models['distilbert-sst2'].revision",
    ),
    "models as a list": ({"version": 1, "models": []}, "models: is list"),
    "not an object": ([], "the top level: is list"),
}
COMMANDS = {
    "fetch": ("fetch", "distilbert-sst2"),
    "verify": ("verify",),
    "verify --deep": ("verify", "--deep"),
    "list": ("list",),
    "remove": ("remove", "distilbert-sst2"),
    "du": ("du",),
    "gc": ("gc",),
    "gc --dry-run": ("gc", "--dry-run"),
    "export": ("export", "BUNDLE"),
    "import": ("import", "BUNDLE"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MANIFESTS))
def test_hostile_manifest_every_command(cli: Cli, area: Path, case: str) -> None:
    data, field = HOSTILE_MANIFESTS[case]
    volume = area / "work" / "volume"
    (volume / MANIFEST_NAME).write_text(json.dumps(data))
    outside = area / "work" / "outside-model"  # what a hostile entry would point at
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    good = {"config.json": b"{}"}
    bundle = write_tar(
        area / "good.tar", bundle_members(index_json(entry_json("m", good)), list(good.values()))
    )
    for name, command in COMMANDS.items():
        argv = [str(bundle) if a == "BUNDLE" else a for a in command]
        if name == "export":
            argv[1] = str(area / "out.tar")
        result = _untouched(area, lambda a=argv: cli(*a))
        result.refused(ExitCode.INVALID_FILE, f"manifest {volume / MANIFEST_NAME}: {field}")
        assert "ok (" not in result.out, name  # verify never passes it


def test_commands_work_on_a_valid_manifest(cli: Cli, area: Path) -> None:
    """The control for the test above: the same commands on a valid volume do not exit 8."""
    good = {"config.json": b"{}"}
    bundle = write_tar(
        area / "good.tar", bundle_members(index_json(entry_json("m", good)), list(good.values()))
    )
    assert cli("import", str(bundle)).code == ExitCode.OK
    for command in (("verify", "--deep"), ("list",), ("du",), ("export", str(area / "o.tar"))):
        assert cli(*command).code == ExitCode.OK, command
    assert cli("remove", "m").code == ExitCode.OK
    assert Manifest.load(area / "work" / "volume").models == {}


# ---- hub listings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sibling", ["../../x.json", "/etc/x.json", "a/../../../x.json", "a\\x.json"]
)
def test_hostile_hub_listing_fails_the_model_cleanly(
    run: Run, hub: Any, models_dir: Path, tmp_path: Path, sibling: str
) -> None:
    hub.update_repo(SST2, {sibling: b"{}"})
    (tmp_path / "x.json").write_text("outside")
    outside = tree(tmp_path, skip=models_dir)
    result = run("fetch", "distilbert-sst2", "dialogpt-small")
    result_lines = [line for line in result.err.splitlines() if "ERROR" in line]
    assert result.code == ExitCode.INVALID_FILE, result.err
    assert any(
        f"hub listing of {SST2}@main: siblings[" in line and ".rfilename: " in line
        for line in result_lines
    ), result.err
    assert "Traceback" not in result.err
    assert tree(tmp_path, skip=models_dir) == outside
    assert sorted(Manifest.load(models_dir).models) == ["dialogpt-small"]  # the other one
    assert not [f for f in hub.downloads(SST2)]  # refused before any download


# ---- credentials in the endpoint -------------------------------------------------------------


def test_redact() -> None:
    assert redact("http://user:tok@host:1/x") == "http://***@host:1/x"
    assert (
        redact("see https://a:b@c.d/e?token=zz&x=1 now")
        == "see https://***@c.d/e?token=***&x=1 now"
    )
    assert redact("u?X-Amz-Signature=abc&Expires=1") == "u?X-Amz-Signature=***&Expires=1"
    assert redact("Bearer hf_abcdefghijklmnop") == "Bearer hf_***"
    assert redact("value s3cr3t here", ["s3cr3t"]) == "value *** here"
    assert redact("https://huggingface.co/org/x") == "https://huggingface.co/org/x"


def test_credentials_in_the_endpoint_are_never_printed(
    run: Run, hub: Any, catalog: Path, tmp_path: Path
) -> None:
    catalog.write_text(
        'version = 1\n[[models]]\nname = "absent"\nrepo_id = "org/absent"\ntask = "emotion"\n'
    )
    secrets = ("s3cret-pass", "qs-secret", "hf_TokenValue12345")
    endpoint = hub.endpoint.replace("http://", "http://user:s3cret-pass@")
    refused = run("fetch", HF_ENDPOINT=endpoint, HF_TOKEN="hf_TokenValue12345")
    assert refused.code == ExitCode.ACCESS, refused.err
    assert "http://***@127.0.0.1" in refused.err + refused.out
    unreachable = {
        "HF_ENDPOINT": "http://user:s3cret-pass@127.0.0.1:9/?token=qs-secret",
        "HF_TOKEN": "hf_TokenValue12345",
    }
    no_route = run("fetch", **unreachable)  # the connectivity check, before any model
    assert no_route.code == ExitCode.NO_ROUTE, no_route.err
    assert "cannot reach http://***@127.0.0.1:9/?token=***: the connection" in no_route.err
    assert "cannot be reached" in no_route.err and "hf-mirror" in no_route.err  # the advice
    late = run("fetch", **unreachable, HUBLESS_CHECK_TIMEOUT="0")  # each model's retries
    assert late.code == ExitCode.FAILED, late.err
    assert "cannot reach http://***@127.0.0.1:9/?token=***: check" in late.err
    for result in (refused, no_route, late):
        for secret in secrets:
            assert secret not in result.err + result.out
