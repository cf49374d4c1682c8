"""Reading the small JSON files hubless keeps (the previous-generations record, golden
outputs, the signed statement, the fetcher's lock file) one way.

A read goes through :mod:`hubless_volume.safeio`, so what sits at the path is not trusted: a
file of the volume must be a regular file inside it (:func:`read_volume_file`), a file the
operator names a regular file (:func:`read_regular_file`); both are refused over their size
cap before a byte is read, and neither blocks on a FIFO. The content is then parsed with a key
twice in one object refused (plain ``json`` keeps the last one silently). Every failure is a
:class:`SchemaError` naming the file; an absent file raises ``FileNotFoundError``, because
absent often has a meaning of its own (nothing kept, no golden outputs yet).

Writing is :mod:`hubless_volume.atomic`'s, the one atomic-write helper; :func:`capped_json`
gives the bytes to write, refused when over the cap its readers apply (never write what every
reader refuses).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hubless_volume.atomic import json_bytes
from hubless_volume.safeio import VolumeFileError, read_regular_file, read_volume_file
from hubless_volume.schema import SchemaError, no_duplicate_keys


def parse_json(raw: bytes, file: str) -> Any:
    """``raw`` (UTF-8 JSON) parsed, a key twice in one object refused; :class:`SchemaError`
    naming ``file`` when it is not UTF-8 or not JSON."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicate_keys)
    except UnicodeDecodeError as exc:
        raise SchemaError(file, "", f"cannot read it: {exc}") from None
    except ValueError as exc:
        raise SchemaError(file, "", f"not valid JSON: {exc}") from None


def read_checked(
    path: Path | str, file: str, *, limit: int, models_dir: Path | str | None = None
) -> bytes:
    """The bytes of ``path``, at most ``limit``.

    With ``models_dir``, ``path`` (relative to it, or absolute) is a file of the volume and
    must be a regular file inside it, links followed (:func:`read_volume_file`); without, a
    regular file anywhere (:func:`read_regular_file`). :class:`SchemaError` naming ``file``
    for a FIFO, a device, a folder, a link leaving the volume, a file over ``limit``, or one
    that cannot be read; ``FileNotFoundError`` passes through."""
    try:
        if models_dir is not None:
            return read_volume_file(models_dir, path, limit)
        return read_regular_file(path, limit)
    except FileNotFoundError:
        raise
    except VolumeFileError as exc:
        raise SchemaError(file, "", exc.reason) from None
    except OSError as exc:
        raise SchemaError(file, "", f"cannot read it: {exc}") from None


def read_json(
    path: Path | str, file: str, *, limit: int, models_dir: Path | str | None = None
) -> Any:
    """The parsed content of ``path`` (:func:`read_checked`, then :func:`parse_json`):
    :class:`SchemaError` naming ``file`` for what either refuses; ``FileNotFoundError``
    passes through."""
    return parse_json(read_checked(path, file, limit=limit, models_dir=models_dir), file)


def capped_json(data: Any, file: str, limit: int, error: type[SchemaError] = SchemaError) -> bytes:
    """``data`` as the volume's JSON files are written (:func:`~hubless_volume.atomic.json_bytes`),
    or ``error`` naming ``file`` when that is more than ``limit`` bytes, the cap its readers
    apply."""
    raw = json_bytes(data)
    if len(raw) > limit:
        raise error(file, "", f"would be {len(raw)} bytes, more than the {limit} bytes allowed")
    return raw
