"""The volume's own files are regular files inside the volume, under a size cap, and reading
them never blocks (hubless_volume.safeio); and the one atomic-write helper
(hubless_volume.atomic)."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from hubless_volume import (
    MANIFEST_NAME,
    PREVIOUS_NAME,
    FileRecord,
    Manifest,
    ManifestError,
    ManifestMissingError,
    ModelEntry,
    PreviousGenerations,
    SchemaError,
    VolumeFileError,
    atomic_output,
    atomic_place_file,
    atomic_symlink,
    atomic_write_bytes,
    atomic_write_json,
    check_entry,
    read_regular_file,
    read_volume_file,
    safeio,
    sha256_file,
)
from hubless_volume import manifest as manifest_module
from tests.support.blocking import soon

COMMIT = "a" * 40


def _valid_manifest() -> bytes:
    return json.dumps({"version": 1, "models": {}}).encode()


# ---- what sits at the manifest's path ------------------------------------------------------


def test_a_fifo_manifest_is_refused_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / MANIFEST_NAME)
    with pytest.raises(ManifestError) as caught:
        soon(lambda: Manifest.load(tmp_path))
    assert "is a FIFO (named pipe), not a regular file" in str(caught.value)
    assert str(tmp_path / MANIFEST_NAME) in str(caught.value)
    with pytest.raises(VolumeFileError, match=f"^{MANIFEST_NAME}: is a FIFO"):
        soon(lambda: read_volume_file(tmp_path, MANIFEST_NAME, 100))


def test_dev_zero_behind_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).symlink_to("/dev/zero")
    with pytest.raises(ManifestError, match="resolves to /dev/zero, outside the volume"):
        soon(lambda: Manifest.load(tmp_path))
    # the same device named directly (a catalog path may be anywhere): refused for its kind
    with pytest.raises(VolumeFileError, match="is a character device, not a regular file"):
        soon(lambda: read_regular_file("/dev/zero", 100))


def test_a_link_leaving_the_volume_is_refused_even_to_a_valid_manifest(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (tmp_path / "elsewhere.json").write_bytes(_valid_manifest())
    (volume / MANIFEST_NAME).symlink_to("../elsewhere.json")
    with pytest.raises(ManifestError, match="outside the volume"):
        Manifest.load(volume)
    with pytest.raises(VolumeFileError, match=f"^{MANIFEST_NAME}: resolves to"):
        read_volume_file(volume, MANIFEST_NAME, 1 << 20)


def test_a_link_inside_the_volume_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real.json").write_bytes(_valid_manifest())
    (tmp_path / MANIFEST_NAME).symlink_to("real.json")
    assert Manifest.load(tmp_path) == Manifest()


def test_a_sparse_gigabyte_is_refused_from_its_size_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / MANIFEST_NAME, "wb") as fh:
        fh.truncate(1 << 30)

    def no_read(*_args: Any) -> bytes:
        raise AssertionError("the file was read")

    monkeypatch.setattr(safeio, "_read_fd", no_read)
    with pytest.raises(ManifestError, match=f"is 1073741824 bytes, more than the {16 << 20}"):
        Manifest.load(tmp_path)


def test_a_folder_a_socket_and_absence(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).mkdir()
    with pytest.raises(ManifestError, match="is a folder, not a regular file"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_NAME).rmdir()
    path = tmp_path / MANIFEST_NAME
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(ManifestError, match="is a socket, not a regular file"):
            soon(lambda: Manifest.load(tmp_path))
    path.unlink()
    assert Manifest.load(tmp_path) == Manifest()  # absent: an empty volume
    (tmp_path / MANIFEST_NAME).symlink_to("gone.json")
    assert Manifest.load(tmp_path) == Manifest()  # a link to nothing inside: absent too


def test_missing_ok_false_tells_a_vanished_manifest_from_an_empty_volume(tmp_path: Path) -> None:
    with pytest.raises(ManifestMissingError, match="is missing") as caught:
        Manifest.load(tmp_path, missing_ok=False)
    assert isinstance(caught.value, ManifestError)  # old `except ManifestError` still holds
    Manifest().save(tmp_path)
    assert Manifest.load(tmp_path, missing_ok=False) == Manifest()


def test_a_previous_generations_record_that_is_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / PREVIOUS_NAME)
    with pytest.raises(SchemaError, match="is a FIFO"):
        soon(lambda: PreviousGenerations.load(tmp_path))


def test_size_caps_are_exact(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 10)
    assert read_volume_file(tmp_path, "f", 10) == b"x" * 10
    assert read_regular_file(tmp_path / "f", 10) == b"x" * 10
    with pytest.raises(VolumeFileError, match=r"^f: is 10 bytes, more than the 9 bytes"):
        read_volume_file(tmp_path, "f", 9)


def test_paths_that_leave_the_volume(tmp_path: Path) -> None:
    volume = tmp_path / "v"
    volume.mkdir()
    (tmp_path / "x").write_text("outside")
    with pytest.raises(VolumeFileError, match="leaves the volume"):
        read_volume_file(volume, "../x", 100)
    with pytest.raises(VolumeFileError, match="outside the volume"):
        read_volume_file(volume, tmp_path / "x", 100)
    (volume / "sub").symlink_to(tmp_path)  # a folder link leaving the volume
    with pytest.raises(VolumeFileError, match=r"^sub/x: resolves to"):
        read_volume_file(volume, "sub/x", 100)
    with pytest.raises(FileNotFoundError):
        read_volume_file(volume, "absent", 100)


def test_manifest_save_refuses_what_readers_would_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest_module, "MAX_MANIFEST_BYTES", 10)
    with pytest.raises(ManifestError, match="more than the 10 bytes allowed"):
        Manifest().save(tmp_path)
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_a_model_file_that_is_a_fifo_fails_the_check_without_blocking(tmp_path: Path) -> None:
    blob = tmp_path / "models--org--m" / "blobs" / ("b" * 64)
    blob.parent.mkdir(parents=True)
    os.mkfifo(blob)
    link = tmp_path / "models--org--m" / "snapshots" / COMMIT / "config.json"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    entry = ModelEntry(
        "m", "org/m", "main", COMMIT, "embedding", [FileRecord("config.json", 0, "b" * 64)]
    )
    for deep in (False, True):
        (problem,) = soon(lambda d=deep: check_entry(tmp_path, entry, deep=d))
        assert problem.reason == "is a FIFO (named pipe), not a regular file"
    with pytest.raises(VolumeFileError, match="is a FIFO"):
        soon(lambda: sha256_file(blob))


# ---- atomic writes ------------------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_bytes_replaces_whole_with_the_volume_mode(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text("old")
    os.chmod(path, 0o600)
    before = path.stat().st_ino
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.stat().st_ino != before  # a new file renamed over, never written in place
    assert _leftovers(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    path.write_text("old")

    def broken(*_args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(path, b"new")
    assert path.read_text() == "old" and _leftovers(tmp_path) == []
    monkeypatch.undo()
    with pytest.raises(RuntimeError), atomic_output(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer failed")
    assert path.read_text() == "old" and _leftovers(tmp_path) == []


def test_atomic_write_json_keeps_the_volume_format(tmp_path: Path) -> None:
    data = {"version": 1, "models": {"é": [1, 2]}}
    atomic_write_json(tmp_path / "a.json", data)
    assert (tmp_path / "a.json").read_text() == json.dumps(data, indent=2) + "\n"


def test_atomic_place_file_and_symlink(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"blob")
    target = tmp_path / "target"
    atomic_place_file(source, target)
    assert target.read_bytes() == b"blob" and source.exists()
    source.write_bytes(b"blob 2")
    atomic_place_file(source, target, move=True)
    assert target.read_bytes() == b"blob 2" and not source.exists()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    link = tmp_path / "link"
    atomic_symlink(link, "target")
    atomic_symlink(link, "elsewhere")  # replaces the link itself, not what it points at
    assert os.readlink(link) == "elsewhere" and target.read_bytes() == b"blob 2"
    assert _leftovers(tmp_path) == []
