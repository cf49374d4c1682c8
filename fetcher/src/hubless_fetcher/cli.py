"""``hubless-fetch``: fill, check and carry a models volume. See the README's Fetcher section.

Each subcommand's parser names its handler (``set_defaults(handler=...)``); a handler takes the
parsed arguments and a :class:`Context` (settings, progress bars, free-space probe) and returns
the exit code.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubless_fetcher import __version__
from hubless_fetcher.catalog import Catalog
from hubless_fetcher.connectivity import no_route_advice
from hubless_fetcher.download import Bar, BarFactory, no_bar
from hubless_fetcher.errors import (
    EXIT_CODES,
    BundleError,
    ExitCode,
    FetchError,
    NoRouteError,
    combine,
)
from hubless_fetcher.fetch import FetchOptions, FetchRun, FreeSpace, disk_free
from hubless_fetcher.logs import log_format, setup_logging
from hubless_fetcher.redact import redact
from hubless_fetcher.results import ModelResult
from hubless_fetcher.retention import KeepPrevious
from hubless_fetcher.settings import ENVIRONMENT, ConfigError, Settings, keep_previous
from hubless_fetcher.signatures import sign_command
from hubless_fetcher.verify import verify_command
from hubless_fetcher.volume import KeptUse, human, previous_use
from hubless_fetcher.waiting import add_wait_arguments, tasks_argument
from hubless_volume import (
    KeyFileError,
    Manifest,
    SchemaError,
    SigningUnavailableError,
    VolumePathError,
    check_trusted_key,
)
from hubless_volume.logfmt import FORMATS

logger = logging.getLogger("hubless_fetcher")


@dataclass(frozen=True)
class Context:
    """What every command handler gets besides its arguments."""

    settings: Settings
    bar: BarFactory
    free_space: FreeSpace


Handler = Callable[[argparse.Namespace, Context], ExitCode]

#: Under every subcommand's help: where the rest is.
SEE_MAIN_HELP = "environment variables and exit codes: hubless-fetch --help"


def _epilog() -> str:
    """The environment variables and the exit codes, from their one table each."""

    def table(rows: dict[str, str]) -> list[str]:
        width = max(len(key) for key in rows)
        return [
            textwrap.fill(
                text,
                width=79,
                initial_indent=f"  {key:<{width}}  ",
                subsequent_indent=" " * (width + 4),
            )
            for key, text in rows.items()
        ]

    codes = {f"{int(code):>3}": text for code, text in EXIT_CODES.items()}
    lines = ["environment variables (a flag of the same meaning wins):", *table(ENVIRONMENT)]
    lines += ["", "exit codes:", *table(codes)]
    return "\n".join(lines)


def _sub(
    sub: argparse._SubParsersAction, name: str, help: str, parents: list[argparse.ArgumentParser]
) -> argparse.ArgumentParser:
    return sub.add_parser(name, parents=parents, help=help, description=help, epilog=SEE_MAIN_HELP)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--models-dir", type=Path, help="the models volume (env HUBLESS_MODELS_DIR, ./models)"
    )
    common.add_argument(
        "--catalog", type=Path, help="catalog TOML (env HUBLESS_CATALOG, the packaged one)"
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    common.add_argument(
        "--log-format",
        choices=FORMATS,
        help="log lines on stderr: text or json, one object per line (env HUBLESS_LOG_FORMAT, "
        "text)",
    )
    trust = argparse.ArgumentParser(add_help=False)  # the commands that check signatures
    trust.add_argument(
        "--trusted-key",
        type=Path,
        metavar="PATH",
        help="PEM public key: refuse a model not signed by its private half "
        "(env HUBLESS_TRUSTED_KEY; default: signatures are not checked)",
    )
    retention = argparse.ArgumentParser(add_help=False)  # the commands that prune or show it
    retention.add_argument(
        "--keep-previous",
        metavar="WHEN",
        help="keep a model's previous generation: last (until its next update), 0, or a "
        "duration such as 10m, 1h (env HUBLESS_KEEP_PREVIOUS, last)",
    )

    parser = argparse.ArgumentParser(
        prog="hubless-fetch",
        description="Download a pinned catalog of Hugging Face models into a verified volume.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fetch = _sub(sub, "fetch", "download what is missing", [common, retention])
    fetch.add_argument("names", nargs="*", metavar="NAME", help="catalog names (default: all)")
    fetch.add_argument(
        "--tasks",
        type=tasks_argument,
        metavar="LIST",
        help="also every catalog model of these tasks, e.g. emotion,sentiment (with no NAME: "
        "only those)",
    )
    fetch.add_argument("--locked", action="store_true", help="install exactly the lock file")
    fetch.add_argument(
        "--refresh", action="store_true", help="re-resolve branches/tags; update moved models"
    )
    fetch.add_argument(
        "--deep", action="store_true", help="re-hash installed files; re-fetch corrupt ones"
    )
    fetch.add_argument(
        "--dry-run", action="store_true", help="show what would be downloaded, and its size"
    )
    fetch.add_argument("--jobs", type=int, help="parallel file downloads (env HUBLESS_JOBS, 4)")
    fetch.add_argument("--offline", action="store_true", default=None, help="= HF_HUB_OFFLINE=1")
    fetch.set_defaults(handler=_cmd_fetch)

    lock = _sub(sub, "lock", "pin every catalog model to a commit and hashes", [common])
    lock.set_defaults(handler=_cmd_lock)

    verify = _sub(sub, "verify", "check installed files", [common, trust])
    verify.add_argument("names", nargs="*", metavar="NAME", help="installed names (default: all)")
    verify.add_argument("--deep", action="store_true", help="re-hash every file (sha256)")
    add_wait_arguments(verify)
    verify.set_defaults(handler=_cmd_verify)

    listing = _sub(sub, "list", "installed models", [common, retention])
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=_cmd_list)

    remove = _sub(sub, "remove", "uninstall a model", [common, retention])
    remove.add_argument("name", metavar="NAME", help="the installed model to remove")
    remove.set_defaults(handler=_cmd_remove)

    du = _sub(sub, "du", "disk use per model and in total", [common, retention])
    du.set_defaults(handler=_cmd_du)

    export = _sub(sub, "export", "write models to an air-gap bundle", [common])
    export.add_argument(
        "bundle", type=Path, metavar="BUNDLE", help="the bundle file to write (a tar archive)"
    )
    export.add_argument("names", nargs="*", metavar="NAME", help="installed names (default: all)")
    export.set_defaults(handler=_cmd_export)

    imp = _sub(sub, "import", "install models from a bundle", [common, retention, trust])
    imp.add_argument(
        "bundle", type=Path, metavar="BUNDLE", help="a bundle file written by `export`"
    )
    imp.set_defaults(handler=_cmd_import)

    sign = _sub(sub, "sign", "sign installed models (OpenSSF Model Signing)", [common])
    sign.add_argument("names", nargs="*", metavar="NAME", help="installed names (default: all)")
    sign.add_argument(
        "--key", type=Path, metavar="PATH", help="PEM EC private key (env HUBLESS_SIGNING_KEY)"
    )
    sign.set_defaults(handler=_cmd_sign)

    gc = _sub(
        sub,
        "gc",
        "delete now what no model uses, and previous generations whose retention passed",
        [common, retention],
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would go, and its size")
    gc.add_argument(
        "--all-previous", action="store_true", help="delete every previous generation too"
    )
    gc.set_defaults(handler=_cmd_gc)
    return parser


def _tqdm_bar(desc: str, total: int, initial: int) -> Bar:
    from tqdm import tqdm

    return tqdm(
        desc=desc[-40:],
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        leave=False,
        file=sys.stderr,
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    env: dict[str, str] | None = None,
    free_space: FreeSpace = disk_free,
) -> int:
    """Run the CLI; returns the exit code (``free_space`` is injectable for tests)."""
    args = _parser().parse_args(argv)
    tty = sys.stderr.isatty()
    environ = dict(os.environ if env is None else env)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    try:
        fmt = log_format(args.log_format, environ)
    except ConfigError as exc:
        setup_logging(level, "text", tty)
        logger.error("%s", exc)
        return ExitCode.USAGE
    redacting = setup_logging(level, fmt, tty)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread (embedded use)
        previous = None
    try:
        settings = Settings.from_env(environ).with_overrides(
            models_dir=args.models_dir,
            catalog=args.catalog,
            jobs=getattr(args, "jobs", None),
            offline=getattr(args, "offline", None),
            keep_previous=_keep_flag(args),
            trusted_key=getattr(args, "trusted_key", None),
            signing_key=getattr(args, "key", None),
        )
        redacting.add_secret(settings.token)
        if settings.jobs < 1:
            raise ConfigError("--jobs must be at least 1")
        handler: Handler = args.handler
        code = int(handler(args, Context(settings, _tqdm_bar if tty else no_bar, free_space)))
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        return code
    except BrokenPipeError:  # `hubless-fetch list --json | head -1`: quiet, as after SIGPIPE
        _discard_stdout()
        return ExitCode.STDOUT_CLOSED
    except KeyboardInterrupt:
        logger.error("interrupted: nothing half-installed (the manifest lists verified models)")
        return ExitCode.INTERRUPTED
    except SchemaError as exc:  # a catalog, lock file, manifest or bundle index (or a
        # catalog error, which is a ConfigError too): the file and the field, one line
        logger.error("invalid input file: %s", exc)
        return ExitCode.INVALID_FILE
    except (ConfigError, KeyFileError, SigningUnavailableError) as exc:
        logger.error("%s", exc)
        return ExitCode.USAGE
    except FetchError as exc:
        logger.error("%s", exc)
        return exc.exit_code
    except (BundleError, VolumePathError) as exc:
        logger.error("%s", exc)
        return ExitCode.CORRUPT
    except OSError as exc:  # e.g. a read-only or full volume: say so, no traceback
        logger.error("I/O error: %s", exc)
        return ExitCode.FAILED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of what is still
    buffered for the closed pipe raises nothing either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):  # no file descriptor (embedded)
        pass


def _keep_flag(args: argparse.Namespace) -> KeepPrevious | None:
    value = getattr(args, "keep_previous", None)
    return None if value is None else keep_previous(value, "--keep-previous")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _cmd_fetch(args: argparse.Namespace, ctx: Context) -> ExitCode:
    started = time.monotonic()
    options = FetchOptions(
        locked=args.locked, refresh=args.refresh, deep=args.deep, dry_run=args.dry_run
    )
    catalog = Catalog.load(ctx.settings.catalog)
    run = FetchRun(ctx.settings, catalog, options, free_space=ctx.free_space, bar=ctx.bar)
    report = run.run(args.names, args.tasks)
    _print_summary(report.results, ctx.settings, time.monotonic() - started)
    return report.exit_code


def _cmd_remove(args: argparse.Namespace, ctx: Context) -> ExitCode:
    from hubless_fetcher.volume import remove_model

    keep = ctx.settings.keep_previous
    entry = remove_model(ctx.settings.models_dir, args.name, keep)
    print(f"removed {entry.name} ({entry.repo_id}@{entry.commit[:12]})")
    if keep.seconds != 0:
        print(
            f"  its files stay as its previous generation (HUBLESS_KEEP_PREVIOUS={keep}); "
            "`hubless-fetch gc --all-previous` deletes them now"
        )
    return ExitCode.OK


def _cmd_gc(args: argparse.Namespace, ctx: Context) -> ExitCode:
    from hubless_fetcher.garbage import collect_garbage

    models_dir = ctx.settings.models_dir
    report = collect_garbage(
        models_dir,
        ctx.settings.keep_previous,
        all_previous=args.all_previous,
        dry_run=args.dry_run,
    )
    verb = "would delete" if args.dry_run else "deleted"
    for g in report.released:
        name, where = g.entry.name, f"{g.entry.repo_id}@{g.entry.commit[:12]}"
        print(f"{verb} previous generation {name} ({where}, replaced {g.replaced_at})")
    for path, size in report.pruned:
        print(f"{verb} {path.relative_to(models_dir).as_posix()} ({human(size)})")
    if not report.pruned and not report.released:
        print(f"nothing to delete in {models_dir}")
    else:
        freed = "would free" if args.dry_run else "freed"
        print(f"{freed} {human(report.size)} ({len(report.pruned)} path(s)) in {models_dir}")
    return ExitCode.OK


def _cmd_export(args: argparse.Namespace, ctx: Context) -> ExitCode:
    from hubless_fetcher.bundle import export_bundle

    names = export_bundle(ctx.settings.models_dir, args.bundle, args.names)
    print(f"exported {len(names)} model(s) to {args.bundle}: {', '.join(names)}")
    return ExitCode.OK


def _cmd_import(args: argparse.Namespace, ctx: Context) -> ExitCode:
    from hubless_fetcher.bundle import import_bundle

    trusted = ctx.settings.trusted_key
    if trusted is not None:
        check_trusted_key(trusted)
    entries = import_bundle(
        ctx.settings.models_dir,
        args.bundle,
        free_space=ctx.free_space,
        margin=ctx.settings.disk_margin,
        keep=ctx.settings.keep_previous,
        trusted_key=trusted,
    )
    signed = " (signatures verified)" if trusted is not None else ""
    print(f"imported {len(entries)} model(s){signed}: {', '.join(e.name for e in entries)}")
    return ExitCode.OK


def _cmd_sign(args: argparse.Namespace, ctx: Context) -> ExitCode:
    return sign_command(args.names, ctx.settings)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _print_summary(results: list[ModelResult], settings: Settings, seconds: float) -> None:
    from hubless_fetcher.volume import disk_use

    models_dir = settings.models_dir
    rows = [
        [
            r.name,
            r.commit[:12] or "-",
            str(r.files) if r.files else "-",
            human(r.size) if r.size else "-",
            "-" if r.seconds is None else f"{r.seconds:.1f}s",
            r.status,
        ]
        for r in results
    ]
    print(_table(rows, ["model", "commit", "files", "size", "time", "status"]))
    for r in results:
        if r.error:
            print(f"  {r.name}: {redact(r.error, [settings.token])}")
    try:
        total = disk_use(models_dir, settings.keep_previous).total
    except (OSError, SchemaError):  # the manifest or the record of previous generations
        total = 0
    print(f"total disk use of {models_dir}: {human(total)} ({seconds:.1f}s)")


def _cmd_lock(args: argparse.Namespace, ctx: Context) -> ExitCode:
    """``lock``: write the catalog's lock file (``catalog.lock.json``) by pinning every model."""
    from hubless_fetcher.pin import pin_catalog

    catalog = Catalog.load(ctx.settings.catalog)
    try:
        lock_file, results = pin_catalog(ctx.settings, catalog)
    except NoRouteError as exc:
        logger.error("%s\n%s", exc, no_route_advice(ctx.settings))
        return exc.exit_code
    failed = [r.exit_code for r in results if r.exit_code != ExitCode.OK]
    rows = [[r.name, r.commit[:12] or "-", str(r.files), human(r.size), r.status] for r in results]
    print(_table(rows, ["model", "commit", "files", "size", "status"]))
    if failed:
        logger.error("lock file not written: %d model(s) failed", len(failed))
        return combine(failed)
    lock_file.save(catalog.lock_path)
    print(f"wrote {catalog.lock_path}")
    return ExitCode.OK


def _cmd_verify(args: argparse.Namespace, ctx: Context) -> ExitCode:
    return verify_command(args, ctx.settings)


def _cmd_list(args: argparse.Namespace, ctx: Context) -> ExitCode:
    manifest = Manifest.load(ctx.settings.models_dir)
    entries = [manifest.models[n] for n in sorted(manifest.models)]
    if args.json:
        data: list[dict[str, Any]] = [
            {
                "name": e.name,
                "task": e.task,
                "repo_id": e.repo_id,
                "revision": e.revision,
                "commit": e.commit,
                "files": len(e.files),
                "size": e.size,
                "installed_at": e.installed_at,
                "verified_at": e.verified_at,
                "signed": bool(e.signature),
                "golden": e.golden is not None,
            }
            for e in entries
        ]
        print(json.dumps(data, indent=2))
        return ExitCode.OK
    rows = [
        [e.name, e.task, e.repo_id, e.commit[:12], human(e.size), e.verified_at] for e in entries
    ]
    print(_table(rows, ["name", "task", "repo", "commit", "size", "verified-at"]))
    _print_previous(previous_use(ctx.settings.models_dir, manifest, ctx.settings.keep_previous))
    return ExitCode.OK


def _print_previous(kept: list[KeptUse]) -> None:
    """The previous generations on the volume (``list``, ``du``): not served, not verified;
    the disk column is what deleting each would free."""
    if not kept:
        return
    rows = [[k.name, k.commit[:12], k.replaced_at, human(k.size), k.until] for k in kept]
    print(f"\nprevious generations ({human(sum(k.size for k in kept))}, not served):")
    print(_table(rows, ["model", "commit", "replaced-at", "disk", "kept-until"]))


def _cmd_du(args: argparse.Namespace, ctx: Context) -> ExitCode:
    from hubless_fetcher.volume import disk_use

    use = disk_use(ctx.settings.models_dir, ctx.settings.keep_previous)
    rows = [[name, human(size)] for name, size in use.per_model.items()]
    print(_table(rows, ["model", "disk"]))
    _print_previous(use.previous)
    if use.staging:
        print(f"staging (partial downloads): {human(use.staging)}")
    print(f"total: {human(use.total)}")
    return ExitCode.OK
