"""A soak scenario's result: its tables, figures and pass/fail criteria, as markdown and JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..report import fmt, md_table


@dataclass
class Criterion:
    """One pass/fail check: ``what`` must hold; ``measured`` says what was seen."""

    what: str
    passed: bool
    measured: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}: {self.what} (measured: {self.measured})"


@dataclass
class Scenario:
    """What one scenario measured."""

    name: str
    title: str
    setup: str = ""
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    criteria: list[Criterion] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and bool(self.criteria) and all(c.passed for c in self.criteria)

    def check(self, what: str, passed: bool, measured: Any) -> None:
        self.criteria.append(Criterion(what, bool(passed), str(measured)))

    def table(self, caption: str, headers: list[str], rows: list[list[Any]]) -> None:
        self.tables.append((caption, headers, rows))

    def markdown(self) -> str:
        out = [f"### {self.title}", ""]
        if self.setup:
            out += [self.setup, ""]
        for caption, headers, rows in self.tables:
            if caption:
                out += [caption, ""]
            out += [md_table(headers, rows), ""]
        if self.figures:
            rows = [[k, _show(v)] for k, v in self.figures.items()]
            out += [md_table(["figure", "value"], rows), ""]
        if self.error:
            out += [f"**FAIL**: the scenario did not complete: {self.error}", ""]
        for c in self.criteria:
            out.append(f"- {'PASS' if c.passed else '**FAIL**'}: {c.what} — {c.measured}")
        verdict = "PASS" if self.passed else "FAIL"
        out += ["", f"**{self.name}: {verdict}**", ""]
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "setup": self.setup,
            "passed": self.passed,
            "error": self.error or None,
            "criteria": [
                {"what": c.what, "passed": c.passed, "measured": c.measured} for c in self.criteria
            ],
            "figures": {k: _clean(v) for k, v in self.figures.items()},
            "tables": [
                {"caption": cap, "headers": h, "rows": [[_clean(x) for x in r] for r in rows]}
                for cap, h, rows in self.tables
            ],
            **({"data": self.data} if self.data else {}),
        }


def _show(v: Any) -> str:
    if isinstance(v, float):
        return fmt(v, 1)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_show(x)}" for k, x in v.items()) or "—"
    if isinstance(v, list | tuple):
        return ", ".join(_show(x) for x in v) or "—"
    return str(v)


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 3)
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v
