"""A hostile or broken bundle is refused whole, with exit code and message naming the file and
field, before it writes anything: the volume is unchanged and nothing outside it appears or
disappears. A good import at a new commit prunes what the old commit left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hubless_fetcher.bundle import BUNDLE_INDEX
from hubless_fetcher.errors import ExitCode
from hubless_fetcher.volume import prune_unreferenced
from hubless_volume import Manifest, repo_folder_name
from tests.fetcher.hostile import (
    COMMIT_2,
    Cli,
    Member,
    bundle_members,
    entry_json,
    file_member,
    index_json,
    link_member,
    make_cli,
    sha,
    tree,
    write_tar,
)

CONFIG = b'{"a": 1}\n'
WEIGHTS = b"weights " * 64
FILES = {"config.json": CONFIG, "model.safetensors": WEIGHTS}


@pytest.fixture
def area(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """``tmp_path/volume`` holding one imported model ``keep``, and a sentinel beside it."""
    volume = tmp_path / "volume"
    keep = {"config.json": b'{"keep": 1}\n'}
    good = write_tar(
        tmp_path / "keep.tar",
        bundle_members(index_json(entry_json("keep", keep)), list(keep.values())),
    )
    assert make_cli(capsys, volume)("import", str(good)).code == ExitCode.OK
    (tmp_path / "sentinel.txt").write_text("do not touch")
    return tmp_path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], area: Path) -> Cli:
    return make_cli(capsys, area / "volume")


def _good(**changes: Any) -> dict[str, Any]:
    return entry_json("m", FILES, **changes)


def _with_files(*files: dict[str, Any]) -> dict[str, Any]:
    entry = _good()
    entry["files"] = list(files)
    return entry


def _index_text_with_a_model_twice() -> bytes:
    one = json.dumps(_good())
    return f'{{"version": 1, "tasks": {{}}, "models": {{"m": {one}, "m": {one}}}}}'.encode()


def _rec(path: str, data: bytes, size: int | None = None) -> dict[str, Any]:
    return {"path": path, "size": len(data) if size is None else size, "sha256": sha(data)}


# (index or raw index bytes, the fragments the error line must hold)
INVALID_INDEXES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "absolute path": (
        index_json(_with_files(_rec("/tmp/hubless-evil.json", CONFIG))),
        ("models['m'].files[0].path", "is absolute"),
    ),
    "dot-dot path": (
        index_json(_with_files(_rec("../../../evil.json", CONFIG))),
        ("models['m'].files[0].path", "leaves the model folder"),
    ),
    "dot-dot name": (
        index_json(entry_json("../evil", FILES)),
        ("models['../evil']", "is not a model name"),
    ),
    "dot-dot commit": (index_json(_good(commit="../../..")), ("models['m'].commit",)),
    "dot-dot revision": (
        index_json(_good(revision="../../../evil")),
        ("models['m'].revision", "is not a branch, tag or commit"),
    ),
    "dot-dot repo id": (index_json(_good(repo_id="org/../../evil")), ("models['m'].repo_id",)),
    "no files": (index_json(_with_files()), ("models['m'].files", "lists no files")),
    "unknown task": (index_json(_good(task="translation")), ("models['m'].task", "unknown task")),
    "sha with two sizes": (
        index_json(_good(), {**entry_json("n"), "files": [_rec("w.bin", WEIGHTS, size=1)]}),
        ("models['n'].files[0].size", "two sizes"),
    ),
    "sha with two sizes in one model": (
        index_json(_with_files(_rec("a.json", CONFIG), _rec("b.json", CONFIG, size=1))),
        ("models['m'].files[1].size", "two sizes"),
    ),
    "file listed twice": (
        index_json(_with_files(_rec("config.json", CONFIG), _rec("config.json", CONFIG))),
        ("models['m'].files[1].path", "listed twice"),
    ),
    "model listed twice": (_index_text_with_a_model_twice(), ("'m' appears twice",)),
    "name not its key": (
        {"version": 1, "tasks": {}, "models": {"keep": _good()}},
        ("models['keep'].name", "differs from its key"),
    ),
    "tasks naming an unknown model": (
        {**index_json(_good()), "tasks": {"emotion": ["ghost"]}},
        ("tasks['emotion'][0]", "unknown model 'ghost'"),
    ),
    "wrong shape": ({"version": 1, "models": [_good()]}, ("models: is list",)),
    "no models": (index_json(), ("lists no models",)),
    "unsupported version": ({**index_json(_good()), "version": 9}, ("version",)),
    "not JSON": (b"{", (BUNDLE_INDEX, "not valid JSON")),
}

BLOBS = [CONFIG, WEIGHTS]
INDEX = index_json(_good())
INVALID_ARCHIVES: dict[str, tuple[list[Member], tuple[str, ...]]] = {
    "symlink member": (
        [*bundle_members(INDEX, [CONFIG]), link_member(f"blobs/{sha(WEIGHTS)}", "/etc/passwd")],
        (f"member 'blobs/{sha(WEIGHTS)}'", "is a link"),
    ),
    "hard link member": (
        [
            *bundle_members(INDEX, [CONFIG]),
            link_member(f"blobs/{sha(WEIGHTS)}", f"blobs/{sha(CONFIG)}", hard=True),
        ],
        ("is a link",),
    ),
    "member twice": (
        [*bundle_members(INDEX, BLOBS), file_member(f"blobs/{sha(CONFIG)}", CONFIG)],
        (f"member 'blobs/{sha(CONFIG)}'", "appears twice"),
    ),
    "index twice": (
        [*bundle_members(INDEX, BLOBS), file_member(BUNDLE_INDEX, b"{}")],
        (f"member '{BUNDLE_INDEX}'", "appears twice"),
    ),
    "member leaving the archive": (
        [*bundle_members(INDEX, BLOBS), file_member("../../evil.txt", b"x")],
        ("member '../../evil.txt'", "is neither"),
    ),
    "index not first": (
        bundle_members(INDEX, BLOBS)[1:] + bundle_members(INDEX, [])[:1],
        ("first",),
    ),
}

CORRUPT_DATA: dict[str, tuple[list[Member], tuple[str, ...]]] = {
    "missing blob data": (bundle_members(INDEX, [CONFIG]), ("m: model.safetensors is missing",)),
    "blob of the wrong size": (
        [*bundle_members(INDEX, [CONFIG]), file_member(f"blobs/{sha(WEIGHTS)}", WEIGHTS[:-1])],
        ("model.safetensors has", "bytes in the bundle"),
    ),
    "blob with other bytes": (
        [
            *bundle_members(INDEX, [CONFIG]),
            file_member(f"blobs/{sha(WEIGHTS)}", WEIGHTS[:-1] + b"!"),
        ],
        ("m: model.safetensors is corrupt",),
    ),
    "blob not in the index": (
        bundle_members(INDEX, [*BLOBS, b"stowaway"]),
        (f"blobs/{sha(b'stowaway')} is not listed",),
    ),
}


def _refused_import(
    cli: Cli, area: Path, bundle: Path, code: int, fragments: tuple[str, ...], **kw: Any
) -> None:
    volume = area / "volume"
    outside, inside = tree(area, skip=volume), tree(volume)
    result = cli("import", str(bundle), **kw)
    result.refused(code, *fragments)
    assert tree(volume) == inside, "a refused import changed the volume"
    assert tree(area, skip=volume) == outside, "a refused import wrote or deleted outside"
    assert (area / "sentinel.txt").read_text() == "do not touch"
    assert sorted(Manifest.load(volume).models) == ["keep"]


@pytest.mark.parametrize("case", sorted(INVALID_INDEXES))
def test_invalid_index_is_refused_before_writing(cli: Cli, area: Path, case: str) -> None:
    index, fragments = INVALID_INDEXES[case]
    bundle = write_tar(area / "evil.tar", bundle_members(index, BLOBS))
    _refused_import(cli, area, bundle, ExitCode.INVALID_FILE, (str(bundle), *fragments))


@pytest.mark.parametrize("case", sorted(INVALID_ARCHIVES))
def test_invalid_archive_is_refused_before_writing(cli: Cli, area: Path, case: str) -> None:
    members, fragments = INVALID_ARCHIVES[case]
    bundle = write_tar(area / "evil.tar", members)
    _refused_import(cli, area, bundle, ExitCode.INVALID_FILE, (f"bundle {bundle}", *fragments))


@pytest.mark.parametrize("case", sorted(CORRUPT_DATA))
def test_blob_data_not_matching_the_index_is_refused(cli: Cli, area: Path, case: str) -> None:
    members, fragments = CORRUPT_DATA[case]
    bundle = write_tar(area / "bad.tar", members)
    _refused_import(
        cli, area, bundle, ExitCode.CORRUPT, (str(bundle), "nothing imported", *fragments)
    )


def test_not_enough_space_is_refused_before_writing(cli: Cli, area: Path) -> None:
    bundle = write_tar(area / "big.tar", bundle_members(INDEX, BLOBS))
    fragments = ("not enough disk space", "still to import")
    _refused_import(cli, area, bundle, ExitCode.NO_SPACE, fragments, free_space=lambda _: 100)
    assert cli("import", str(bundle), free_space=lambda _: 10**9).code == ExitCode.OK


def test_import_at_a_new_commit_prunes_what_the_old_one_left(cli: Cli, area: Path) -> None:
    volume = area / "volume"
    first = write_tar(area / "v1.tar", bundle_members(INDEX, BLOBS))
    assert cli("import", str(first)).code == ExitCode.OK
    repo = volume / repo_folder_name("org/m")
    old_snapshot = repo / "snapshots" / INDEX["models"]["m"]["commit"]
    assert old_snapshot.is_dir() and (repo / "blobs" / sha(WEIGHTS)).is_file()

    new_weights = b"new weights " * 64
    files = {"config.json": CONFIG, "model.safetensors": new_weights}
    second = write_tar(
        area / "v2.tar",
        bundle_members(index_json(entry_json("m", files, commit=COMMIT_2)), [CONFIG, new_weights]),
    )
    result = cli("import", str(second), HUBLESS_KEEP_PREVIOUS="0")  # default: test_retention
    assert result.code == ExitCode.OK, result.err
    assert not old_snapshot.exists()
    assert sorted(p.name for p in (repo / "blobs").iterdir()) == sorted(
        [sha(CONFIG), sha(new_weights)]
    )
    assert sorted(p.name for p in (repo / "snapshots").iterdir()) == [COMMIT_2]
    assert (repo / "refs" / "main").read_text() == COMMIT_2
    assert cli("verify", "--deep").code == ExitCode.OK
    assert sorted(Manifest.load(volume).models) == ["keep", "m"]


def test_pruning_never_follows_a_link_out_of_the_volume(area: Path) -> None:
    volume = area / "volume"
    outside = area / "outside"
    (outside / "snap").mkdir(parents=True)
    (outside / "snap" / "precious.bin").write_bytes(b"precious")
    (outside / "blob").write_bytes(b"blob")
    repo = volume / repo_folder_name("org/keep")
    (repo / "snapshots" / ("9" * 40)).symlink_to(outside / "snap")  # an old snapshot: a link
    (repo / "blobs" / ("f" * 64)).symlink_to(outside / "blob")  # an unreferenced blob: a link
    before = tree(outside)
    removed = prune_unreferenced(volume, Manifest.load(volume))
    assert repo / "snapshots" / ("9" * 40) in removed and repo / "blobs" / ("f" * 64) in removed
    assert tree(outside) == before
    assert not (repo / "snapshots" / ("9" * 40)).is_symlink()
    assert Manifest.load(volume).models["keep"].snapshot_dir(volume).is_dir()
