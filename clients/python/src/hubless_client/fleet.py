"""The fleet view: what each replica of a hubless deployment serves, and whether they agree.

Behind one load balancer every replica should answer with the same commit of each model; a
rollout half done, a replica on a stale volume or one that failed to load the update breaks
that silently (embeddings of two commits may not be comparable). :func:`fleet_status` asks
every replica for ``ModelsService.ListModels`` at once and compares the served commit of each
model across the replicas that list it; ``hubless-client status`` (:mod:`hubless_client.cli`)
prints it.

The served commit is the model's ``commit``, except during a live update, when the version
still answering is ``replacing_commit`` (``LOADING``). A model one replica has and another
lists as not installed (no commit) is skew too; a model a replica does not list at all (its
task not served there, ``--tasks``) is not compared.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from hubless_client.client import Client
from hubless_client.errors import HublessError
from hubless_client.types import ModelInfo, ModelState

__all__ = [
    "FleetStatus",
    "Replica",
    "Skew",
    "find_skew",
    "fleet_status",
    "served_commit",
]

log = logging.getLogger(__name__)

#: Seconds each replica has to answer, unless told otherwise.
DEFAULT_TIMEOUT = 5.0


def served_commit(model: ModelInfo) -> str:
    """The commit answering requests for ``model`` (``""``: not installed)."""
    if model.state is ModelState.LOADING and model.replacing_commit:
        return model.replacing_commit
    return model.commit


@dataclass(frozen=True)
class Replica:
    """One replica's answer: its models, or why it could not be asked (``error``)."""

    target: str
    models: tuple[ModelInfo, ...] = ()
    error: HublessError | None = None

    @property
    def reachable(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (``--json``)."""
        if self.error is not None:
            return {
                "target": self.target,
                "error": {
                    "code": self.error.code.name,
                    "reason": str(self.error.reason),
                    "details": self.error.details,
                },
                "models": [],
            }
        return {
            "target": self.target,
            "error": None,
            "models": [
                {
                    "name": m.name,
                    "task": str(m.task),
                    "commit": served_commit(m),
                    "loading_commit": m.commit if served_commit(m) != m.commit else "",
                    "backend": m.backend,
                    "dtype": m.dtype,
                    "device": m.device,
                    "state": m.state.value,
                    "is_default": m.is_default,
                }
                for m in self.models
            ],
        }


@dataclass(frozen=True)
class Skew:
    """A model served at more than one commit: ``commits`` maps each replica (target) that
    lists it to the commit it serves (``""``: not installed there)."""

    model: str
    commits: Mapping[str, str] = field(default_factory=dict)

    def describe(self, width: int = 12) -> str:
        """``model: a:50051 serves 1a2b3c4d5e6f, b:50051 has it not installed``."""
        parts = [
            f"{target} serves {commit[:width]}" if commit else f"{target} has it not installed"
            for target, commit in self.commits.items()
        ]
        return f"{self.model}: {', '.join(parts)}"


@dataclass(frozen=True)
class FleetStatus:
    """Every replica's answer, in the order asked, and the models they disagree on."""

    replicas: tuple[Replica, ...]
    skew: tuple[Skew, ...]

    @property
    def unreachable(self) -> tuple[Replica, ...]:
        """The replicas that could not be asked."""
        return tuple(r for r in self.replicas if not r.reachable)

    @property
    def consistent(self) -> bool:
        """Every replica answered and each model has one served commit across them."""
        return not self.unreachable and not self.skew

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (``hubless-client status --json``)."""
        return {
            "consistent": self.consistent,
            "replicas": [r.to_dict() for r in self.replicas],
            "skew": [{"model": s.model, "commits": dict(s.commits)} for s in self.skew],
            "unreachable": [r.target for r in self.unreachable],
        }


def find_skew(replicas: Sequence[Replica]) -> list[Skew]:
    """The models whose served commit differs between the reachable replicas that list them,
    in the order first seen."""
    seen: dict[str, dict[str, str]] = {}
    for replica in replicas:
        for model in replica.models:
            seen.setdefault(model.name, {})[replica.target] = served_commit(model)
    return [Skew(name, commits) for name, commits in seen.items() if len(set(commits.values())) > 1]


def _ask(client: Client) -> Replica:
    try:
        return Replica(client.target, tuple(client.list_models()))
    except HublessError as exc:
        log.debug("replica %s: %s", client.target, exc)
        return Replica(client.target, error=exc)


def fleet_status(
    targets: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT, **client_options: Any
) -> FleetStatus:
    """Ask every replica in ``targets`` (``host:port``) for its models, all at once (no
    retries, ``timeout`` seconds each), and compare what they serve. ``client_options`` go to
    each :class:`~hubless_client.Client` (``tls=``, ``root_certificates=``, ``token=``...). A
    replica that cannot be asked (down, refused the token...) has its ``error`` set instead of
    failing the whole view; bad options (a token over plaintext to another host...) raise
    ``ValueError`` before anything is sent."""
    if not targets:
        raise ValueError("give at least one replica address (host:port)")
    if len(set(targets)) != len(targets):
        raise ValueError(f"a replica is named twice in {', '.join(targets)}")
    clients: list[Client] = []
    try:
        for target in targets:
            clients.append(Client(target, timeout=timeout, retries=False, **client_options))
        with ThreadPoolExecutor(max_workers=min(len(clients), 16)) as pool:
            replicas = tuple(pool.map(_ask, clients))
    finally:
        for client in clients:
            client.close()
    return FleetStatus(replicas, tuple(find_skew(replicas)))
