"""Names from a bundle never lead the fetcher off the volume (``hubless_volume.inside``)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from hubless_fetcher.bundle import BUNDLE_INDEX, import_bundle
from hubless_fetcher.cli import main
from hubless_fetcher.errors import ExitCode
from hubless_volume import FileRecord, Manifest, ModelEntry, SchemaError

DATA = b"{}"
SHA = hashlib.sha256(DATA).hexdigest()


def _bundle(path: Path, entry: ModelEntry) -> Path:
    index = {"version": 1, "tasks": {}, "models": {entry.name: entry.to_json()}}
    with tarfile.open(path, "w") as tar:
        for name, data in ((BUNDLE_INDEX, json.dumps(index).encode()), (f"blobs/{SHA}", DATA)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    ("file", "commit", "revision", "field"),
    [
        ("../../../../escape.json", "a" * 40, "main", "files[0].path"),
        ("config.json", "../../..", "main", "commit"),
        ("config.json", "a" * 40, "../../../../escape.json", "revision"),
    ],
)
def test_import_refuses_a_bundle_leading_off_the_volume(
    tmp_path: Path, file: str, commit: str, revision: str, field: str
) -> None:
    models_dir = tmp_path / "volume"
    entry = ModelEntry("m", "org/m", revision, commit, "emotion", [FileRecord(file, 2, SHA)])
    bundle = _bundle(tmp_path / "evil.tar", entry)
    with pytest.raises(SchemaError, match=re.escape(f"models['m'].{field}: ")):
        import_bundle(models_dir, bundle)
    assert Manifest.load(models_dir).models == {}
    assert not (tmp_path / "escape.json").exists()
    code = main(["import", str(bundle), "--models-dir", str(models_dir)], env={})
    assert code == ExitCode.INVALID_FILE
