"""The fetcher's settings, read from the environment (CLI flags of the same meaning win).

Everything is read when :func:`Settings.from_env` runs, not at import, so tests and the CLI
can change the environment freely.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from hubless_fetcher.retention import KeepPrevious
from hubless_volume import catalog_file

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_MODELS_DIR = "models"
# The default catalog ships with the volume format (hubless_volume), where the server reads its
# task order too; HUBLESS_CATALOG/--catalog replace it.
PACKAGED_CATALOG = catalog_file()
STAGING_NAME = ".staging"

_TRUE = {"1", "true", "yes", "on", "y"}

#: Every environment variable the fetcher reads and what it does: the one list, which
#: ``hubless-fetch --help`` prints. A flag of the same meaning (named here) wins.
ENVIRONMENT: dict[str, str] = {
    "HUBLESS_MODELS_DIR": "the models volume (--models-dir); default ./models",
    "HUBLESS_CATALOG": "the catalog TOML (--catalog); default the packaged one",
    "HF_ENDPOINT": f"the hub or a mirror; default {DEFAULT_ENDPOINT} (credentials in it are "
    "shown as ***)",
    "HF_TOKEN": "sent to the hub, for private and gated models; never logged",
    "HF_HUB_OFFLINE": "1: never open a connection (--offline)",
    "TRANSFORMERS_OFFLINE": "1: the same as HF_HUB_OFFLINE=1",
    "HUBLESS_JOBS": "files downloaded in parallel (--jobs); default 4",
    "HUBLESS_RETRIES": "attempts per request or file; default 5",
    "HUBLESS_RETRY_WAIT": "first wait between attempts, seconds; default 1",
    "HUBLESS_RETRY_MAX_WAIT": "longest wait between attempts, seconds; default 30",
    "HUBLESS_RETRY_AFTER_MAX": "cap on a server's Retry-After, seconds; default 300",
    "HUBLESS_TIMEOUT": "connect and read timeout of one request, seconds; default 30",
    "HUBLESS_CHECK_TIMEOUT": "the connectivity check before any download must pass within "
    "this, seconds; default 5; 0 skips it",
    "HUBLESS_DISK_MARGIN": "bytes kept free beyond what a fetch needs; default 536870912",
    "HUBLESS_KEEP_PREVIOUS": "how long a model's previous generation stays (--keep-previous): "
    "last (default, until its next update), 0, or a duration such as 10m, 1h",
    "HUBLESS_LOG_FORMAT": "log lines on stderr (--log-format): text (default) or json, one "
    "object per line with ts (ISO-8601 UTC), level, logger, msg, as the server writes them",
    "HUBLESS_TRUSTED_KEY": "verify, import (--trusted-key): a PEM public key; a model not "
    "signed by its private half is refused (exit 10)",
    "HUBLESS_SIGNING_KEY": "sign (--key): the PEM private key that signs",
}


class ConfigError(Exception):
    """A flag, an environment variable or the catalog is invalid (exit code 2)."""


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def _number(env: dict[str, str], key: str, default: float, *, minimum: float = 0) -> float:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{key}={raw!r} must be >= {minimum:g}")
    return value


def _path(value: str | None) -> Path | None:
    return Path(value) if value and value.strip() else None


def keep_previous(value: str | None, where: str) -> KeepPrevious:
    """``HUBLESS_KEEP_PREVIOUS`` or ``--keep-previous``; :class:`ConfigError` if invalid."""
    try:
        return KeepPrevious.parse(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Settings:
    """Everything a fetcher run depends on besides the catalog's content: read from the
    environment (:data:`ENVIRONMENT` says what each variable does), the CLI flags of the same
    meaning winning. ``HF_TOKEN`` and the signing key's path are kept out of ``repr``;
    messages show the endpoint as :attr:`endpoint_shown`, credentials redacted.
    ``HUBLESS_CHECK_TIMEOUT`` is explained in :mod:`hubless_fetcher.connectivity`,
    ``HUBLESS_KEEP_PREVIOUS`` in :mod:`hubless_fetcher.retention`, ``HUBLESS_TRUSTED_KEY``
    and ``HUBLESS_SIGNING_KEY`` in :mod:`hubless_fetcher.signatures`.
    """

    models_dir: Path = Path(DEFAULT_MODELS_DIR)
    catalog: Path = PACKAGED_CATALOG
    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = field(default=None, repr=False)
    offline: bool = False
    jobs: int = 4
    retries: int = 5
    retry_wait: float = 1.0
    retry_max_wait: float = 30.0
    retry_after_max: float = 300.0
    timeout: float = 30.0
    check_timeout: float = 5.0
    disk_margin: int = 512 * 1024 * 1024
    keep_previous: KeepPrevious = field(default_factory=KeepPrevious)
    trusted_key: Path | None = None
    signing_key: Path | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Settings from ``env`` (default ``os.environ``)."""
        env = dict(os.environ if env is None else env)
        return cls(
            models_dir=Path(env.get("HUBLESS_MODELS_DIR") or DEFAULT_MODELS_DIR),
            catalog=Path(env.get("HUBLESS_CATALOG") or PACKAGED_CATALOG),
            endpoint=(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
            token=env.get("HF_TOKEN") or None,
            offline=_flag(env.get("HF_HUB_OFFLINE")) or _flag(env.get("TRANSFORMERS_OFFLINE")),
            jobs=int(_number(env, "HUBLESS_JOBS", 4, minimum=1)),
            retries=int(_number(env, "HUBLESS_RETRIES", 5, minimum=1)),
            retry_wait=_number(env, "HUBLESS_RETRY_WAIT", 1.0),
            retry_max_wait=_number(env, "HUBLESS_RETRY_MAX_WAIT", 30.0),
            retry_after_max=_number(env, "HUBLESS_RETRY_AFTER_MAX", 300.0),
            timeout=_number(env, "HUBLESS_TIMEOUT", 30.0, minimum=0.01),
            check_timeout=_number(env, "HUBLESS_CHECK_TIMEOUT", 5.0),
            disk_margin=int(_number(env, "HUBLESS_DISK_MARGIN", 512 * 1024 * 1024)),
            keep_previous=keep_previous(env.get("HUBLESS_KEEP_PREVIOUS"), "HUBLESS_KEEP_PREVIOUS"),
            trusted_key=_path(env.get("HUBLESS_TRUSTED_KEY")),
            signing_key=_path(env.get("HUBLESS_SIGNING_KEY")),
        )

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with the given fields replaced; ``None`` values are ignored."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def endpoint_shown(self) -> str:
        """The endpoint as messages show it: credentials in it (``user:token@``,
        ``?token=``) replaced by ``***`` (:func:`hubless_fetcher.redact.redact`)."""
        from hubless_fetcher.redact import redact

        return redact(self.endpoint, [self.token])

    @property
    def staging_dir(self) -> Path:
        """Where downloads are staged: on the volume, so installing is a rename."""
        return self.models_dir / STAGING_NAME
