"""Refusing a model its volume cannot vouch for: the signature check of ``--trusted-key``.

The manifest's sha256s prove a file arrived intact, not who wrote it: whoever can write the
volume can change a file and its hash together. With ``--trusted-key`` (a PEM public key)
every load, the initial ones and each live update, first checks the model's OpenSSF Model
Signing signature with :func:`hubless_volume.verify_model` (every byte hashed, in the load
thread, before the weights are read); a model that is not signed, or whose signature does not
verify, is FAILED with the reason in ``ListModels`` and the other models serve. A live update
to such a commit fails like any other, so the old commit keeps serving.

:class:`RefusedError` is what a trust check (this one, the golden self-test of
:mod:`.golden`) raises: its ``public`` text is the record's ``error``, for clients (no path of
the server's filesystem), its message the log line's.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from hubless_volume import (
    KeyFileError,
    ModelEntry,
    SignatureError,
    SigningUnavailableError,
    check_trusted_key,
    verify_model,
)

log = logging.getLogger(__name__)

SIGNING_EXTRA = "hubless-volume[signing]"


class RefusedError(Exception):
    """A model refused by a trust check; ``public`` says why without server paths."""

    def __init__(self, message: str, public: str) -> None:
        super().__init__(message)
        self.public = public


def check_trust_settings(trusted_key: Path | None) -> None:
    """At start: ``KeyFileError`` unless ``trusted_key`` is a PEM elliptic-curve public key,
    ``SigningUnavailableError`` when the verifier is not installed. Nothing without a key."""
    if trusted_key is None:
        return
    check_trusted_key(trusted_key)
    try:
        importlib.import_module("model_signing.verifying")
    except ImportError as exc:
        raise SigningUnavailableError(
            f"--trusted-key needs the optional dependencies of {SIGNING_EXTRA} "
            f"(model-signing, pyOpenSSL): pip install '{SIGNING_EXTRA}' ({exc})"
        ) from None


def verify_signature(models_dir: Path, entry: ModelEntry, trusted_key: Path) -> None:
    """:class:`RefusedError` unless ``entry``'s commit is signed by ``trusted_key``'s private
    half and what is on the volume is what was signed (:func:`hubless_volume.verify_model`).
    Blocking: hashes every byte of the model (call it in the load thread)."""
    try:
        verify_model(models_dir, entry, trusted_key)
    except SignatureError as exc:
        raise RefusedError(
            f"signature check failed (--trusted-key): {exc.reason}",
            f"refused: signature check failed: {_volume_relative(exc.reason, models_dir)} "
            "(--trusted-key)",
        ) from None
    except (KeyFileError, SigningUnavailableError) as exc:
        raise RefusedError(
            f"the --trusted-key check cannot run: {exc}",
            "refused: the --trusted-key check cannot run (the server log has why)",
        ) from None
    log.info(
        "model %s: signature verified (--trusted-key)",
        entry.name,
        extra={"fields": {"model": entry.name, "commit": entry.commit}},
    )


def _volume_relative(reason: str, models_dir: Path) -> str:
    """``reason`` with the volume's own path taken out (what is left is relative to it)."""
    for root in {str(models_dir.resolve()), str(models_dir)}:
        reason = reason.replace(root.rstrip("/") + "/", "")
    return reason
