"""requirements.lock: one lock with hashes for every install (``make setup``, CI, both images).

Offline checks: the lock pins every third-party package our distributions and the dev tools
need, at a version their specifiers accept, each with its sha256 and none of our own; the
Makefile, CI and the Dockerfiles install from it; the shell steps of the Dockerfiles that cut
entries out of it (``sed``) are run on it; one Python minor everywhere; the base-image digest
script writes what it should. ``make lock-check`` (CI) re-resolves it against PyPI.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.deploy_helpers import REPO, parse_dockerfile, pinned_torch, tool

LOCK = REPO / "requirements.lock"
DOCKERFILES = ("Dockerfile.fetcher", "Dockerfile.server")
#: The distribution folders and the extras that some install uses (images, make setup).
DISTRIBUTIONS = {
    "volume": [],
    "clients/python": ["numpy"],
    "fetcher": [],
    "server": ["onnx", "otel"],
    "tools/fakehub": ["tiny", "real"],
}
OURS = {"hubless-volume", "hubless-client", "hubless-fetcher", "hubless-server", "hubless-fakehub"}
PYTHON_MINOR = f"{sys.version_info.major}.{sys.version_info.minor}"


def entries(text: str) -> dict[str, tuple[str, list[str]]]:
    """The lock's entries: canonical name -> (version, sha256 hashes)."""
    found: dict[str, tuple[str, list[str]]] = {}
    name = ""
    for line in text.splitlines():
        pin = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if pin:
            name = canonicalize_name(pin[1])
            found[name] = (pin[2], [])
        elif line.strip().startswith("--hash=sha256:") and name:
            found[name][1].append(line.strip().split(":", 1)[1].rstrip(" \\"))
        elif line and not line.startswith((" ", "#")):
            raise AssertionError(f"not a pin, a hash or a comment: {line!r}")
    return found


@pytest.fixture(scope="module")
def lock() -> dict[str, tuple[str, list[str]]]:
    return entries(LOCK.read_text(encoding="utf-8"))


def requirements() -> list[tuple[str, Requirement]]:
    """(where, requirement) for every dependency of our distributions (with the extras in
    use) and of requirements-dev.txt, on this Python."""
    out: list[tuple[str, Requirement]] = []
    for folder, extras in DISTRIBUTIONS.items():
        project = tomllib.loads((REPO / folder / "pyproject.toml").read_text("utf-8"))["project"]
        specs = list(project["dependencies"])
        for extra in extras:
            specs += project["optional-dependencies"][extra]
        out += [(folder, Requirement(spec.split("#")[0])) for spec in specs]
    for line in (REPO / "requirements-dev.txt").read_text("utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            out.append(("requirements-dev.txt", Requirement(line)))
    return [(w, r) for w, r in out if r.marker is None or r.marker.evaluate()]


def test_every_pin_has_hashes_and_none_is_ours(lock) -> None:
    assert len(lock) > 50
    for name, (_version, hashes) in lock.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
    assert not OURS & set(lock), "our distributions come from the tree, not the lock"


def test_every_dependency_is_pinned_at_a_version_it_accepts(lock) -> None:
    for where, requirement in requirements():
        name = canonicalize_name(requirement.name)
        if name in OURS:
            continue
        assert name in lock, f"{where}: {requirement} is not in requirements.lock (make lock)"
        version = lock[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (where, requirement)


def test_transformers_and_torch_are_pinned(lock) -> None:
    assert Version(lock["transformers"][0])
    torch = Version(lock["torch"][0])
    assert torch.public == pinned_torch() and torch.local == "cpu", "the CPU build, not CUDA"


def test_make_setup_ci_and_both_images_install_from_the_lock() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    setup = makefile[makefile.index("$(STAMP):") : makefile.index("setup: $(STAMP)")]
    assert "--require-hashes --no-deps -r $(LOCK)" in setup
    assert "--no-deps --no-build-isolation -e ./volume" in setup
    assert "LOCK := requirements.lock" in makefile
    assert re.search(r"(?m)^lock-check: ", makefile) and re.search(r"(?m)^lock: ", makefile)
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ci.index("make lock-check") == ci.index("make setup") + 1
    for name in DOCKERFILES:
        build = parse_dockerfile(REPO / name).stages[0]
        assert any(i.args == "requirements.lock ./" for i in build.all("COPY")), name
        runs = [i.args for i in build.all("RUN")]
        assert any("--require-hashes --no-deps -r /tmp/bootstrap.txt" in r for r in runs), name
        installs = [r for r in runs if re.search(r"pip install [^&]*-c \S+ -r /tmp/local.txt", r)]
        assert len(installs) == 1 and "pip check" in installs[0], name


def _sed(run: str) -> list[str]:
    """The ``sed ... requirements.lock`` command of a RUN instruction, as argv."""
    match = re.search(r"sed (.*?) requirements\.lock", run)
    assert match, run
    return ["sed", *shlex.split(match[1]), str(LOCK)]


def test_the_image_bootstrap_takes_pip_and_setuptools_with_their_hashes(lock) -> None:
    for name in DOCKERFILES:
        run = next(
            i.args
            for i in parse_dockerfile(REPO / name).stages[0].all("RUN")
            if "/tmp/bootstrap.txt" in i.args
        )
        cut = subprocess.run(_sed(run), capture_output=True, text=True, check=True).stdout
        assert entries(cut) == {k: lock[k] for k in ("pip", "setuptools")}, name


def test_the_server_image_constrains_everything_but_torch(lock) -> None:
    """torch comes from TORCH_INDEX_URL (CPU or CUDA wheel); every other entry stays whole."""
    run = next(
        i.args
        for i in parse_dockerfile(REPO / "Dockerfile.server").stages[0].all("RUN")
        if "/tmp/constraints.txt" in i.args
    )
    cut = subprocess.run(_sed(run), capture_output=True, text=True, check=True).stdout
    assert entries(cut) == {k: v for k, v in lock.items() if k != "torch"}


def test_one_python_minor_everywhere() -> None:
    """Development and CI (this interpreter, ruff's target) and both images' base."""
    ruff = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["tool"]["ruff"]
    assert ruff["target-version"] == "py" + PYTHON_MINOR.replace(".", "")
    assert f"Python {PYTHON_MINOR}" in LOCK.read_text(encoding="utf-8").splitlines()[1]
    for name in DOCKERFILES:
        dockerfile = parse_dockerfile(REPO / name)
        image = dockerfile.global_args["PYTHON_IMAGE"]
        assert image and image.startswith(f"python:{PYTHON_MINOR}-"), (name, image)
        digest = image.partition("@")[2]
        assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), image
        assert {s.base for s in dockerfile.stages} == {"${PYTHON_IMAGE}"}, name


def test_the_digest_script_pins_the_tag_and_can_bump_it(tmp_path: Path) -> None:
    """deploy/base-digests.sh (make base-digests) with a stand-in `crane`: the ARG becomes
    tag@sha256:..., the tag kept; run again it replaces the digest; hadolint still passes."""
    digest = "ab" * 32
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    crane = bin_dir / "crane"
    crane.write_text(f'#!/bin/sh\n[ "$1" = digest ] && echo "sha256:$(cat {tmp_path}/d)"\n')
    crane.chmod(crane.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    copies = []
    for name in DOCKERFILES:
        copy = tmp_path / name
        copy.write_text((REPO / name).read_text(encoding="utf-8"), encoding="utf-8")
        copies.append(str(copy))
    script = [str(REPO / "deploy" / "base-digests.sh"), *copies]
    for value in (digest, "cd" * 32):
        (tmp_path / "d").write_text(value)
        subprocess.run(["sh", *script], env=env, check=True, capture_output=True, timeout=60)
        for copy in copies:
            image = parse_dockerfile(Path(copy)).global_args["PYTHON_IMAGE"]
            assert image == f"python:{PYTHON_MINOR}-slim-bookworm@sha256:{value}"
    lint = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "info", *copies],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert lint.returncode == 0, lint.stdout
    (tmp_path / "d").write_text("not-a-digest")
    failed = subprocess.run(["sh", *script], env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0 and "no digest" in failed.stderr
