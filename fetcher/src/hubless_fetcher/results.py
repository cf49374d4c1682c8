"""What a ``fetch`` (or ``lock``) reports per model: one :class:`ModelResult` per row of the
summary table, gathered in a :class:`FetchReport` with the run's exit code."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from hubless_fetcher.catalog import CatalogModel
from hubless_fetcher.errors import ExitCode, FetchError, NoRouteError, OfflineError, combine
from hubless_fetcher.plan import Plan
from hubless_fetcher.volume import human
from hubless_volume import ModelEntry

logger = logging.getLogger(__name__)


@dataclass
class ModelResult:
    """The outcome for one model, one row of the summary table. ``seconds``: the wall-clock
    time spent on this model (resolving it, then from the start of the downloads to its
    install or failure); ``None`` when nothing was attempted for it (shown as ``-``)."""

    name: str
    repo_id: str
    status: str  # installed | up to date | failed | missing | no route | would fetch | locked
    commit: str = ""
    files: int = 0
    size: int = 0
    seconds: float | None = None
    error: str = ""
    exit_code: ExitCode = ExitCode.OK


@dataclass
class FetchReport:
    """Every model's result."""

    results: list[ModelResult] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        return combine([r.exit_code for r in self.results if r.exit_code != ExitCode.OK])


def up_to_date(model: CatalogModel, entry: ModelEntry) -> ModelResult:
    logger.info("%s: up to date (%s@%s)", model.name, model.repo_id, entry.commit[:12])
    return ModelResult(
        model.name, model.repo_id, "up to date", entry.commit, len(entry.files), entry.size
    )


def would_fetch(plan: Plan) -> ModelResult:
    todo_bytes = sum(w.size for w in plan.wanted if w.key not in plan.reused)
    logger.info(
        "%s: would fetch %d file(s), %s (%s@%s)",
        plan.name,
        len(plan.wanted),
        human(todo_bytes),
        plan.model.repo_id,
        plan.snapshot.commit[:12],
    )
    return ModelResult(
        plan.name,
        plan.model.repo_id,
        "would fetch",
        plan.snapshot.commit,
        len(plan.wanted),
        plan.snapshot.size,
        plan.resolve_seconds,
    )


def offline_missing(model: CatalogModel, entry: ModelEntry | None) -> ModelResult:
    what = "is not installed" if entry is None else "is installed but outdated or damaged"
    message = (
        f"{model.name} ({model.repo_id}@{model.revision}) {what} and HF_HUB_OFFLINE=1: "
        "fetch it where the hub is reachable, or `hubless-fetch import` a bundle"
    )
    logger.error(message)
    return ModelResult(
        model.name,
        model.repo_id,
        "missing",
        error=message,
        exit_code=OfflineError.exit_code,
    )


def no_route(model: CatalogModel) -> ModelResult:
    """Not attempted: the connectivity check failed (its reason is logged once, with advice)."""
    return ModelResult(model.name, model.repo_id, "no route", exit_code=NoRouteError.exit_code)


def failed_result(model: CatalogModel, exc: BaseException, seconds: float) -> ModelResult:
    """A model that failed after ``seconds`` of work on it."""
    code = exc.exit_code if isinstance(exc, FetchError) else ExitCode.FAILED
    logger.error("%s: %s", model.name, exc)
    return ModelResult(
        model.name, model.repo_id, "failed", seconds=seconds, error=str(exc), exit_code=code
    )
