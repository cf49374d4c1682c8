"""Errors of the fetcher and the process exit codes they map to."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of ``hubless-fetch``; :data:`EXIT_CODES` says what each means."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NO_SPACE = 3
    OFFLINE_MISSING = 4
    CORRUPT = 5
    ACCESS = 6
    LOCK_MISMATCH = 7
    INVALID_FILE = 8
    NO_ROUTE = 9
    UNTRUSTED = 10
    INTERRUPTED = 130
    STDOUT_CLOSED = 141


#: What each exit code means: the one table, which ``hubless-fetch --help`` prints (and
#: docs/fetcher.md repeats).
EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "every requested model is installed and verified",
    ExitCode.FAILED: "some models failed (network, or bad bytes after every retry): a re-run "
    "may help",
    ExitCode.USAGE: "usage or configuration error: a flag, an environment variable, an unknown "
    "name, a missing catalog, lock file or bundle",
    ExitCode.NO_SPACE: "not enough free disk space for what is still to download",
    ExitCode.OFFLINE_MISSING: "offline (HF_HUB_OFFLINE=1) and requested models are not installed",
    ExitCode.CORRUPT: "verify, import or export found missing or corrupt files; verify --wait "
    "timed out",
    ExitCode.ACCESS: "the hub refused (401/403/404): token, gated model, wrong name or "
    "revision; retrying will not help",
    ExitCode.LOCK_MISMATCH: "--locked: the lock file differs from the catalog or from upstream",
    ExitCode.INVALID_FILE: "a catalog, lock file, manifest, bundle or hub listing is malformed "
    "or hostile",
    ExitCode.NO_ROUTE: "no route to the hub: HF_ENDPOINT gave no HTTP answer to the "
    "connectivity check; nothing was tried",
    ExitCode.UNTRUSTED: "--trusted-key: a model is not signed, or its signature does not "
    "verify with the key (verify, import: nothing imported)",
    ExitCode.INTERRUPTED: "interrupted (SIGINT or SIGTERM); nothing half-installed",
    ExitCode.STDOUT_CLOSED: "standard output was closed early (a pipe into `head`); quiet, as "
    "a program killed by SIGPIPE",
}


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
