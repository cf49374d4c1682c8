"""Where things live on a models volume, and the one way to join a path into it.

The volume is a standard Hugging Face hub cache: ``models--org--name/{blobs,snapshots,refs}``.
Names that end up in paths (a repo id, a commit, a file's path inside a snapshot) come from
the catalog, the hub, a bundle or the manifest, none of which is trusted to stay inside the
volume. Every join of such a name into the volume goes through :func:`inside`, which refuses
absolute parts, ``..`` and a result that (symlinks followed) lands outside the volume root.

Besides the hub cache, a repository folder holds what hubless derived from a commit, each kind
in ``hubless-<kind>/<commit>/`` (:func:`derived_folder`): ``hubless-optimize``'s ONNX exports
(``onnx``), the golden outputs (``golden``, :mod:`hubless_volume.golden`) and the signature
files (``signatures``, :mod:`hubless_volume.signing`), so whatever a file is, its folder names
the commit it belongs to and pruning treats every kind alike.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


class VolumePathError(ValueError):
    """A path built from volume data would leave the volume."""


def inside(root: Path | str, *parts: str) -> Path:
    """``root / parts...``, refused unless it stays under ``root``.

    Each part is a relative, ``/``-separated path (``"1_Pooling/config.json"`` is fine).
    Raises :class:`VolumePathError` for an empty, absolute or ``..`` part, or when the joined
    path, after resolving symlinks, is not under the resolved ``root``. The path returned is
    the lexical join (not resolved), so callers still see snapshot links as links.
    """
    root = Path(root)
    path = root
    for part in parts:
        text = os.fspath(part)
        pure = PurePosixPath(text)
        if not text or pure.is_absolute():
            raise VolumePathError(f"{text!r} is not a relative path inside the volume")
        if ".." in pure.parts:
            raise VolumePathError(f"{text!r} leaves the volume")
        path = path.joinpath(*pure.parts)
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        raise VolumePathError(f"{path} resolves to {real}, outside the volume {real_root}")
    return path


def repo_folder_name(repo_id: str) -> str:
    """The hub cache folder of a model repository: ``org/name`` -> ``models--org--name``."""
    return "models--" + repo_id.replace("/", "--")


def repo_dir(models_dir: Path, repo_id: str) -> Path:
    """``<models_dir>/models--org--name``: the repository's blobs, snapshots and refs."""
    return inside(models_dir, repo_folder_name(repo_id))


def blobs_dir(models_dir: Path, repo_id: str) -> Path:
    """``<models_dir>/models--org--name/blobs``: the repository's content, by sha256."""
    return inside(models_dir, repo_folder_name(repo_id), "blobs")


def snapshot_dir(models_dir: Path, repo_id: str, commit: str) -> Path:
    """``<models_dir>/models--org--name/snapshots/<commit>``: what ``from_pretrained`` gets."""
    return inside(models_dir, repo_folder_name(repo_id), "snapshots", commit)


def snapshot_file(models_dir: Path, repo_id: str, commit: str, path: str) -> Path:
    """One file of a snapshot (a symlink to its blob); refused if it leads off the volume."""
    return inside(models_dir, repo_folder_name(repo_id), "snapshots", commit, path)


GOLDEN_KIND = "golden"
"""Folder kind of the golden outputs: ``hubless-golden/<commit>/golden.json``."""
GOLDEN_NAME = "golden.json"
SIGNATURE_KIND = "signatures"
"""Folder kind of the signature files: ``hubless-signatures/<commit>/``."""
SIGNATURE_NAME = "model.sig"
"""The OpenSSF Model Signing signature of the snapshot folder (what ``signature`` names)."""
STATEMENT_NAME = "hubless.json"
"""The signed statement of what else belongs to the commit (artifacts, golden outputs)."""
STATEMENT_SIGNATURE_NAME = "hubless.json.sig"
SIGNATURE_FILES = (SIGNATURE_NAME, STATEMENT_NAME, STATEMENT_SIGNATURE_NAME)
"""The files of a signed commit, in its ``hubless-signatures/<commit>/`` folder."""


def derived_folder(kind: str, commit: str) -> str:
    """Where a model's derived files of ``kind`` for ``commit`` live, relative to its
    repository folder (``models--org--name``): ``hubless-<kind>/<commit>``."""
    return f"hubless-{kind}/{commit}"


def signature_relpath(repo_id: str, commit: str) -> str:
    """The one valid ``signature`` of a manifest entry, relative to the volume:
    ``models--org--name/hubless-signatures/<commit>/model.sig``."""
    folder = derived_folder(SIGNATURE_KIND, commit)
    return f"{repo_folder_name(repo_id)}/{folder}/{SIGNATURE_NAME}"
