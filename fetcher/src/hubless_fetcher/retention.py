"""How long the previous generation of a model stays on the volume (``HUBLESS_KEEP_PREVIOUS``).

When a model moves to a new commit (``fetch --refresh``, ``fetch --locked`` with a new lock,
``import``) or is removed, the manifest stops listing its old files at once; the old snapshot
and the blobs only it uses are recorded as a *previous generation*
(:class:`hubless_volume.PreviousGenerations`, written by
:func:`~hubless_fetcher.install.install_model` and ``remove``) and kept until the retention
below passes. :func:`hubless_fetcher.volume.prune_unreferenced`, the one place files leave the
volume, applies it through :meth:`KeepPrevious.split`.

- ``last`` (the default): each model keeps the generation it replaced last, until that model
  changes again (the next update prunes everything older than the generation it replaces); a
  removed model keeps its last generation until it is installed and updated again, or ``gc``.
- ``0``: nothing is kept; an update or a removal prunes at once.
- a duration (``90s``, ``10m``, ``1h``, ``2d``; a bare number is seconds): every generation
  replaced less than that long ago is kept, however many; older ones are pruned by the next
  ``fetch``, ``import``, ``remove`` or ``gc`` of the volume.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from hubless_volume import Manifest, PreviousGeneration, PreviousGenerations

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class KeepPrevious:
    """The retention of previous generations: ``seconds`` is ``None`` for ``last`` (until
    the model's next update), ``0`` for none, else the grace period."""

    seconds: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> KeepPrevious:
        """``last`` (or empty), ``0`` or a duration; :class:`ValueError` otherwise."""
        value = (text or "").strip().lower()
        if value in ("", "last"):
            return cls(None)
        match = _DURATION.fullmatch(value)
        if match is None:
            raise ValueError(
                f"{text!r} is not 'last', '0' or a duration (90s, 10m, 1h, 2d; a number is seconds)"
            )
        return cls(float(match.group(1)) * _UNITS[match.group(2)])

    def __str__(self) -> str:
        if self.seconds is None:
            return "last"
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if self.seconds >= size and self.seconds % size == 0:
                return f"{self.seconds / size:g}{unit}"
        return f"{self.seconds:g}s" if self.seconds else "0"

    def split(
        self, previous: PreviousGenerations, manifest: Manifest, now: datetime
    ) -> tuple[list[PreviousGeneration], list[PreviousGeneration]]:
        """``(kept, expired)``: the recorded generations this retention still keeps at
        ``now``, and those it lets go. A record of what a model's manifest entry is again
        (it came back to that commit, or a crash left the record of a current entry) is
        expired: forgetting it removes no file the manifest references."""
        kept: list[PreviousGeneration] = []
        expired: list[PreviousGeneration] = []
        for name in sorted(previous.models):
            current = manifest.models.get(name)
            generations = [
                g
                for g in previous.models[name]
                if current is None
                or (g.entry.repo_id, g.entry.commit) != (current.repo_id, current.commit)
            ]
            expired += [g for g in previous.models[name] if g not in generations]
            if self.seconds is None:
                kept += generations[-1:]
                expired += generations[:-1]
                continue
            for generation in generations:
                young = now - generation.replaced < timedelta(seconds=self.seconds)
                (kept if young else expired).append(generation)
        return kept, expired

    def until(self, generation: PreviousGeneration) -> str:
        """When this retention lets ``generation`` go, in words (``du``, ``list``)."""
        if self.seconds is None:
            return "next update"
        if not self.seconds:
            return "now"
        end = generation.replaced + timedelta(seconds=self.seconds)
        return end.replace(microsecond=0).isoformat()
