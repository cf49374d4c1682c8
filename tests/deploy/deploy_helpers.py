"""Helpers for the deploy tests: repository paths, tool lookup, and a small Dockerfile parser.

The parser understands what the project's Dockerfiles use (line continuations, comments,
``FROM ... AS``, ``ARG``/``ENV`` with ``key=value`` pairs, JSON-form ``ENTRYPOINT``/``CMD`` and
``HEALTHCHECK [options] CMD [...]``) so that tests read the images' contract from the files
themselves instead of repeating it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("init-container", "shared-cache")
#: Kustomize components an overlay may add (deploy/k8s/components/).
COMPONENTS = ("tls-auth", "servicemonitor", "trusted-key", "signing-job")
#: Custom resources (apiVersion, kind) the manifests may hold: kubernetes-validate has schemas
#: for the built-in kinds only, so these are checked by tests of their own
#: (test_deploy_k8s_catalog.py) instead of its strict validation.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
#: What the k8s tests build: each overlay alone, and with each component ("overlay+component").
VARIANTS = OVERLAYS + tuple(f"{o}+{c}" for o in OVERLAYS for c in COMPONENTS)


def tool(name: str) -> str:
    """Absolute path of a dev tool: the venv's bin directory first (requirements-dev.txt)."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        raise FileNotFoundError(f"{name} not found: run `make setup` (requirements-dev.txt)")
    return found


def console_scripts(package_dir: str) -> dict[str, str]:
    """``[project.scripts]`` of one of the repository's distributions."""
    data = tomllib.loads((REPO / package_dir / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(data["project"].get("scripts", {}))


def pinned_torch() -> str:
    """The torch version the server distribution pins (``torch==X``)."""
    data = tomllib.loads((REPO / "server" / "pyproject.toml").read_text(encoding="utf-8"))
    for dep in data["project"]["dependencies"]:
        match = re.fullmatch(r"torch\s*==\s*([\w.+]+)", dep.strip())
        if match:
            return match.group(1)
    raise AssertionError("server/pyproject.toml does not pin torch")


@dataclass
class Instruction:
    """One Dockerfile instruction: upper-case keyword and its raw argument text."""

    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    """One build stage: its base image, optional name and instructions."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        """Every instruction of this stage with ``keyword``."""
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """The ``ENV`` values set in this stage, later ones winning (values unexpanded)."""
        env: dict[str, str] = {}
        for instruction in self.all("ENV"):
            env.update(parse_pairs(instruction.args))
        return env

    def args(self) -> dict[str, str | None]:
        """The ``ARG`` declarations of this stage with their defaults."""
        out: dict[str, str | None] = {}
        for instruction in self.all("ARG"):
            for word in shlex.split(instruction.args):
                key, sep, value = word.partition("=")
                out[key] = value if sep else None
        return out

    def exec_form(self, keyword: str) -> list[str] | None:
        """The last ``ENTRYPOINT``/``CMD`` of the stage as a list (JSON form required)."""
        found = self.all(keyword)
        if not found:
            return None
        value = json.loads(found[-1].args)
        if not isinstance(value, list):
            raise AssertionError(f"{keyword} must use the JSON (exec) form")
        return [str(v) for v in value]

    def user(self) -> str | None:
        """The last ``USER`` of the stage."""
        found = self.all("USER")
        return found[-1].args.strip() if found else None

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """``HEALTHCHECK`` options (``--interval`` ...) and its command in exec form."""
        found = self.all("HEALTHCHECK")
        if not found:
            raise AssertionError("no HEALTHCHECK")
        text = found[-1].args
        options: dict[str, str] = {}
        rest = text.strip()
        while rest.startswith("--"):
            word, _, rest = rest.partition(" ")
            key, _, value = word[2:].partition("=")
            options[key] = value
            rest = rest.strip()
        keyword, _, command = rest.partition(" ")
        if keyword.upper() != "CMD":
            raise AssertionError(f"HEALTHCHECK must run a command, got {text!r}")
        command = command.strip()
        if command.startswith("["):
            return options, [str(v) for v in json.loads(command)]
        return options, ["/bin/sh", "-c", command]


@dataclass
class Dockerfile:
    """A parsed Dockerfile: global ``ARG``s (before the first ``FROM``) and its stages."""

    path: Path
    global_args: dict[str, str | None]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        """The stage that becomes the image."""
        return self.stages[-1]

    def all(self, keyword: str) -> list[Instruction]:
        """Every instruction with ``keyword`` in every stage."""
        return [i for s in self.stages for i in s.all(keyword)]


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Join continuation lines and drop comments and blanks: ``(first line number, text)``."""
    out: list[tuple[int, str]] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        out.append((start, " ".join(part for part in buffer if part)))
        buffer = []
    if buffer:
        out.append((start, " ".join(buffer)))
    return out


def parse_pairs(text: str) -> dict[str, str]:
    """``key=value`` pairs as in ``ENV``/``LABEL`` (shell quoting; legacy ``ENV k v`` too)."""
    words = shlex.split(text, posix=True)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    pairs: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise AssertionError(f"not a key=value pair: {word!r} in {text!r}")
        pairs[key] = value
    return pairs


def parse_dockerfile(path: Path) -> Dockerfile:
    """Parse ``path`` into global args and stages."""
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for line, text in logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            if keyword != "ARG":
                raise AssertionError(f"{path.name}:{line}: {keyword} before the first FROM")
            key, sep, value = args.partition("=")
            global_args[key.strip()] = value.strip() if sep else None
        else:
            stages[-1].instructions.append(Instruction(keyword, args, line))
    return Dockerfile(path=path, global_args=global_args, stages=stages)


def short_volume(spec: str) -> tuple[str, str, str]:
    """Compose short volume syntax ``source:target[:mode]`` -> (source, target, mode)."""
    parts = spec.split(":")
    if len(parts) == 2:
        return parts[0], parts[1], "rw"
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    raise AssertionError(f"unexpected volume spec {spec!r}")


def compose_env(service: dict) -> dict[str, str | None]:
    """A compose service's ``environment`` as a dict (list or map form; ``None`` = passed on)."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {k: None if v is None else str(v) for k, v in env.items()}
    out: dict[str, str | None] = {}
    for item in env:
        key, sep, value = str(item).partition("=")
        out[key] = value if sep else None
    return out


def seconds(duration: str | int) -> float:
    """A compose/Docker duration (``30s``, ``1m30s``, ``300ms``) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    total = 0.0
    matches = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    if not matches or "".join(n + u for n, u in matches) != duration:
        raise AssertionError(f"unparsable duration {duration!r}")
    for number, unit in matches:
        total += float(number) * units[unit]
    return total
