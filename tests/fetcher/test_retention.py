"""Previous generations: a model that moves to a new commit (``fetch --refresh``, ``fetch
--locked`` with a new lock, ``import``) or is removed keeps its old snapshot and blobs until the
retention (``HUBLESS_KEEP_PREVIOUS``) passes; ``gc`` prunes now. Nothing outside the volume is
ever touched, and ``verify --deep`` passes with previous generations on the volume."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hubless_fakehub import HubMirror
from hubless_fetcher.errors import ExitCode
from hubless_fetcher.retention import KeepPrevious
from hubless_volume import (
    PREVIOUS_NAME,
    Manifest,
    ModelEntry,
    PreviousGenerations,
    SchemaError,
    repo_folder_name,
)
from tests.fetcher.conftest import Run
from tests.fetcher.hostile import (
    COMMIT_1,
    COMMIT_2,
    Cli,
    bundle_members,
    entry_json,
    index_json,
    make_cli,
    sha,
    tree,
    write_tar,
)

REPO = "microsoft/DialoGPT-small"
NAME = "dialogpt-small"


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """A file next to the volume that nothing may touch."""
    path = tmp_path / "sentinel.txt"
    path.write_text("do not touch")
    return path


def _snapshots(models_dir: Path, repo: str = REPO) -> set[str]:
    folder = models_dir / repo_folder_name(repo) / "snapshots"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _blobs(models_dir: Path, repo: str = REPO) -> set[str]:
    folder = models_dir / repo_folder_name(repo) / "blobs"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _kept(models_dir: Path) -> list[tuple[str, str]]:
    """(model, commit) of every recorded previous generation, oldest first per model."""
    return [(g.entry.name, g.entry.commit) for g in PreviousGenerations.load(models_dir)]


def _entry(models_dir: Path, name: str = NAME) -> ModelEntry:
    return Manifest.load(models_dir).models[name]


def _update(hub: HubMirror, n: int) -> str:
    return hub.update_repo(REPO, {"generation_config.json": f'{{"max_length": {n}}}\n'.encode()})


def _age(models_dir: Path, commit: str, minutes: float) -> None:
    """Pretend the generation at ``commit`` was replaced ``minutes`` ago."""
    path = models_dir / PREVIOUS_NAME
    data = json.loads(path.read_text())
    when = datetime.now(UTC) - timedelta(minutes=minutes)
    for kept in data["models"].values():
        for generation in kept:
            if generation["entry"]["commit"] == commit:
                generation["replaced_at"] = when.replace(microsecond=0).isoformat()
    path.write_text(json.dumps(data))


# ---- fetch --refresh ---------------------------------------------------------------------------


def test_refresh_keeps_the_previous_generation_until_the_next_update(
    run: Run, hub: HubMirror, models_dir: Path, tmp_path: Path, sentinel: Path
) -> None:
    outside = tree(tmp_path, skip=models_dir)
    assert run("fetch", NAME).code == ExitCode.OK
    v1 = _entry(models_dir)
    old_config = (v1.snapshot_dir(models_dir) / "generation_config.json").read_bytes()

    v2 = _update(hub, 2)
    assert run("fetch", "--refresh", NAME).code == ExitCode.OK
    assert _entry(models_dir).commit == v2
    assert _snapshots(models_dir) == {v1.commit, v2}  # the old generation is still readable
    assert (v1.snapshot_dir(models_dir) / "generation_config.json").read_bytes() == old_config
    assert {f.sha256 for f in v1.files} <= _blobs(models_dir)
    assert _kept(models_dir) == [(NAME, v1.commit)]
    assert run("verify", "--deep").code == ExitCode.OK  # retained files are not the model's

    du = run("du")
    assert du.code == ExitCode.OK and "previous generations" in du.out
    assert v1.commit[:12] in du.out and "next update" in du.out
    assert v1.commit[:12] in run("list").out

    v2_entry = _entry(models_dir)
    v3 = _update(hub, 3)
    assert run("fetch", "--refresh", NAME).code == ExitCode.OK
    assert _snapshots(models_dir) == {v2, v3}  # the second update pruned the oldest
    only_v1 = {f.sha256 for f in v1.files} - {f.sha256 for f in v2_entry.files}
    assert only_v1 and not only_v1 & _blobs(models_dir)
    assert _kept(models_dir) == [(NAME, v2)]
    assert run("verify", "--deep").code == ExitCode.OK
    assert tree(tmp_path, skip=models_dir) == outside and sentinel.read_text() == "do not touch"


@pytest.mark.parametrize("how", ["env", "flag"])
def test_keep_previous_zero_prunes_at_once(
    run: Run, hub: HubMirror, models_dir: Path, how: str
) -> None:
    assert run("fetch", NAME).code == ExitCode.OK
    v2 = _update(hub, 2)
    if how == "env":
        result = run("fetch", "--refresh", NAME, HUBLESS_KEEP_PREVIOUS="0")
    else:
        result = run("fetch", "--refresh", "--keep-previous", "0", NAME)
    assert result.code == ExitCode.OK
    assert _snapshots(models_dir) == {v2}
    assert _blobs(models_dir) == {f.sha256 for f in _entry(models_dir).files}
    assert not (models_dir / PREVIOUS_NAME).exists()


def test_a_grace_duration_keeps_every_generation_until_it_expires(
    run: Run, hub: HubMirror, models_dir: Path
) -> None:
    keep = {"HUBLESS_KEEP_PREVIOUS": "10m"}
    assert run("fetch", NAME, **keep).code == ExitCode.OK
    v1 = _entry(models_dir).commit
    v2 = _update(hub, 2)
    assert run("fetch", "--refresh", NAME, **keep).code == ExitCode.OK
    v3 = _update(hub, 3)
    assert run("fetch", "--refresh", NAME, **keep).code == ExitCode.OK
    assert _snapshots(models_dir) == {v1, v2, v3}  # both younger than 10 minutes
    assert _kept(models_dir) == [(NAME, v1), (NAME, v2)]

    _age(models_dir, v1, minutes=11)
    assert run("fetch", NAME, HF_HUB_OFFLINE="1", **keep).code == ExitCode.OK  # any writer run
    assert _snapshots(models_dir) == {v2, v3}
    assert _kept(models_dir) == [(NAME, v2)]

    assert "nothing to delete" in run("gc", **keep).out
    _age(models_dir, v2, minutes=11)
    gc = run("gc", **keep)
    assert gc.code == ExitCode.OK and f"previous generation {NAME}" in gc.out
    assert _snapshots(models_dir) == {v3} and _kept(models_dir) == []
    assert run("verify", "--deep").code == ExitCode.OK


def test_moving_back_to_the_previous_commit_deletes_nothing(
    run: Run, hub: HubMirror, models_dir: Path
) -> None:
    assert run("fetch", NAME).code == ExitCode.OK
    v1 = _entry(models_dir).commit
    v2 = _update(hub, 2)
    assert run("fetch", "--refresh", NAME).code == ExitCode.OK
    hub.set_ref(REPO, "main", v1)  # upstream rolled back
    assert run("fetch", "--refresh", NAME).code == ExitCode.OK
    assert _entry(models_dir).commit == v1
    assert _snapshots(models_dir) == {v1, v2}
    assert _kept(models_dir) == [(NAME, v2)]
    assert run("verify", "--deep").code == ExitCode.OK


def test_fetch_locked_with_a_new_lock_keeps_the_previous(
    run: Run, hub: HubMirror, models_dir: Path
) -> None:
    assert run("lock").code == ExitCode.OK
    assert run("fetch", "--locked", NAME).code == ExitCode.OK
    v1 = _entry(models_dir).commit
    v2 = _update(hub, 2)
    assert run("lock").code == ExitCode.OK
    assert run("fetch", "--locked", NAME).code == ExitCode.OK
    assert _entry(models_dir).commit == v2
    assert _snapshots(models_dir) == {v1, v2}
    assert _kept(models_dir) == [(NAME, v1)]


# ---- remove and gc -----------------------------------------------------------------------------


def test_remove_keeps_the_files_until_gc(
    run: Run, models_dir: Path, tmp_path: Path, sentinel: Path
) -> None:
    outside = tree(tmp_path, skip=models_dir)
    assert run("fetch", NAME, "distilbert-sst2").code == ExitCode.OK
    entry = _entry(models_dir)
    removed = run("remove", NAME)
    assert removed.code == ExitCode.OK and "gc --all-previous" in removed.out
    assert NAME not in Manifest.load(models_dir).models
    assert _snapshots(models_dir) == {entry.commit}
    assert _blobs(models_dir) == {f.sha256 for f in entry.files}
    assert _kept(models_dir) == [(NAME, entry.commit)]
    assert run("verify", "--deep").code == ExitCode.OK
    assert run("verify", NAME).code == ExitCode.CORRUPT  # not installed any more

    before = tree(models_dir)
    dry = run("gc", "--dry-run", "--all-previous")
    assert dry.code == ExitCode.OK and tree(models_dir) == before  # nothing deleted
    folder = repo_folder_name(REPO)
    assert f"would delete {folder} (" in dry.out and "would free" in dry.out
    assert f"would delete previous generation {NAME}" in dry.out
    assert "nothing to delete" in run("gc").out  # its last generation: kept by default

    gc = run("gc", "--all-previous")
    assert gc.code == ExitCode.OK and f"deleted {folder} (" in gc.out and "freed" in gc.out
    assert not (models_dir / folder).exists()
    assert not (models_dir / PREVIOUS_NAME).exists()
    assert run("verify", "--deep").code == ExitCode.OK  # distilbert-sst2 intact
    assert tree(tmp_path, skip=models_dir) == outside and sentinel.read_text() == "do not touch"


def test_gc_prunes_leftovers_and_never_follows_a_link_out(
    run: Run, models_dir: Path, tmp_path: Path
) -> None:
    assert run("fetch", NAME).code == ExitCode.OK
    outside = tmp_path / "outside"
    (outside / "snap").mkdir(parents=True)
    (outside / "snap" / "precious.bin").write_bytes(b"precious")
    (outside / "blob").write_bytes(b"blob")
    repo = models_dir / repo_folder_name(REPO)
    stray_snapshot = repo / "snapshots" / ("9" * 40)
    (stray_snapshot / "sub").mkdir(parents=True)
    (stray_snapshot / "sub" / "x.bin").write_bytes(b"x" * 10_000)
    linked_snapshot = repo / "snapshots" / ("8" * 40)
    linked_snapshot.symlink_to(outside / "snap")
    (repo / "blobs" / ("f" * 64)).symlink_to(outside / "blob")
    (repo / "blobs" / ("e" * 64)).write_bytes(b"e" * 5000)
    stray_repo = models_dir / "models--org--stray"
    (stray_repo / "blobs").mkdir(parents=True)
    (stray_repo / "blobs" / ("d" * 64)).write_bytes(b"d")
    picture = tree(tmp_path, skip=models_dir)

    before = tree(models_dir)
    dry = run("gc", "--dry-run")
    assert dry.code == ExitCode.OK and tree(models_dir) == before
    for path in (stray_snapshot, linked_snapshot, repo / "blobs" / ("e" * 64), stray_repo):
        assert f"would delete {path.relative_to(models_dir).as_posix()} (" in dry.out
    assert f"would delete {linked_snapshot.relative_to(models_dir).as_posix()} (0 B)" in dry.out

    assert run("gc").code == ExitCode.OK
    assert _snapshots(models_dir) == {_entry(models_dir).commit}
    assert _blobs(models_dir) == {f.sha256 for f in _entry(models_dir).files}
    assert not stray_repo.exists()
    assert tree(tmp_path, skip=models_dir) == picture  # the link targets are untouched
    assert run("verify", "--deep").code == ExitCode.OK
    assert "nothing to delete" in run("gc").out


# ---- import --------------------------------------------------------------------------------------

CONFIG = b'{"a": 1}\n'


def _bundle(area: Path, commit: str, weights: bytes) -> Path:
    files = {"config.json": CONFIG, "model.safetensors": weights}
    index = index_json(entry_json("m", files, commit=commit))
    return write_tar(area / f"{commit[:4]}.tar", bundle_members(index, [CONFIG, weights]))


def test_import_of_a_new_commit_keeps_the_previous(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sentinel: Path
) -> None:
    volume = tmp_path / "volume"
    cli: Cli = make_cli(capsys, volume)
    weights = [b"one " * 64, b"two " * 64, b"three " * 64]
    commits = [COMMIT_1, COMMIT_2, "3" * 40]
    bundles = [_bundle(tmp_path, c, w) for c, w in zip(commits, weights, strict=True)]
    outside = tree(tmp_path, skip=volume)
    repo = "org/m"

    assert cli("import", str(bundles[0])).code == ExitCode.OK
    assert cli("import", str(bundles[1])).code == ExitCode.OK
    assert _snapshots(volume, repo) == {COMMIT_1, COMMIT_2}
    assert sha(weights[0]) in _blobs(volume, repo)
    assert _kept(volume) == [("m", COMMIT_1)]
    assert cli("verify", "--deep").code == ExitCode.OK

    assert cli("import", str(bundles[2])).code == ExitCode.OK
    assert _snapshots(volume, repo) == {COMMIT_2, commits[2]}
    assert _blobs(volume, repo) == {sha(CONFIG), sha(weights[1]), sha(weights[2])}
    assert _kept(volume) == [("m", COMMIT_2)]
    assert tree(tmp_path, skip=volume) == outside and sentinel.read_text() == "do not touch"


# ---- the record and the setting -----------------------------------------------------------------


def _record(**changes: Any) -> dict[str, Any]:
    generation = {"replaced_at": "2026-01-01T00:00:00+00:00", "entry": entry_json("m")}
    generation.update(changes)
    return {"version": 1, "models": {"m": [generation]}}


HOSTILE_RECORDS: dict[str, tuple[Any, str]] = {
    "commit ../..": (_record(entry=entry_json("m", commit="../../x")), "entry.commit"),
    "path ../x": (
        _record(entry=entry_json("m", {"../../x": b"x"})),
        "entry.files[0].path",
    ),
    "name differs": (_record(entry=entry_json("other")), "entry.name"),
    "bad time": (_record(replaced_at="yesterday"), "replaced_at"),
    "no offset": (_record(replaced_at="2026-01-01T00:00:00"), "replaced_at"),
    "unknown key": (_record(extra=1), "unknown keys"),
    "twice": (
        {"version": 1, "models": {"m": _record()["models"]["m"] * 2}},
        "listed twice",
    ),
    "version 2": ({"version": 2, "models": {}}, "version"),
    "not an object": ([], "the top level"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_RECORDS))
def test_a_malformed_record_is_refused_before_anything_changes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str
) -> None:
    data, fragment = HOSTILE_RECORDS[case]
    volume = tmp_path / "volume"
    cli = make_cli(capsys, volume)
    assert cli("import", str(_bundle(tmp_path, COMMIT_1, b"w" * 64))).code == ExitCode.OK
    (volume / PREVIOUS_NAME).write_text(json.dumps(data))
    with pytest.raises(SchemaError, match=fragment.replace("[", r"\[")):
        PreviousGenerations.load(volume)
    newer = _bundle(tmp_path, COMMIT_2, b"v" * 64)
    before = tree(tmp_path)
    commands = [("remove", "m"), ("gc",), ("gc", "--dry-run"), ("du",), ("list",)]
    for argv in [*commands, ("import", str(newer)), ("fetch", "--offline")]:
        result = cli(*argv)
        result.refused(ExitCode.INVALID_FILE, f"previous generations {volume / PREVIOUS_NAME}")
    assert tree(tmp_path) == before
    assert cli("verify", "--deep").code == ExitCode.OK  # verify never reads it


@pytest.mark.parametrize(
    ("text", "seconds", "shown"),
    [
        (None, None, "last"),
        ("", None, "last"),
        ("last", None, "last"),
        ("0", 0, "0"),
        ("0s", 0, "0"),
        ("90", 90, "90s"),
        ("10m", 600, "10m"),
        ("1.5h", 5400, "90m"),
        ("2d", 172800, "2d"),
    ],
)
def test_keep_previous_values(text: str | None, seconds: float | None, shown: str) -> None:
    keep = KeepPrevious.parse(text)
    assert keep.seconds == seconds and str(keep) == shown


@pytest.mark.parametrize("bad", ["-1", "1w", "forever", "10 minutes", "m"])
def test_a_bad_keep_previous_is_a_usage_error(run: Run, bad: str) -> None:
    env = run("fetch", "--dry-run", HUBLESS_KEEP_PREVIOUS=bad)
    assert env.code == ExitCode.USAGE and "HUBLESS_KEEP_PREVIOUS" in env.err
    flag = run("gc", "--keep-previous", bad)
    assert flag.code == ExitCode.USAGE and "--keep-previous" in flag.err


def test_split_keeps_the_last_per_model_or_what_is_young_enough() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    record = PreviousGenerations()
    for minutes, commit in ((30, "1"), (20, "2"), (5, "3")):
        entry = ModelEntry.from_json(entry_json("m", commit=commit * 40))
        record.retire(entry, (now - timedelta(minutes=minutes)).isoformat())
    removed = ModelEntry.from_json(entry_json("gone", commit="4" * 40))
    record.retire(removed, (now - timedelta(minutes=50)).isoformat())
    manifest = Manifest(models={"m": ModelEntry.from_json(entry_json("m", commit="3" * 40))})

    def commits(keep: str) -> tuple[list[str], list[str]]:
        kept, expired = KeepPrevious.parse(keep).split(record, manifest, now)
        return sorted(g.entry.commit[0] for g in kept), sorted(g.entry.commit[0] for g in expired)

    # "3" is m's current commit again: its record is let go, its files are the manifest's
    assert commits("last") == (["2", "4"], ["1", "3"])
    assert commits("0") == ([], ["1", "2", "3", "4"])
    assert commits("25m") == (["2"], ["1", "3", "4"])
    assert commits("1h") == (["1", "2", "4"], ["3"])
