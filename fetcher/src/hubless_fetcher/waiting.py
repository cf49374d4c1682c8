"""``verify --wait``: poll a volume, read-only, until the manifest lists a verified model for
each wanted task (and each wanted name), or a timeout passes.

What a server pod's init container runs while another process (the shared-cache fetch Job)
fills the volume: it needs no network and no write access. A task is satisfied by any model
of that task that the manifest lists and whose files pass the check (sizes; sha256 too with
``deep``), once; a name by that model. The manifest is written atomically, so each poll reads
a whole one. With a trusted key (``--trusted-key``, ``HUBLESS_TRUSTED_KEY``) a model counts
only once its signature verifies; one that does not is not hashed again until its entry or
its signature files change.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from hubless_fetcher.catalog import Catalog, task_list
from hubless_fetcher.errors import ExitCode
from hubless_fetcher.settings import ConfigError, Settings
from hubless_fetcher.signatures import trust_problem
from hubless_volume import SIGNATURE_FILES, Manifest, ModelEntry, VolumePathError, check_entry

logger = logging.getLogger(__name__)

#: Seconds between two "still waiting" log lines when nothing changed.
LOG_EVERY_S = 60.0


@dataclass
class Wait:
    """What is waited for, and what was found so far (``found``: task or name -> model)."""

    tasks: list[str]
    names: list[str] = field(default_factory=list)
    found: dict[str, str] = field(default_factory=dict)
    trusted_key: Path | None = None
    untrusted: set[str] = field(default_factory=set)  # states whose signature failed

    @property
    def missing(self) -> list[str]:
        """Tasks and names still without a verified model, as printed."""
        return [f"task {t}" for t in self.tasks if t not in self.found] + [
            f"model {n}" for n in self.names if n not in self.found
        ]

    def describe(self) -> str:
        """``task conversation, model x`` (what is still missing)."""
        return ", ".join(self.missing)

    def poll(self, models_dir: Path, *, deep: bool) -> bool:
        """Read the manifest once; True when everything wanted has a verified model."""
        manifest = Manifest.load(models_dir)
        for name in self.names:
            entry = manifest.models.get(name)
            if (
                name not in self.found
                and entry is not None
                and self._sound(models_dir, entry, deep)
            ):
                self.found[name] = name
        for task in self.tasks:
            if task in self.found:
                continue
            for entry in _ranked(manifest, task):
                if self._sound(models_dir, entry, deep):
                    self.found[task] = entry.name
                    break
        return not self.missing

    def _sound(self, models_dir: Path, entry: ModelEntry, deep: bool) -> bool:
        problems = check_entry(models_dir, entry, deep=deep)
        for problem in problems:
            logger.debug("%s: %s", entry.name, problem.detail)
        if problems or self.trusted_key is None:
            return not problems
        state = _state(models_dir, entry)
        if state in self.untrusted:
            return False
        why = trust_problem(models_dir, entry, self.trusted_key)
        if why:
            logger.info("%s: not trusted: %s", entry.name, why)
            self.untrusted.add(state)
        return not why


def _state(models_dir: Path, entry: ModelEntry) -> str:
    """The entry and its signature files' times and sizes: what a signature check depends
    on, short of the model's bytes."""
    stats = []
    try:
        folder = entry.signature_dir(models_dir)
        for name in SIGNATURE_FILES:
            st = (folder / name).stat()
            stats.append((st.st_mtime_ns, st.st_size))
    except (OSError, VolumePathError):
        pass
    data = {**entry.to_json(), "verified_at": ""}
    return json.dumps([data, stats], sort_keys=True)


def _ranked(manifest: Manifest, task: str) -> list[ModelEntry]:
    """The manifest's models of ``task``, in its preference order, then the others."""
    order = manifest.tasks.get(task, [])
    entries = [e for e in manifest.models.values() if e.task == task]
    return sorted(entries, key=lambda e: order.index(e.name) if e.name in order else len(order))


def wait_for(
    models_dir: Path,
    wait: Wait,
    *,
    timeout: float,
    interval: float,
    deep: bool = False,
) -> bool:
    """Poll every ``interval`` seconds until ``wait`` is satisfied (True) or ``timeout``
    seconds passed (False). Logs what it still waits for when that changes, and once a
    minute otherwise."""
    deadline = time.monotonic() + timeout
    said: tuple[list[str], float] | None = None
    while True:
        if wait.poll(models_dir, deep=deep):
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        missing = wait.missing
        if said is None or said[0] != missing or now - said[1] >= LOG_EVERY_S:
            logger.info(
                "waiting for a verified model of %s in %s (%.0fs left)",
                wait.describe(),
                models_dir,
                deadline - now,
            )
            said = (missing, now)
        time.sleep(max(0.0, min(interval, deadline - now)))


# ---- the command line: ``verify --wait [--tasks LIST] [--timeout S] [--interval S]`` -----------


def tasks_argument(value: str) -> list[str]:
    """argparse type of ``--tasks``: :func:`hubless_fetcher.catalog.task_list`."""
    try:
        return task_list(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value!r}")
    return seconds


def add_wait_arguments(verify: argparse.ArgumentParser) -> None:
    """``verify``'s waiting flags."""
    verify.add_argument(
        "--wait",
        action="store_true",
        help="poll until the manifest lists a verified model for each task (of --tasks, or "
        "of the catalog) and each NAME; read-only, no network",
    )
    verify.add_argument(
        "--tasks", type=tasks_argument, metavar="LIST", help="with --wait: the tasks to wait for"
    )
    verify.add_argument(
        "--timeout",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="with --wait: give up (exit 5) after this long (default: 600)",
    )
    verify.add_argument(
        "--interval",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="with --wait: seconds between two looks (default: 5)",
    )


def verify_wait(args: argparse.Namespace, settings: Settings) -> ExitCode:
    """``verify --wait``: a verified model of each task (``--tasks``, else every task of the
    catalog unless names are given) and each name, within ``--timeout``; exit 5 otherwise."""
    tasks = args.tasks
    if tasks is None:
        tasks = [] if args.names else list(Catalog.load(settings.catalog).tasks)
    wait = Wait(tasks=tasks, names=list(args.names), trusted_key=settings.trusted_key)
    models_dir = settings.models_dir
    if not wait_for(models_dir, wait, timeout=args.timeout, interval=args.interval, deep=args.deep):
        logger.error("gave up after %gs: no verified model of %s", args.timeout, wait.describe())
        return ExitCode.CORRUPT
    found = [f"{key}: {name}" if key != name else name for key, name in wait.found.items()]
    print(f"ready: {', '.join(found)}")
    return ExitCode.OK
