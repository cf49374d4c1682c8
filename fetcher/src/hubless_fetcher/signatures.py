"""Model signatures on the fetcher's side: ``sign``, and ``--trusted-key`` for ``verify`` and
``import``.

``sign`` runs on the connected side, after ``fetch`` (and ``hubless-optimize``), with the
private key: every installed model (or the named ones) gets the OpenSSF Model Signing
signature of its commit (:func:`hubless_volume.signing.sign_model`) and its manifest entry
records it (``signature``). It is idempotent: a model whose signature still verifies with the
key's public half is left as it is, so a re-run after a fetch that moved one model re-signs
that model only. It holds the volume write lock from start to end and saves the manifest
after each model, so a signature made is never lost to a later failure.

``--trusted-key`` (the public key, on the side that receives the volume or the bundle) makes
``verify`` fail a model that is not signed or whose signature does not verify
(:func:`hubless_volume.signing.verify_model`), and ``import`` refuse a bundle with one such
model before it installs anything: :func:`verify_staged` checks the signatures against the
blobs import has just staged and hashed, laid out as a volume of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hubless_fetcher.errors import ExitCode, UntrustedError
from hubless_fetcher.settings import ConfigError, Settings
from hubless_fetcher.volume import human, link_or_copy
from hubless_fetcher.writelock import VolumeWriteLock
from hubless_volume import (
    SIGNATURE_KIND,
    Manifest,
    ModelEntry,
    SignatureError,
    check_entry,
    derived_folder,
    inside,
    repo_folder_name,
    sign_model,
    signature_problem,
    signature_relpath,
    verify_model,
)
from hubless_volume.signing import public_key_pem

if TYPE_CHECKING:
    from hubless_fetcher.bundle import BundleIndex

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignResult:
    """What ``sign`` did with one model: ``signed``, ``kept`` (its signature still verifies
    with the key), or ``corrupt`` (its files do not match the manifest: not signed), and
    why (the problems, or what made a re-sign necessary)."""

    name: str
    status: str
    detail: str = ""


def sign_models(
    models_dir: Path,
    names: list[str],
    key: Path,
    *,
    on_result: Callable[[SignResult], None] = lambda _result: None,
) -> list[SignResult]:
    """Sign the installed models ``names`` (all for none) with the private ``key``.

    Raises :class:`~hubless_fetcher.settings.ConfigError` for a name that is not installed
    or an empty volume, and :class:`hubless_volume.signing.KeyFileError` for a key that is not
    an EC private key, both before anything is hashed or written. ``on_result`` hears each
    model's result as soon as it is known (the progress lines)."""
    models_dir = Path(models_dir)
    public_key_pem(key)
    with VolumeWriteLock(models_dir):
        manifest = Manifest.load(models_dir)
        wanted = list(names) or sorted(manifest.models)
        missing = [n for n in wanted if n not in manifest.models]
        if missing:
            raise ConfigError(f"not installed in {models_dir}: {', '.join(missing)}")
        if not wanted:
            raise ConfigError(f"nothing installed in {models_dir} to sign")
        results = []
        for position, name in enumerate(wanted, 1):
            entry = manifest.models[name]
            logger.info(
                "[%d/%d] %s (%d files, %s)",
                position,
                len(wanted),
                name,
                len(entry.files),
                human(entry.size),
            )
            result = _sign_one(models_dir, entry, key)
            if result.status == "signed":
                entry.signature = signature_relpath(entry.repo_id, entry.commit)
                manifest.save(models_dir)
            results.append(result)
            on_result(result)
        return results


def sign_command(names: list[str], settings: Settings) -> ExitCode:
    """``sign [NAME...]``: sign, print a line per model and a count; exit 0, or 5 when a
    model's files do not match its manifest or what the same key signed for its commit (it
    is not signed; the others are)."""
    key = settings.signing_key
    if key is None:
        raise ConfigError("sign: give the private key with --key PATH (or HUBLESS_SIGNING_KEY)")

    def show(result: SignResult) -> None:
        print(f"{result.name}: {result.status}" + (f" ({result.detail})" if result.detail else ""))

    results = sign_models(settings.models_dir, names, key, on_result=show)
    counts = {s: sum(r.status == s for r in results) for s in ("signed", "kept", "corrupt")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()))
    if counts["corrupt"]:
        logger.error(
            "%d model(s) not signed: their files are not what the manifest (repair: "
            "`hubless-fetch fetch --deep`) or an earlier signature says (see each line)",
            counts["corrupt"],
        )
        return ExitCode.CORRUPT
    return ExitCode.OK


def _sign_one(models_dir: Path, entry: ModelEntry, key: Path) -> SignResult:
    problems = check_entry(models_dir, entry)
    if problems:
        return SignResult(entry.name, "corrupt", "; ".join(p.detail for p in problems))
    why = "not signed before"
    if entry.signature:
        failed = signature_problem(models_dir, entry, key)
        if failed is None:
            return SignResult(entry.name, "kept", "its signature still verifies with the key")
        if failed.content_changed:  # the same key signed other files for this very commit
            return SignResult(
                entry.name,
                "corrupt",
                f"{failed.reason}; this key signed other content for commit "
                f"{entry.commit[:12]}, so it is not signed again: unless the change is yours, "
                f"fetch the model again (`hubless-fetch remove {entry.name}`, then `fetch`)",
            )
        why = failed.reason
        logger.info("%s: signing again: %s", entry.name, why)
    try:
        sign_model(models_dir, entry, key)
    except SignatureError as exc:
        return SignResult(entry.name, "corrupt", exc.reason)
    return SignResult(entry.name, "signed", why)


def trust_problem(models_dir: Path, entry: ModelEntry, trusted_key: Path) -> str:
    """Why ``entry`` is not trusted with ``trusted_key`` (not signed, does not verify), or
    ``""`` when its signature verifies (``verify --trusted-key``)."""
    try:
        verify_model(models_dir, entry, trusted_key)
    except SignatureError as exc:
        return exc.reason
    return ""


def verify_staged(
    bundle: Path,
    root: Path,
    index: BundleIndex,
    blobs: dict[str, Path],
    trusted_key: Path,
) -> None:
    """Verify every model of a bundle against its staged blobs, before anything is installed.

    ``blobs`` (sha256 -> staged file, already hashed) are linked under ``root`` in the volume
    layout (each model's snapshot, derived files and signature files), so the check is the
    one a volume gets (:func:`hubless_volume.signing.verify_model`). Raises
    :class:`~hubless_fetcher.errors.UntrustedError` naming every model that fails, and why."""
    failed = []
    for entry in index.entries:
        repo = repo_folder_name(entry.repo_id)
        placed = [(f"snapshots/{entry.commit}/{r.path}", r.sha256) for r in entry.files]
        placed += [(r.path, r.sha256) for r in entry.artifacts]
        if entry.golden is not None:
            placed.append((entry.golden.path, entry.golden.sha256))
        folder = derived_folder(SIGNATURE_KIND, entry.commit)
        placed += [(f"{folder}/{r.path}", r.sha256) for r in index.signatures.get(entry.name, [])]
        root.mkdir(parents=True, exist_ok=True)
        for relative, sha256 in placed:
            target = inside(root, repo, relative)
            if not target.exists():
                link_or_copy(blobs[sha256], target)
        reason = trust_problem(root, entry, trusted_key)
        if reason:
            failed.append(f"{entry.name}: {reason}")
    if failed:
        raise UntrustedError(
            f"{bundle}: nothing imported (--trusted-key): " + "; ".join(sorted(failed))
        )
    logger.info("every model of %s is signed by the trusted key", bundle)
