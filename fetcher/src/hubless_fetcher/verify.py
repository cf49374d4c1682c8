"""``hubless-fetch verify`` (without ``--wait``, which is :mod:`hubless_fetcher.waiting`):
check installed models against the manifest (sizes; sha256 with ``--deep``), their derived
files included, and with a trusted key their signatures (:mod:`hubless_fetcher.signatures`);
name what repairs what failed.
"""

from __future__ import annotations

import argparse
import logging
import os

from hubless_fetcher.catalog import Catalog, did_you_mean
from hubless_fetcher.errors import ExitCode, combine
from hubless_fetcher.settings import ConfigError, Settings
from hubless_fetcher.signatures import trust_problem
from hubless_fetcher.volume import human
from hubless_fetcher.waiting import verify_wait
from hubless_fetcher.writelock import VolumeWriteLock
from hubless_volume import Manifest, SchemaError, check_entry, check_trusted_key

logger = logging.getLogger(__name__)


def verify_command(args: argparse.Namespace, settings: Settings) -> ExitCode:
    """``verify [--deep] [--trusted-key PUB] [NAME...]`` (``--wait``: :func:`verify_wait`):
    print a line per model (ok, MISSING, CORRUPT with each problem, UNTRUSTED with why),
    record ``verified_at`` after a deep check of a writable volume; exit 0, 5 (missing or
    corrupt), 10 (untrusted) or both combined (:func:`~hubless_fetcher.errors.combine`)."""
    if settings.trusted_key is not None:
        check_trusted_key(settings.trusted_key)
    if args.wait:
        return verify_wait(args, settings)
    if args.tasks:
        raise ConfigError("verify: --tasks goes with --wait")
    models_dir, deep, trusted = settings.models_dir, args.deep, settings.trusted_key
    manifest = Manifest.load(models_dir)
    wanted = args.names or sorted(manifest.models)
    if not wanted:
        logger.error("no models installed in %s", models_dir)
        return ExitCode.CORRUPT
    bad: list[str] = []
    untrusted = 0
    verified: list[str] = []
    for name in wanted:
        entry = manifest.models.get(name)
        if entry is None:
            print(f"{name}: MISSING (not installed)")
            bad.append(name)
            continue
        problems = check_entry(models_dir, entry, deep=deep, artifacts=True)
        if problems:
            bad.append(name)
            print(f"{name}: CORRUPT")
            for problem in problems:
                print(f"  {problem.detail}")
        elif trusted is not None and (why := trust_problem(models_dir, entry, trusted)):
            untrusted += 1
            print(f"{name}: UNTRUSTED\n  {why}")
        else:
            signed = ", signature verified" if trusted is not None else ""
            print(f"{name}: ok ({len(entry.files)} files, {human(entry.size)}{signed})")
            verified.append(name)
    writable = os.access(Manifest.path_in(models_dir), os.W_OK) and os.access(models_dir, os.W_OK)
    if deep and verified and writable:  # record the deep check (not on a read-only volume)
        try:
            with VolumeWriteLock(models_dir):
                current = Manifest.load(models_dir)  # another writer may have changed it
                current.mark_verified(verified)
                current.save(models_dir)
        except OSError as exc:
            logger.debug("verified_at not updated (%s)", exc)
    if untrusted:
        logger.error(
            "%d model(s) not signed by the trusted key %s: sign them where they were fetched "
            "(`hubless-fetch sign --key`), or find out who changed them",
            untrusted,
            trusted,
        )
    if bad:
        logger.error("%d model(s) missing or corrupt%s", len(bad), _repair_hint(bad, settings))
    return combine([ExitCode.UNTRUSTED] * bool(untrusted) + [ExitCode.CORRUPT] * bool(bad))


def _repair_hint(bad: list[str], settings: Settings) -> str:
    """What repairs ``bad``: a fetch of the catalog's names only (another name, installed
    from a bundle or an older catalog, cannot be fetched), with a close catalog name."""
    try:
        known = Catalog.load(settings.catalog).models
    except (ConfigError, SchemaError, OSError):
        return ""
    fetchable = [name for name in bad if name in known]
    hint = f": run `hubless-fetch fetch --deep {' '.join(fetchable)}` to repair"
    hint = hint if fetchable else ""
    others = [name for name in bad if name not in known]
    if others:
        hint += f"; not in the catalog: {', '.join(others)}"
        hint += "".join(did_you_mean(name, known) for name in others)
    return hint
