"""Reading and writing the small JSON files of a models volume.

Every JSON file hubless keeps on the volume (the manifest, the record of previous
generations, the golden outputs, the signed statement) is written the same way, atomically
(temp file beside it, fsync, rename, fsync of the folder), so a reader sees the old file or
the new one, never a mix; and read the same way, with a key twice in one object refused
(plain ``json`` keeps the last one silently).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hubless_volume.schema import SchemaError, no_duplicate_keys


def read_json(path: Path, file: str, *, limit: int | None = None) -> Any:
    """The parsed content of ``path``; :class:`SchemaError` naming ``file`` when it cannot
    be read, is larger than ``limit`` bytes, or is not JSON. ``FileNotFoundError`` passes
    through (absent often has a meaning of its own)."""
    try:
        if limit is not None and path.stat().st_size > limit:
            raise SchemaError(file, "", f"is larger than {limit} bytes")
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(file, "", f"cannot read it: {exc}") from None
    try:
        return json.loads(raw, object_pairs_hook=no_duplicate_keys)
    except ValueError as exc:
        raise SchemaError(file, "", f"not valid JSON: {exc}") from None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temp file beside it, fsync, rename,
    fsync of the folder): a reader sees the old file or the new one, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
