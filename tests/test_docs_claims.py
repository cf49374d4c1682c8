"""The docs name only what the code has: flags, environment variables, metrics, commands.

Every ``--flag`` the README and ``docs/`` name is a flag of one of hubless's tools (read from
their real ``--help``, each run as the README runs it) or of a third-party tool the docs show
(listed below); every ``HUBLESS_*`` variable is read by the code or set by the deploy files;
every ``hubless_*`` metric is registered by the server; every ``make`` target the README runs
exists, and every ``hubless-fetch`` subcommand the docs run has a ``--help``. A claim that
drifts from the code fails here instead of misleading a reader.
"""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "clients/python/README.md",
]
TOOLS = (
    "hubless-serve",
    "hubless-optimize",
    "hubless-fetch",
    "hubless-client",
    "hubless-health-probe",
)

FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?![\w-])")
ENV = re.compile(r"\b(HUBLESS_[A-Z0-9_]*[A-Z0-9])\b")
METRIC = re.compile(r"\b(hubless_[a-z0-9_]+)\b")

# Flags of the third-party tools the docs show (docker, kubectl, pip-compile, model_signing,
# openssl ...) and of the benchmark scripts, which are not hubless's commands.
OTHER_TOOLS_FLAGS = {
    "--build",
    "--build-arg",
    "--cert",
    "--for",
    "--from",
    "--from-file",
    "--from-literal",
    "--generate-hashes",
    "--no-deps",
    "--rm",
    "--upgrade-package",
    "--signature",
    "--allow_symlinks",
    "--public_key",
    "--private_key",
    "--shapes",  # python -m bench.run
}
# Python packages, not metrics; and a metric the docs name as removed (and what replaces it).
NOT_METRICS = {
    "hubless_server",
    "hubless_client",
    "hubless_fetcher",
    "hubless_volume",
    "hubless_fakehub",
}
REMOVED_METRICS = {"hubless_errors_total"}
# A variable of the reader's own in an example (the client reads a token from it).
EXAMPLE_VARS = {"HUBLESS_TOKEN"}


def _texts() -> dict[Path, str]:
    return {path: path.read_text(encoding="utf-8") for path in DOCS}


def _help(*argv: str) -> str:
    done = subprocess.run(
        [str(BIN / argv[0]), *argv[1:], "--help"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"{' '.join(argv)} --help exited {done.returncode}: {done.stderr}"
    return done.stdout


@cache
def _helps() -> dict[tuple[str, ...], str]:
    """Every tool's ``--help`` and every ``hubless-fetch`` / ``hubless-client`` subcommand's."""
    with ThreadPoolExecutor(4) as pool:
        tops = dict(zip(TOOLS, pool.map(_help, TOOLS), strict=True))
        fetch_subs = re.findall(r"^\s{4}([a-z][a-z-]+)\s", tops["hubless-fetch"], re.M)
        subs = [("hubless-fetch", s) for s in sorted(set(fetch_subs))] + [
            ("hubless-client", "status")
        ]
        helps = {(tool,): text for tool, text in tops.items()}
        helps |= dict(zip(subs, pool.map(lambda argv: _help(*argv), subs), strict=True))
    return helps


def _named(pattern: re.Pattern[str]) -> dict[str, str]:
    """Each name the docs mention -> the first page that does."""
    found: dict[str, str] = {}
    for path, text in _texts().items():
        for match in pattern.finditer(text):
            found.setdefault(match.group(1), str(path.relative_to(ROOT)))
    return found


def test_every_tool_and_subcommand_has_help() -> None:
    helps = _helps()
    assert {key[0] for key in helps} == set(TOOLS)
    assert ("hubless-fetch", "fetch") in helps and ("hubless-fetch", "verify") in helps


def test_every_flag_the_docs_name_exists() -> None:
    known = set(OTHER_TOOLS_FLAGS)
    for text in _helps().values():
        known |= set(FLAG.findall(text))
    stale = {flag: page for flag, page in _named(FLAG).items() if flag not in known}
    assert not stale, f"flags the docs name but no tool has: {stale}"


def test_every_environment_variable_the_docs_name_is_used() -> None:
    sources = [
        *ROOT.glob("*/src/**/*.py"),
        *ROOT.glob("clients/python/src/**/*.py"),
        *ROOT.glob("tools/*/src/**/*.py"),
        *ROOT.glob("deploy/**/*.y*ml"),
        *ROOT.glob("Dockerfile.*"),
        ROOT / "Makefile",
    ]
    code = "\n".join(path.read_text(encoding="utf-8", errors="replace") for path in sources)
    code += "".join(text for text in _helps().values())
    used = set(ENV.findall(code))
    from hubless_server.core.config import Settings
    from hubless_server.core.values import env_name

    used |= {env_name(name) for name in Settings.__dataclass_fields__} | EXAMPLE_VARS
    stale = {var: page for var, page in _named(ENV).items() if var not in used}
    assert not stale, f"variables the docs name but nothing reads or sets: {stale}"


def test_every_metric_the_docs_name_is_registered() -> None:
    from hubless_server.observability import metrics

    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        names |= {sample.name for sample in family.samples}
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names |= {f"{family.name}_{end}" for end in ("bucket", "sum", "count")}
    named = {m: p for m, p in _named(METRIC).items() if m not in NOT_METRICS | REMOVED_METRICS}
    stale = {metric: page for metric, page in named.items() if metric not in names}
    assert not stale, f"metrics the docs name but the server does not export: {stale}"


def test_the_readme_make_targets_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = set(re.findall(r"(?<![\w/.-])make ([a-z][a-z-]+)", readme))
    assert {"demo", "run", "test"} <= targets
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    defined = set(re.findall(r"^([a-z][a-z-]+):", makefile, re.M))
    assert targets <= defined, f"README runs make targets the Makefile lacks: {targets - defined}"


@pytest.mark.parametrize("tool", ["hubless-fetch", "hubless-serve", "hubless-optimize"])
def test_every_exit_code_in_help_is_documented(tool: str) -> None:
    """The exit codes a tool's --help lists appear in its docs page's table."""
    page = {"hubless-fetch": "fetcher.md", "hubless-serve": "server.md"}.get(tool, "optimize.md")
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    epilog = _helps()[(tool,)].split("xit codes", 1)[-1]
    codes = set(re.findall(r"^\s+(\d{1,3})\s", epilog, re.M))
    assert codes, f"{tool} --help lists no exit codes"
    documented = set(re.findall(r"^\|\s*`?(\d{1,3})`?\s*\|", text, re.M))
    assert codes <= documented, f"{tool}: exit codes missing from docs/{page}: {codes - documented}"
