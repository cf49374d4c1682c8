"""Dockerfile.fetcher, Dockerfile.server and .dockerignore: lint and contract (no Docker needed)."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from tests.deploy.deploy_helpers import REPO, console_scripts, parse_dockerfile, pinned_torch, tool

DOCKERFILES = ("Dockerfile.fetcher", "Dockerfile.server")
#: The one file besides the distributions that the images copy (tests/deploy/test_deploy_lock.py).
LOCK = "requirements.lock"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def fetcher():
    return parse_dockerfile(REPO / "Dockerfile.fetcher")


@pytest.fixture(scope="module")
def server():
    return parse_dockerfile(REPO / "Dockerfile.server")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name: str) -> None:
    """hadolint reports nothing at all (not even info-level findings)."""
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "info", name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_no_token_in_any_layer(name: str) -> None:
    """No ARG or ENV mentions a token: HF_TOKEN is a run-time variable only."""
    dockerfile = parse_dockerfile(REPO / name)
    declared = set(dockerfile.global_args)
    for stage in dockerfile.stages:
        declared |= set(stage.args()) | set(stage.env())
    assert not [key for key in declared if "TOKEN" in key.upper()]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_package_index_build_args(name: str) -> None:
    """PIP_INDEX_URL / PIP_EXTRA_INDEX_URL: build args of the stage that runs pip, unset by
    default (PyPI), which pip reads from the environment; the image does not carry them."""
    dockerfile = parse_dockerfile(REPO / name)
    pip = [s for s in dockerfile.stages if any("pip install" in i.args for i in s.all("RUN"))]
    (builder,) = pip
    args = builder.args()
    assert args["PIP_INDEX_URL"] is None and args["PIP_EXTRA_INDEX_URL"] is None
    final = dockerfile.final
    assert not {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"} & (set(final.args()) | set(final.env()))


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_non_root(name: str) -> None:
    final = parse_dockerfile(REPO / name).final
    user = final.user()
    assert user is not None
    assert user.split(":")[0] not in {"0", "root"}
    assert final.args().get("UID") not in {None, "0"}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_sources_exist_and_are_not_dockerignored(name: str) -> None:
    ignore = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for instruction in parse_dockerfile(REPO / name).all("COPY"):
        if "--from=" in instruction.args:
            continue
        source = instruction.args.split()[0].rstrip("/")
        if source != LOCK:  # the lock, or a distribution
            assert (REPO / source / "pyproject.toml").is_file(), source
        for pattern in ignore:
            assert not fnmatch.fnmatch(source, pattern.rstrip("/")), (source, pattern)
            assert not fnmatch.fnmatch(source + "/pyproject.toml", pattern), (source, pattern)


def test_dockerignore_keeps_heavy_and_secret_things_out() -> None:
    patterns = set((REPO / ".dockerignore").read_text(encoding="utf-8").split())
    for required in ("**/.venv", "**/__pycache__", "models", "tests", "**/.env", ".git"):
        assert required in patterns, required


def test_fetcher_image(fetcher) -> None:
    """Small (no torch, only the fetcher and the volume format), fetch by default into
    /models, same entrypoint as the package's."""
    final = fetcher.final
    assert "hubless-fetch" in console_scripts("fetcher")
    assert final.exec_form("ENTRYPOINT") == ["hubless-fetch"]
    assert final.exec_form("CMD") == ["fetch"]
    assert final.env()["HUBLESS_MODELS_DIR"] == "/models"
    runs = " ".join(i.args for s in fetcher.stages for i in s.all("RUN")).lower()
    assert "torch" not in runs
    deps = tomllib.loads((REPO / "fetcher" / "pyproject.toml").read_text(encoding="utf-8"))
    heavy = {"torch", "transformers", "sentence-transformers"}
    names = {
        re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in deps["project"]["dependencies"]
    }
    assert not names & heavy, names & heavy
    sources = [i.args.split()[0] for s in fetcher.stages for i in s.all("COPY")]
    assert all(s.startswith(("volume", "fetcher", "--from", LOCK)) for s in sources), sources
    assert not set(OFFLINE) & set(final.env()), "the fetcher must be able to reach the hub"


def test_server_image_is_multi_stage_with_pinned_cpu_torch(server) -> None:
    assert len(server.stages) >= 2
    build = server.stages[0]
    args = build.args()
    assert args["TORCH_VERSION"] == pinned_torch()
    assert args["TORCH_VARIANT"] == "cpu"
    # PyTorch's index, replaceable by a mirror (--build-arg TORCH_INDEX_URL=...)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/${TORCH_VARIANT}"
    runs = " ".join(i.args for i in build.all("RUN"))
    assert '--index-url "${TORCH_INDEX_URL}"' in runs
    assert "torch==${TORCH_VERSION}" in runs
    # The runtime stage copies only the built venv: no compilers, no sources.
    copies = server.final.all("COPY")
    assert copies and all("--from=build" in c.args for c in copies)


def test_server_image_carries_the_volume_format_not_the_fetcher(server) -> None:
    """The server shares only hubless-volume with the fetcher: neither the image nor the
    distribution pulls in hubless-fetcher."""
    sources = [i.args.split()[0].rstrip("/") for s in server.stages for i in s.all("COPY")]
    assert "volume" in sources
    assert not [s for s in sources if s.startswith("fetcher")], sources
    deps = tomllib.loads((REPO / "server" / "pyproject.toml").read_text(encoding="utf-8"))
    names = {
        re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in deps["project"]["dependencies"]
    }
    assert "hubless-volume" in names and "hubless-fetcher" not in names, names


def test_server_image_runtime_contract(server) -> None:
    final = server.final
    env = final.env()
    assert {k: env.get(k) for k in OFFLINE} == OFFLINE
    assert env["HUBLESS_MODELS_DIR"] == "/models"
    # Read-only root filesystem: HOME and every cache point into /tmp.
    for key in ("HOME", "HF_HOME", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "TORCH_HOME"):
        assert env[key] == "/tmp" or env[key].startswith("/tmp/"), key
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    exposed = {int(p.split("/")[0]) for i in final.all("EXPOSE") for p in i.args.split()}
    assert exposed == {int(env["HUBLESS_PORT"]), int(env["HUBLESS_METRICS_PORT"])}
    assert float(env["HUBLESS_GRACE_PERIOD"]) > 0
    assert "hubless-serve" in console_scripts("server")
    assert final.exec_form("ENTRYPOINT") == ["hubless-serve"]


def test_server_healthcheck_uses_the_client_probe(server) -> None:
    options, command = server.final.healthcheck()
    assert "hubless-health-probe" in console_scripts("clients/python")
    assert "hubless-health-probe" in " ".join(command)
    assert "127.0.0.1:${HUBLESS_PORT}" in " ".join(command)
    # Model loading is slow: the start period must cover it.
    assert options["start-period"].endswith("s") and int(options["start-period"][:-1]) >= 120


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (relative, ``/``-separated) out of the build context:
    a pattern matching the path or one of its parent directories (``**``, ``*``, ``?``)."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token)
            )
        if any(re.fullmatch(regex, c) for c in candidates):
            return True
    return False


def test_dockerignore_matcher() -> None:
    patterns = ["**/__pycache__", "models", "**/*.bin", ".git"]
    assert dockerignored("server/src/x/__pycache__/a.pyc", patterns)
    assert dockerignored("models/hubless-manifest.json", patterns)
    assert dockerignored("a/b/weights.bin", patterns)
    assert not dockerignored("fetcher/src/hubless_fetcher/models.py", patterns)
    assert not dockerignored("server/src/hubless_server/app.py", patterns)


@pytest.mark.slow
def test_images_build_complete_packages_from_the_dockerignored_context(tmp_path) -> None:
    """What the Dockerfiles COPY, after .dockerignore, builds wheels that contain every
    tracked source file of the three packages (nothing they need is left out)."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not [p for p in patterns if p.startswith("!")], "the matcher has no re-includes"
    sources = sorted(
        {
            i.args.split()[0].rstrip("/")
            for name in DOCKERFILES
            for i in parse_dockerfile(REPO / name).all("COPY")
            if "--from=" not in i.args and not i.args.startswith(LOCK)
        }
    )
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--", *sources],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split("\0")
    context = tmp_path / "context"
    for rel in filter(None, tracked):
        if dockerignored(rel, patterns):
            continue
        target = context / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            *[str(context / s) for s in sources],
        ],
        capture_output=True,
        check=True,
        timeout=300,
    )
    packaged: set[str] = set()
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            packaged |= set(archive.namelist())
    assert len(list(wheels.glob("*.whl"))) == len(sources)
    for source in sources:
        src = f"{source}/src/"
        expected = {
            rel[len(src) :]
            for rel in tracked
            if rel.startswith(src) and rel.endswith((".py", ".pyi", ".toml", ".json"))
        }
        assert expected, source
        assert expected <= packaged, sorted(expected - packaged)
