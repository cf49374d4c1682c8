"""Errors of the fetcher and the process exit codes they map to."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of ``hubless-fetch`` (documented in docs/fetcher.md)."""

    OK = 0
    FAILED = 1  # some models failed (network, integrity after retries): a re-run may help
    USAGE = 2  # bad flag, environment variable, catalog, lock file or model name
    NO_SPACE = 3  # not enough free disk space for what is still to download
    OFFLINE_MISSING = 4  # offline (HF_HUB_OFFLINE=1) and requested models are not installed
    CORRUPT = 5  # verify/import found missing or corrupt files
    ACCESS = 6  # the hub refused: 401/403/404 (token, gated repo, wrong name or revision)
    LOCK_MISMATCH = 7  # --locked and upstream (or the catalog) differs from the lock file
    INVALID_FILE = 8  # a catalog, lock file, manifest, bundle or hub listing is malformed/hostile
    NO_ROUTE = 9  # the hub (HF_ENDPOINT) gave no answer to the connectivity check: nothing tried
    UNTRUSTED = 10  # --trusted-key: a model is not signed or its signature does not verify
    INTERRUPTED = 130  # SIGINT / SIGTERM


class FetchError(Exception):
    """A model could not be fetched; ``exit_code`` says why."""

    exit_code: ExitCode = ExitCode.FAILED


class IntegrityError(FetchError):
    """Downloaded bytes do not match the hub's sha256 / git blob id (after all attempts)."""


class AccessError(FetchError):
    """The hub answered 401, 403 or 404: retrying will not help."""

    exit_code = ExitCode.ACCESS


class RevisionNotFoundError(AccessError):
    """The repository exists but the revision (branch, tag or commit) does not."""


class OfflineError(FetchError):
    """A model is needed but the fetcher is offline."""

    exit_code = ExitCode.OFFLINE_MISSING


class NoRouteError(FetchError):
    """The hub or mirror at ``HF_ENDPOINT`` gave no HTTP answer to the one connectivity check
    made before any model (:mod:`hubless_fetcher.connectivity`)."""

    exit_code = ExitCode.NO_ROUTE


class LockMismatchError(FetchError):
    """``--locked`` and the hub or the catalog differ from the lock file."""

    exit_code = ExitCode.LOCK_MISMATCH


class DiskSpaceError(FetchError):
    """Not enough free space on the volume for the files still to download."""

    exit_code = ExitCode.NO_SPACE


class InvalidListingError(FetchError):
    """The hub's file listing of a commit names a file, hash or size that is not valid (a
    path leaving the model folder, a malformed sha256): the model is refused."""

    exit_code = ExitCode.INVALID_FILE


class UntrustedError(FetchError):
    """With ``--trusted-key``: a model is not signed, or its signature does not verify with
    the key (``import`` refuses the whole bundle)."""

    exit_code = ExitCode.UNTRUSTED


class BundleError(Exception):
    """An air-gap bundle is unreadable or does not match its own records."""


# When several models fail for different reasons, the run exits with the first that applies.
EXIT_PRECEDENCE = (
    ExitCode.INVALID_FILE,
    ExitCode.UNTRUSTED,
    ExitCode.NO_SPACE,
    ExitCode.OFFLINE_MISSING,
    ExitCode.NO_ROUTE,
    ExitCode.LOCK_MISMATCH,
    ExitCode.ACCESS,
    ExitCode.CORRUPT,
    ExitCode.FAILED,
)


def combine(codes: list[ExitCode]) -> ExitCode:
    """One exit code for several failures, following :data:`EXIT_PRECEDENCE`."""
    for code in EXIT_PRECEDENCE:
        if code in codes:
            return code
    return ExitCode.OK if not codes else ExitCode.FAILED
