"""``hubless-optimize``: prepare ONNX Runtime artifacts and golden outputs on a volume.

A one-shot job between ``hubless-fetch`` (which fills the volume) and ``hubless-serve`` (which
reads it, read-only): for every installed model of an encoder task (embedding, emotion,
sentiment, zero-shot), or the NAMEs given, it exports an ONNX model, checks it against
PyTorch and installs it beside the model (:mod:`.run`); for every installed model it records
its golden outputs, which the server's self-test compares at each load (:mod:`.golden`).
Offline: it never talks to the hub.
docs/optimize.md has the how and why; the exit codes are :class:`ExitCode`, what they mean
:data:`EXIT_CODES` (``--help`` shows it, docs/optimize.md has the same table).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path
from types import FrameType

from hubless_server import __version__
from hubless_server.core.flags import exit_codes_epilog
from hubless_server.core.tasks import ONNX_KINDS, spec_of
from hubless_server.optimize.errors import VolumeFull
from hubless_server.optimize.run import (
    STAGING,
    Options,
    Result,
    encoder_kind,
    process_model,
)
from hubless_volume import Manifest, ManifestError, VolumeWriteLock, default_preference

log = logging.getLogger("hubless_server.optimize")


class ExitCode(IntEnum):
    """Exit codes of ``hubless-optimize`` (docs/optimize.md); the shared ones mean what they
    mean for ``hubless-fetch``."""

    OK = 0  # every selected model has a current artifact, or a recorded reason to keep PyTorch
    FAILED = 1  # writing to the volume failed; with --strict also: keeps PyTorch, no goldens
    USAGE = 2  # bad flag, no volume, with --no-golden a NAME ONNX Runtime does not serve
    NO_SPACE = 3  # not enough free disk space on the volume for an export
    NOT_INSTALLED = 4  # a requested NAME is not installed
    CORRUPT = 5  # a selected model's files do not match the manifest (hubless-fetch verify)
    INVALID_FILE = 8  # the manifest is malformed or hostile
    INTERRUPTED = 130  # SIGINT / SIGTERM; the model in flight is left as it was


EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "every selected model has a current artifact, or a recorded reason to keep "
    "PyTorch, and its golden outputs, or the reason it has none in the log",
    ExitCode.FAILED: "writing to the volume failed; with `--strict`, also: a model keeps PyTorch "
    "or has no golden outputs",
    ExitCode.USAGE: "usage: a flag, no volume at `--models-dir`, with `--no-golden` a `NAME` of "
    "a model ONNX Runtime does not serve (summarization, conversation)",
    ExitCode.NO_SPACE: "not enough free disk space on the volume for an export (about three "
    "times the weights)",
    ExitCode.NOT_INSTALLED: "a requested `NAME` is not installed",
    ExitCode.CORRUPT: "a selected model's files do not match the manifest (`hubless-fetch "
    "verify NAME`)",
    ExitCode.INVALID_FILE: "the manifest is malformed or hostile",
    ExitCode.INTERRUPTED: "interrupted (SIGINT, SIGTERM); the model in flight keeps what it had",
}
"""What each exit code means: ``--help`` shows it, docs/optimize.md has the same table."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubless-optimize",
        description="Export the encoder models of a hubless volume to ONNX, check them\n"
        "against PyTorch and install those that pass beside the models, for\n"
        "hubless-serve --backend auto|onnx; record every model's golden outputs for\n"
        "the server's self-test (--golden-check). Offline; holds the volume write\n"
        "lock. Reference: docs/optimize.md.",
        epilog=exit_codes_epilog(EXIT_CODES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="models to optimize (default: every installed model; ONNX for the encoders)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="the models volume [HUBLESS_MODELS_DIR, default ./models]",
    )
    parser.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run ONNX Runtime's transformer optimizer (operator fusion) on each export "
        "[HUBLESS_ONNX_OPTIMIZE, default off]",
    )
    parser.add_argument(
        "--onnx",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="export the encoders to ONNX (default: on)",
    )
    parser.add_argument(
        "--golden",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record each model's golden outputs, PyTorch float32 answers to fixed probes "
        "(default: on)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="redo current artifacts, golden outputs and recorded failures",
    )
    parser.add_argument(
        "--deep", action="store_true", help="hash installed artifacts to tell if they are current"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a model keeps PyTorch (export or parity failed)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads [HUBLESS_THREADS, default all]"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return parser


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    from hubless_server.core.offline import apply_offline_env

    apply_offline_env()  # before transformers is imported: never the hub
    args = build_parser().parse_args(argv)
    level = "DEBUG" if args.verbose else "WARNING" if args.quiet else "INFO"
    from hubless_server.observability.logs import configure_logging

    configure_logging(os.environ.get("HUBLESS_LOG_FORMAT", "text"), level)
    if not args.verbose:  # the exporter's libraries log every pass they run
        for noisy in ("onnx_ir", "onnxscript", "torch", "transformers"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision not installed"
    models_dir = args.models_dir or Path(os.environ.get("HUBLESS_MODELS_DIR") or "./models")
    try:
        threads = (
            args.threads
            if args.threads is not None
            else int(os.environ.get("HUBLESS_THREADS") or 0)
        )
    except ValueError:
        log.error("HUBLESS_THREADS must be a number")
        return ExitCode.USAGE
    optimize = args.optimize if args.optimize is not None else _env_bool("HUBLESS_ONNX_OPTIMIZE")
    if threads < 0:
        log.error("--threads must not be negative")
        return ExitCode.USAGE
    if not models_dir.is_dir():
        log.error("there is no models volume at %s (--models-dir, HUBLESS_MODELS_DIR)", models_dir)
        return ExitCode.USAGE
    signal.signal(signal.SIGTERM, _on_sigterm)
    options = Options(
        names=list(dict.fromkeys(args.names)),
        optimize=optimize,
        force=args.force,
        deep=args.deep,
        threads=threads,
        onnx=args.onnx,
        golden=args.golden,
    )
    try:
        return run(models_dir, options, strict=args.strict)
    except KeyboardInterrupt:
        log.error("interrupted; the model in flight keeps what it had")
        return ExitCode.INTERRUPTED
    except OSError as exc:  # e.g. the write lock of a read-only volume
        log.error("cannot write to the volume %s: %s", models_dir, exc)
        return ExitCode.FAILED


def run(models_dir: Path, options: Options, *, strict: bool = False) -> int:
    """Select, lock, optimize each model, print the summary; the exit code."""
    with VolumeWriteLock(models_dir):
        try:
            manifest = Manifest.load(models_dir)
        except ManifestError as exc:
            log.error("%s", exc)
            return ExitCode.INVALID_FILE
        encoders = [n for n, e in sorted(manifest.models.items()) if encoder_kind(e) is not None]
        handled = sorted(manifest.models) if options.golden else encoders
        if options.names:
            missing = [n for n in options.names if n not in manifest.models]
            if missing:
                log.error("%s", not_installed_message(models_dir, missing, handled, options.golden))
                return ExitCode.NOT_INSTALLED
            others = [n for n in options.names if n not in handled]
            if others:
                log.error(
                    "%s: not an encoder model (ONNX Runtime serves embedding, emotion, "
                    "sentiment and zero-shot models only; without --no-golden its golden "
                    "outputs are recorded)",
                    ", ".join(others),
                )
                return ExitCode.USAGE
        selected = options.names or handled
        staging = models_dir / STAGING
        shutil.rmtree(staging, ignore_errors=True)  # a crashed run's leftovers (we hold the lock)
        results: list[Result] = []
        try:
            for name in selected:
                results.append(process_model(models_dir, manifest, name, options, staging))
        except VolumeFull as exc:
            log.error("%s", exc)
            return ExitCode.NO_SPACE
        except OSError as exc:
            log.error("cannot write to the volume %s: %s", models_dir, exc)
            return ExitCode.FAILED
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _print_summary(results)
    if any(r.status == "corrupt" for r in results):
        return ExitCode.CORRUPT
    if strict and any(r.keeps_torch or r.golden == "failed" for r in results):
        return ExitCode.FAILED
    return ExitCode.OK


def _catalog_tasks() -> dict[str, str]:
    """Name -> task of the default catalog's models (the names ``hubless-fetch fetch`` knows
    without a catalog of your own)."""
    return {name: task for task, names in default_preference().items() for name in names}


def _is_encoder_task(task: str) -> bool:
    try:
        return spec_of(task).runtime in ONNX_KINDS
    except ValueError:
        return False


def not_installed_message(
    models_dir: Path, missing: list[str], installed: list[str], any_task: bool = False
) -> str:
    """Why NAMEs cannot be optimized: an encoder of the catalog (any catalog model with
    ``any_task``: golden outputs) gets its fetch command, a catalog model of another task the
    reason, and any other name the closest such names (installed or in the catalog), never a
    command to fetch it."""
    catalog = _catalog_tasks()
    encoders = list(
        dict.fromkeys(
            [*installed, *(n for n, t in catalog.items() if any_task or _is_encoder_task(t))]
        )
    )
    fetchable = [n for n in missing if n in encoders]
    parts = []
    if fetchable:
        parts.append(
            f"not installed in {models_dir}: {', '.join(fetchable)}; install with "
            f"`hubless-fetch fetch {' '.join(fetchable)}`"
        )
    unknown = []
    for name in (n for n in missing if n not in encoders):
        if name in catalog:
            parts.append(
                f"{name} is a {catalog[name]} model (not installed): ONNX Runtime serves "
                "embedding, emotion, sentiment and zero-shot models only"
            )
            continue
        close = difflib.get_close_matches(name, encoders, n=2)
        unknown.append(f"{name!r}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    if unknown:
        parts.append(
            f"not in the catalog nor installed in {models_dir}: {', '.join(unknown)}; the "
            f"encoder models are {', '.join(encoders) or 'none'}"
        )
    return "; ".join(parts)


def _print_summary(results: list[Result]) -> None:
    """One line per model on stdout: name, ONNX status, golden outputs, seconds, parity
    figures or why."""
    rows = [("model", "status", "golden", "seconds", "detail")]
    for r in results:
        detail = ", ".join(f"{k} {v:g}" for k, v in r.parity.items()) if r.parity else r.detail
        rows.append((r.name, r.status, r.golden, f"{r.seconds:.1f}", detail))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)), row[4])
    sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
