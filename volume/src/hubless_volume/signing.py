"""Signed models: OpenSSF Model Signing signatures made with an offline key pair.

The manifest's sha256s prove that a file arrived intact, but the manifest lives on the same
volume as the weights: whoever can write the volume can change a file *and* its hash. A
signature made on the connected side with a private key that never reaches the volume, and
checked with its public half (``--trusted-key``), closes that: a changed file, a re-hashed
manifest, an unsigned model or another model's signature no longer verify.

Per model and commit, three files in ``models--org--name/hubless-signatures/<commit>/``:

- ``model.sig``: the OpenSSF Model Signing signature (a Sigstore bundle with a DSSE envelope,
  the ``model-signing`` library's key mode) of the snapshot folder
  ``snapshots/<commit>/``, its links followed. The manifest entry's ``signature`` names it.
  The upstream CLI verifies it on its own::

      model_signing verify key SNAPSHOT_DIR --allow_symlinks --signature model.sig \\
          --public_key PUB

- ``hubless.json``: the statement of what else belongs to the signed commit: the entry's
  name, repo, commit and task, the sha256 of ``model.sig``, and path, size and sha256 of each
  file hubless derived from the commit (ONNX artifacts, golden outputs) that lives outside the
  snapshot folder (``model_signing verify`` covers one folder, and the hub cache's snapshot
  folder must hold the model's files and nothing else);
- ``hubless.json.sig``: the same kind of signature of that one file (``model_signing verify key
  hubless.json --signature hubless.json.sig --public_key PUB``).

So one key signs both; the statement ties the snapshot's signature to the entry's identity
(the upstream format names no model: a signature of another model's files would verify
there) and to the derived files, which are checked by their sha256.

The library is an optional dependency (``hubless-volume[signing]``: ``model-signing`` and the
``pyOpenSSL`` it imports without declaring it), imported only when a function here signs or
verifies: ``import hubless_volume`` stays standard-library only.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubless_volume.atomic import atomic_output, atomic_write_json
from hubless_volume.check import plain_file_refusal, sha256_file
from hubless_volume.jsonfile import parse_json, read_json
from hubless_volume.paths import (
    SIGNATURE_NAME,
    STATEMENT_NAME,
    STATEMENT_SIGNATURE_NAME,
    VolumePathError,
)
from hubless_volume.safeio import (
    VolumeFileError,
    kind_of,
    read_regular_file,
    volume_relative,
)
from hubless_volume.schema import (
    SchemaError,
    check_commit,
    check_name,
    check_object,
    check_repo_id,
    check_sha256,
    check_task,
    check_type,
)

if TYPE_CHECKING:
    from hubless_volume.manifest import FileRecord, ModelEntry

logger = logging.getLogger(__name__)

STATEMENT_VERSION = 1
SIGNING_EXTRA = "hubless-volume[signing]"
_GIT_PATHS = (".git/", ".github/", ".gitattributes", ".gitignore")  # upstream leaves them out
_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # what model-signing's key mode accepts
_MAX_STATEMENT = 1 << 20  # ~150 bytes per derived file listed
_MAX_SIGNATURE = 16 << 20  # model.sig: ~200 bytes per snapshot file, so ~80,000 files
_MAX_KEY = 64 << 10  # a PEM EC key is under 1 KB


class SignatureError(Exception):
    """A model's signature is missing or does not verify; ``reason`` says which and why.

    ``content_changed`` is set when the signature itself holds (the statement verified with
    the key and is of this very entry) but the snapshot's files are not the signed ones:
    what was signed for this commit was changed since, which no update explains (a commit
    pins its files), so ``hubless-fetch sign`` does not sign it again."""

    def __init__(self, model: str, reason: str, *, content_changed: bool = False) -> None:
        self.model, self.reason, self.content_changed = model, reason, content_changed
        super().__init__(f"{model}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.model, self.reason, self.content_changed))


def _rebuild(cls: type[SignatureError], model: str, reason: str, changed: bool) -> SignatureError:
    return cls(model, reason, content_changed=changed)


class SigningUnavailableError(RuntimeError):
    """The optional signing dependencies (``hubless-volume[signing]``) are not installed."""


class KeyFileError(ValueError):
    """A key file is unreadable, or not the kind of key asked for."""


def _model_signing() -> Any:
    try:
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
    except ImportError as exc:
        raise SigningUnavailableError(
            f"signing and --trusted-key need the optional dependencies of {SIGNING_EXTRA} "
            f"(model-signing, pyOpenSSL): pip install '{SIGNING_EXTRA}' ({exc})"
        ) from None
    return model_signing


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError as exc:
        raise SigningUnavailableError(
            f"signing and --trusted-key need pip install '{SIGNING_EXTRA}' ({exc})"
        ) from None
    return serialization, ec


def _read_pem(path: Path, what: str) -> bytes:
    try:
        data = read_regular_file(path, _MAX_KEY)
    except VolumeFileError as exc:
        raise KeyFileError(f"{what} {path}: {exc.reason}") from None
    except OSError as exc:
        raise KeyFileError(f"{what} {path}: cannot read it: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise KeyFileError(f"{what} {path}: not a PEM file")
    return data


def _check_curve(key: Any, ec: Any, what: str, path: Path) -> None:
    if not isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{what} {path}: not an elliptic-curve key (P-256, P-384 or P-521)")
    if key.curve.name not in _CURVES:
        raise KeyFileError(f"{what} {path}: curve {key.curve.name} (use P-256, P-384 or P-521)")


def check_trusted_key(path: Path) -> None:
    """Refuse, with a :class:`KeyFileError` a person can act on, a ``--trusted-key`` file that
    is not a PEM elliptic-curve public key (a private key, a certificate, another curve)."""
    serialization, ec = _crypto()
    data = _read_pem(path, "trusted key")
    if b"PRIVATE KEY" in data:
        raise KeyFileError(
            f"trusted key {path}: is a private key; give its public half "
            "(openssl ec -in KEY -pubout -out PUB) and keep the private key off this machine"
        )
    if b"CERTIFICATE" in data:
        raise KeyFileError(
            f"trusted key {path}: is a certificate; hubless signs and verifies with a key pair "
            "(give the PEM public key)"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError(f"trusted key {path}: not a PEM public key ({exc})") from None
    _check_curve(key, ec, "trusted key", path)


def public_key_pem(private_key: Path, password: str | None = None) -> bytes:
    """The PEM public half of ``private_key`` (checked: an elliptic-curve private key on a
    curve model-signing accepts), or :class:`KeyFileError`."""
    serialization, ec = _crypto()
    data = _read_pem(private_key, "signing key")
    try:
        key = serialization.load_pem_private_key(
            data, password.encode() if password is not None else None
        )
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"signing key {private_key}: not a usable PEM private key ({exc})"
        ) from None
    _check_curve(key, ec, "signing key", private_key)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign_model(
    models_dir: Path, entry: ModelEntry, private_key: Path, *, password: str | None = None
) -> Path:
    """Sign ``entry``'s commit with ``private_key`` and return the path of ``model.sig``.

    Writes the three signature files (module docstring) in the commit's
    ``hubless-signatures/`` folder, each atomically; the caller then sets ``entry.signature``
    (:func:`hubless_volume.paths.signature_relpath`) and saves the manifest, holding the
    volume write lock. Signs only what matches the manifest: a snapshot file or derived file
    whose content differs from its record raises :class:`SignatureError` and leaves the old
    signature files as they were.
    """
    ms = _model_signing()
    models_dir = Path(models_dir)
    public_key_pem(private_key, password)  # a clear error before any hashing
    try:
        snapshot = entry.snapshot_dir(models_dir)
        folder = entry.signature_dir(models_dir)
        derived = [(r, entry.artifact_path(models_dir, r)) for r in _derived(entry)]
    except VolumePathError as exc:
        raise SignatureError(entry.name, f"refused: {exc}") from None
    if not snapshot.is_dir():
        raise SignatureError(entry.name, f"snapshot folder {snapshot} is missing")
    _check_snapshot(models_dir, snapshot, entry.name)
    files = []
    for record, path in derived:
        digest = _sha256(path, entry.name, record.path)
        if digest != record.sha256:
            raise SignatureError(entry.name, f"{record.path}: differs from its manifest record")
        files.append({"path": record.path, "size": record.size, "sha256": record.sha256})

    def signer() -> Any:
        return ms.signing.Config().use_elliptic_key_signer(
            private_key=private_key, password=password
        )

    folder.mkdir(parents=True, exist_ok=True)
    model_sig = folder / SIGNATURE_NAME
    with atomic_output(model_sig) as tmp:
        signer().set_hashing_config(_snapshot_hashing(ms)).sign(snapshot, tmp)
        differs = _differs_from_manifest(_signed_digests(tmp, entry.name), entry.files)
        if differs:
            raise SignatureError(
                entry.name,
                f"{differs}: the file on the volume differs from its manifest record "
                "(run hubless-fetch verify --deep); not signed",
            )
        signature_sha256 = _sha256(tmp, entry.name, SIGNATURE_NAME)
    statement = {
        "version": STATEMENT_VERSION,
        "name": entry.name,
        "repo_id": entry.repo_id,
        "commit": entry.commit,
        "task": entry.task,
        "signature_sha256": signature_sha256,
        "files": files,
    }
    atomic_write_json(folder / STATEMENT_NAME, statement)
    with atomic_output(folder / STATEMENT_SIGNATURE_NAME) as tmp:
        signer().set_hashing_config(ms.hashing.Config()).sign(folder / STATEMENT_NAME, tmp)
    logger.info("signed %s (%s@%s)", entry.name, entry.repo_id, entry.commit[:12])
    return model_sig


def verify_model(models_dir: Path, entry: ModelEntry, trusted_key: Path) -> None:
    """Check that ``entry``'s commit is signed by the private half of ``trusted_key`` (a PEM
    public key) and that what is on the volume is what was signed; :class:`SignatureError`
    naming the model and why otherwise.

    Refused: an entry with no ``signature``; a signature file missing; a statement that does
    not verify with the key (another key, changed bytes) or that is of another model, repo,
    commit or task; derived files (artifacts, golden outputs) the entry records that the
    statement does not list, or whose content differs; a snapshot whose files differ from the
    signed ones (a file changed, added or missing); a manifest whose sha256s are not the
    signed ones. Reads every byte of the model once (it is hashed), writes nothing.
    A ``trusted_key`` that is not a usable public key raises :class:`KeyFileError` (a
    configuration error, not the model's); :class:`SigningUnavailableError` without the
    ``[signing]`` extra.
    """
    ms = _model_signing()
    check_trusted_key(trusted_key)
    models_dir = Path(models_dir)
    name = entry.name
    if not entry.signature:
        raise SignatureError(name, "not signed (the manifest entry has no signature)")
    try:
        snapshot = entry.snapshot_dir(models_dir)
        folder = entry.signature_dir(models_dir)
        derived = [(r, entry.artifact_path(models_dir, r)) for r in _derived(entry)]
    except VolumePathError as exc:
        raise SignatureError(name, f"refused: {exc}") from None
    for file in (SIGNATURE_NAME, STATEMENT_NAME, STATEMENT_SIGNATURE_NAME):
        refusal = plain_file_refusal(folder / file)  # before the verifier opens it
        if refusal:
            raise SignatureError(name, f"signature file {file}: {refusal}")
    model_sig, statement_path = folder / SIGNATURE_NAME, folder / STATEMENT_NAME
    with _upstream_errors(name, STATEMENT_NAME):
        ms.verifying.Config().use_elliptic_key_verifier(public_key=trusted_key).set_hashing_config(
            ms.hashing.Config()
        ).verify(statement_path, folder / STATEMENT_SIGNATURE_NAME)
    statement = _read_statement(models_dir, statement_path, name)
    signed = (statement["name"], statement["repo_id"], statement["commit"], statement["task"])
    if signed != (entry.name, entry.repo_id, entry.commit, entry.task):
        raise SignatureError(
            name,
            f"the signature is of {signed[0]} ({signed[1]}@{signed[2][:12]}, {signed[3]}), "
            f"not of this entry ({entry.repo_id}@{entry.commit[:12]}, {entry.task})",
        )
    if _sha256(model_sig, name, SIGNATURE_NAME) != statement["signature_sha256"]:
        raise SignatureError(name, f"{SIGNATURE_NAME} is not the one the statement signed")
    signed_files = {f.path: f for f in statement["files"]}
    for record, path in derived:
        was = signed_files.pop(record.path, None)
        if was is None or (was.size, was.sha256) != (record.size, record.sha256):
            raise SignatureError(
                name, f"{record.path}: not covered by the signature (re-run hubless-fetch sign)"
            )
        if _sha256(path, name, record.path) != record.sha256:
            raise SignatureError(name, f"{record.path}: differs from the signed file")
    if signed_files:
        raise SignatureError(
            name,
            f"signed {', '.join(sorted(signed_files))}, which the manifest entry no longer "
            "records (re-run hubless-fetch sign)",
        )
    signed_digests = _signed_digests(model_sig, name)  # authentic: the statement binds it
    _check_snapshot(models_dir, snapshot, name, content_changed=True)
    try:
        ms.verifying.Config().use_elliptic_key_verifier(public_key=trusted_key).set_hashing_config(
            _snapshot_hashing(ms)
        ).verify(snapshot, model_sig)
    except Exception as exc:  # any failure of the verifier means "not verified"
        diff = _snapshot_diff(snapshot, signed_digests)
        raise SignatureError(
            name,
            f"the snapshot does not verify: {diff or _reason(exc)}",
            content_changed=bool(diff),
        ) from None
    differs = _differs_from_manifest(signed_digests, entry.files)
    if differs:
        raise SignatureError(name, f"{differs}: the manifest's sha256 is not the signed one")


def signature_problem(
    models_dir: Path, entry: ModelEntry, private_key: Path, *, password: str | None = None
) -> SignatureError | None:
    """Why ``entry``'s signature does not verify with the public half of ``private_key``
    (the :class:`SignatureError` :func:`verify_model` raised), or ``None`` when it does (what
    ``hubless-fetch sign`` keeps)."""
    pem = public_key_pem(private_key, password)
    with tempfile.TemporaryDirectory(prefix="hubless-sign-") as tmp:
        public = Path(tmp) / "public.pem"
        public.write_bytes(pem)
        try:
            verify_model(models_dir, entry, public)
        except SignatureError as exc:
            return exc
    return None


def _derived(entry: ModelEntry) -> list[Any]:
    """The entry's records of files derived from its commit (artifacts, golden outputs)."""
    return [*entry.artifacts, *([entry.golden] if entry.golden is not None else [])]


def _snapshot_hashing(ms: Any) -> Any:
    """What the upstream CLI's ``verify key --allow_symlinks`` hashes with: every file of the
    folder by sha256, links followed, git files (``.gitattributes``...) left out."""
    return ms.hashing.Config().set_allow_symlinks(True)


def _sha256(path: Path, model: str, shown: str) -> str:
    """:func:`hubless_volume.check.sha256_file` (a regular file only, never blocking on a
    FIFO), its failures a :class:`SignatureError` naming ``shown``."""
    try:
        return sha256_file(path)
    except FileNotFoundError:
        raise SignatureError(model, f"{shown}: missing") from None
    except VolumeFileError as exc:
        raise SignatureError(model, f"{shown}: {exc.reason}") from None
    except OSError as exc:
        raise SignatureError(model, f"{shown}: unreadable: {exc.strerror or exc}") from None


def _check_snapshot(
    models_dir: Path, snapshot: Path, model: str, *, content_changed: bool = False
) -> None:
    """Refuse, before the upstream library hashes the snapshot folder (links followed), an
    entry that is not a regular file inside the volume: a FIFO, a device or a socket (the
    library refuses them with a bare ``ValueError``; hashing one would block or never end),
    a dangling link, or a link leaving the volume (what was signed must be the volume's)."""
    for folder, _, names in os.walk(snapshot):
        for file in names:
            path = Path(folder, file)
            shown = path.relative_to(snapshot).as_posix()
            try:
                volume_relative(models_dir, path)
                mode = path.stat().st_mode
            except VolumeFileError as exc:
                raise SignatureError(
                    model, f"{shown}: {exc.reason}", content_changed=True
                ) from None
            except FileNotFoundError:
                reason = "dangling link (blob missing)"
            except OSError as exc:
                reason = f"unreadable: {exc.strerror or exc}"
            else:
                if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                    continue
                reason = f"is {kind_of(mode)}, not a regular file"
            raise SignatureError(model, f"{shown}: {reason}", content_changed=content_changed)


def _digest_or_none(path: Path) -> str | None:
    try:
        return _sha256(path, "", path.name)
    except SignatureError:  # unreadable: it differs
        return None


def _read_statement(models_dir: Path, path: Path, model: str) -> dict[str, Any]:
    """The signed statement, every field checked (it verified, so a bad shape is a bug or
    another program's file, still refused)."""
    from hubless_volume.manifest import FileRecord

    file = f"signed statement {path}"
    try:
        data = check_object(
            read_json(path, file, limit=_MAX_STATEMENT, models_dir=models_dir),
            file,
            "",
            required=("version", "name", "repo_id", "commit", "task", "signature_sha256", "files"),
        )
        if data["version"] != STATEMENT_VERSION or isinstance(data["version"], bool):
            raise SchemaError(file, "version", f"unsupported version {data['version']!r}")
        files: list[FileRecord] = [
            FileRecord.from_json(f, file, f"files[{i}]")
            for i, f in enumerate(check_type(data["files"], list, file, "files"))
        ]
        return {
            "name": check_name(data["name"], file, "name"),
            "repo_id": check_repo_id(data["repo_id"], file, "repo_id"),
            "commit": check_commit(data["commit"], file, "commit"),
            "task": check_task(data["task"], file, "task"),
            "signature_sha256": check_sha256(data["signature_sha256"], file, "signature_sha256"),
            "files": files,
        }
    except (SchemaError, FileNotFoundError) as exc:
        raise SignatureError(model, f"unusable statement: {exc}") from None


def _signed_digests(signature: Path, model: str) -> dict[str, str]:
    """``{path: sha256}`` of the files a ``model.sig`` signed (its in-toto statement's
    resources; read after the signature verified, or just after it was made)."""
    try:
        bundle = parse_json(read_regular_file(signature, _MAX_SIGNATURE), SIGNATURE_NAME)
        payload = parse_json(base64.b64decode(bundle["dsseEnvelope"]["payload"]), "payload")
        resources = payload["predicate"]["resources"]
        return {r["name"]: r["digest"] for r in resources if r["algorithm"] == "sha256"}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SignatureError(model, f"{SIGNATURE_NAME}: unexpected content ({exc})") from None


def _differs_from_manifest(signed: dict[str, str], files: list[FileRecord]) -> str:
    """The first path where the signed files and the manifest's records differ, or ``""``."""
    listed = {f.path: f.sha256 for f in files if not f.path.startswith(_GIT_PATHS)}
    for path in sorted(set(signed) | set(listed)):
        if signed.get(path) != listed.get(path):
            return path
    return ""


def _snapshot_diff(snapshot: Path, signed: dict[str, str]) -> str:
    """What differs between the snapshot folder (links followed, git files left out, as the
    upstream verifier hashes it) and the signed digests, said briefly; ``""`` if nothing."""
    found: dict[str, Path] = {}
    for path in sorted(snapshot.rglob("*")):
        relative = path.relative_to(snapshot).as_posix()
        if path.is_file() and not relative.startswith(_GIT_PATHS):
            found[relative] = path
    changed = [p for p in sorted(set(found) & set(signed)) if _sha256(found[p], "", p) != signed[p]]
    parts = [f"{p} differs from the signed file" for p in changed]
    if extra := sorted(set(found) - set(signed)):
        parts.append(f"not signed: {', '.join(extra)}")
    if gone := sorted(set(signed) - set(found)):
        parts.append(f"signed but missing: {', '.join(gone)}")
    return "; ".join(parts)


@contextlib.contextmanager
def _upstream_errors(model: str, what: str) -> Iterator[None]:
    """Turn the ``model-signing`` verifier's failures into a :class:`SignatureError` with a
    short reason (its own messages quote digests as Python bytes)."""
    try:
        yield
    except SignatureError:
        raise
    except Exception as exc:  # any failure of the verifier means "not verified"
        raise SignatureError(model, f"{what} does not verify: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    text = str(exc)
    name = type(exc).__name__
    if name == "InvalidSignature":
        return "the signature is not valid for the trusted key"
    if text.startswith("Key mismatch"):
        return "signed with another key than the trusted one"
    if text.startswith("Signature mismatch"):
        return "the content differs from the signed one"
    return f"{name}: {text[:300]}" if text else name
