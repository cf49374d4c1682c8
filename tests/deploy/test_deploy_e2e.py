"""The compose contract, end to end, without a Docker engine.

What the two containers of ``deploy/docker-compose.yml`` run is run here as processes, with
the entrypoint, command, environment, user-visible mounts and isolation read from the
Dockerfiles and the compose file (so they cannot drift from what is tested):

1. the fetcher (``Dockerfile.fetcher`` + the compose ``fetcher`` service) fills a fresh models
   volume from a local hub mirror, with a read-only root and a private tmpfs ``/tmp``;
2. the volume is then mounted read-only, and the server (``Dockerfile.server`` + the compose
   ``server`` service) starts in a network namespace that has nothing but loopback (no route
   to the mirror or anywhere else), again with a read-only root and a private ``/tmp``;
3. inside that namespace a client call answers, and both the image's ``HEALTHCHECK`` command
   and the compose ``healthcheck`` report SERVING;
4. SIGTERM drains and stops the server within its grace period.

Isolation uses Linux namespaces (``unshare``/``nsenter`` from util-linux, ``ip`` from
iproute2) and needs root, as CI has. Differences from a real container, on purpose: the
volume lives at a temporary path (the ``/models`` value in the environment is rewritten to
it), the image's venv is this repository's ``.venv``, and the processes keep uid 0 (the
interpreter under /root is not readable by the image's uid 10001).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.deploy_helpers import (
    DEPLOY,
    REPO,
    Dockerfile,
    compose_env,
    parse_dockerfile,
    seconds,
    short_volume,
)
from tests.support.mirror import HubMirror

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VENV_BIN = Path(sys.executable).parent
# The PATH of the python:*-slim base images, which the Dockerfiles extend with $PATH.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SERVE_DEADLINE = 240.0

# Run by /bin/sh as the container's "runtime": private mounts, read-only volumes, tmpfs /tmp,
# read-only root, and (with a new network namespace) loopback up. Arguments: the directories
# to mount read-only, "--", the directories to keep writable, "--", the command.
SANDBOX = r"""
set -eu
mount --make-rprivate /
while [ "$1" != "--" ]; do
    mount --bind "$1" "$1"
    mount -o remount,bind,ro "$1"
    shift
done
shift
while [ "$1" != "--" ]; do
    mount --bind "$1" "$1"
    shift
done
shift
if [ "$HUBLESS_SANDBOX_TMPFS" = 1 ]; then
    mount -t tmpfs -o size=256m,mode=1777 tmpfs /tmp
fi
if [ "$HUBLESS_SANDBOX_READ_ONLY" = 1 ]; then
    mount -o remount,bind,ro /
fi
if [ "$HUBLESS_SANDBOX_NET" = 1 ]; then
    ip link set lo up
fi
unset HUBLESS_SANDBOX_TMPFS HUBLESS_SANDBOX_READ_ONLY HUBLESS_SANDBOX_NET
exec "$@"
"""

CLIENT_CALL = r"""
import json, sys
from hubless_client import Client

with Client(sys.argv[1], timeout=60, retries=False) as client:
    models = client.models()
    embedding = client.embed(["the models volume is read-only"])
    sentiment = client.sentiment(["I love this", "I hate this"])
print(json.dumps({
    "models": {m.name: str(m.state) for m in models},
    "dimension": embedding.dimension,
    "vectors": len(embedding.vectors),
    "sentiment": [r.label for r in sentiment.results],
    "sentiment_model": sentiment.model.name,
}))
"""


class Container:
    """What one compose service would run: argv, environment, mounts and isolation."""

    def __init__(
        self,
        dockerfile: Dockerfile,
        service: dict[str, Any],
        volumes: dict[str, Path],
        shell_env: dict[str, str],
        run_volumes: Sequence[str] = (),
    ) -> None:
        """``run_volumes``: extra ``-v SOURCE:TARGET[:MODE]`` of ``docker compose run``."""
        final = dockerfile.final
        entrypoint = final.exec_form("ENTRYPOINT") or []
        command = service.get("command", final.exec_form("CMD") or [])
        self.argv = entrypoint + list(command)
        self.read_only_root = bool(service.get("read_only"))
        self.tmpfs = any(str(t).split(":")[0] == "/tmp" for t in service.get("tmpfs", []))
        self.ro_dirs: list[Path] = []
        self.rw_dirs: list[Path] = []
        self.targets: dict[str, Path] = {}
        for spec in [*service.get("volumes", []), *run_volumes]:
            source, target, mode = short_volume(spec)
            self.targets[target] = volumes[source]
            (self.ro_dirs if mode == "ro" else self.rw_dirs).append(volumes[source])
        self.env = self._environment(dockerfile, service, self.targets, shell_env)

    def host_path(self, path: str) -> str:
        """Where a path inside the container is on this machine (through the mounts)."""
        for target, source in self.targets.items():
            if path == target or path.startswith(target.rstrip("/") + "/"):
                return str(source) + path[len(target.rstrip("/")) :]
        return path

    @staticmethod
    def _environment(
        dockerfile: Dockerfile,
        service: dict[str, Any],
        targets: dict[str, Path],
        shell_env: dict[str, str],
    ) -> dict[str, str]:
        env = dict(dockerfile.final.env())
        venvs = [i.args.split()[-1] for i in dockerfile.final.all("COPY") if "--from=" in i.args]
        path = env.get("PATH", BASE_PATH).replace("${PATH}", BASE_PATH)
        path = path.replace("$PATH", BASE_PATH)
        for venv in venvs:
            path = path.replace(f"{venv.rstrip('/')}/bin", str(VENV_BIN))
        env["PATH"] = path
        for key, value in compose_env(service).items():
            if value is not None:
                env[key] = value
            elif key in shell_env:  # passed through from the shell that runs compose
                env[key] = shell_env[key]
            else:
                env.pop(key, None)
        return {k: str(targets.get(v, v)) for k, v in env.items()}

    def sandboxed(self, argv: list[str], *, net: bool) -> tuple[list[str], dict[str, str]]:
        """``unshare`` command line and environment that run ``argv`` as in the container."""
        outer = ["unshare", "--mount"] + (["--net"] if net else [])
        script = ["/bin/sh", "-c", SANDBOX, "sandbox"]
        dirs = [str(d) for d in self.ro_dirs] + ["--"] + [str(d) for d in self.rw_dirs]
        env = dict(self.env)
        env["HUBLESS_SANDBOX_TMPFS"] = "1" if self.tmpfs else "0"
        env["HUBLESS_SANDBOX_READ_ONLY"] = "1" if self.read_only_root else "0"
        env["HUBLESS_SANDBOX_NET"] = "1" if net else "0"
        return outer + script + dirs + ["--"] + argv, env


def inside(
    pid: int, argv: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """Run ``argv`` in the network and mount namespaces of process ``pid``."""
    return subprocess.run(
        ["nsenter", f"--target={pid}", "--net", "--mount", "--", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))


@pytest.fixture
def shm_dirs() -> Iterator[Callable[[str], Path]]:
    """``make(prefix)``: a fresh, empty directory for a volume or a bind mount, removed after
    the test. In /dev/shm: outside /tmp, which the sandbox replaces by a tmpfs."""
    made: list[Path] = []

    def make(prefix: str) -> Path:
        made.append(Path(tempfile.mkdtemp(prefix=f"hubless-e2e-{prefix}-", dir="/dev/shm")))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def models_volume(shm_dirs: Callable[[str], Path]) -> Path:
    """A fresh, empty named volume."""
    return shm_dirs("models")


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``path`` with (size, mtime_ns), symlinks not followed."""
    out = {}
    for item in sorted(path.rglob("*")):
        stat = item.lstat()
        out[str(item.relative_to(path))] = (stat.st_size, stat.st_mtime_ns)
    return out


def test_compose_contract_end_to_end(
    compose: dict[str, Any], models_volume: Path, hub_mirror: HubMirror, tmp_path: Path
) -> None:
    endpoint = hub_mirror.endpoint
    volumes = {"models": models_volume}
    shell = {"HF_ENDPOINT": endpoint}  # the operator's shell: a mirror, no token
    services = compose["services"]
    fetcher = Container(
        parse_dockerfile(REPO / "Dockerfile.fetcher"), services["fetcher"], volumes, shell
    )
    server = Container(
        parse_dockerfile(REPO / "Dockerfile.server"), services["server"], volumes, shell
    )

    # 1. The one-shot fetcher, as `docker compose up` runs it first.
    assert fetcher.env["HF_ENDPOINT"] == endpoint and "HF_TOKEN" not in fetcher.env
    argv, env = fetcher.sandboxed(fetcher.argv, net=False)
    fetched = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    from hubless_fetcher.manifest import Manifest

    catalog = tomllib_catalog_names()
    assert sorted(Manifest.load(models_volume).models) == sorted(catalog)
    argv, env = fetcher.sandboxed([fetcher.argv[0], "verify", "--deep"], net=False)
    verified = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    before = tree(models_volume)

    # 2. The server: read-only volume and root, loopback-only network namespace.
    assert server.ro_dirs == [models_volume] and not server.rw_dirs
    assert server.env["HF_HUB_OFFLINE"] == "1" and "HF_TOKEN" not in server.env
    assert server.read_only_root and server.tmpfs
    argv, env = server.sandboxed(server.argv, net=True)
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _check_served(process, server, services["server"], endpoint, log_path)
        # 4. Graceful stop within the grace period (compose sends SIGTERM, then SIGKILL).
        grace = float(server.env["HUBLESS_GRACE_PERIOD"])
        assert seconds(services["server"]["stop_grace_period"]) > grace
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=grace + 10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, log_path.read_text(errors="replace")[-4000:]
    assert tree(models_volume) == before, "the server changed the read-only volume"


def _check_served(
    process: subprocess.Popen,
    server: Container,
    service: dict[str, Any],
    endpoint: str,
    log_path: Path,
) -> None:
    """Wait for SERVING by the image's HEALTHCHECK, then check it, compose's and a client."""
    _, healthcheck = parse_dockerfile(REPO / "Dockerfile.server").final.healthcheck()
    compose_check = service["healthcheck"]["test"]
    assert compose_check[0] == "CMD"

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    # Never probe before unshare has moved the process: the host may have its own :50051.
    deadline = time.monotonic() + 30
    while os.readlink(f"/proc/{process.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
        assert process.poll() is None, f"sandbox exited {process.returncode}:\n{log_tail()}"
        assert time.monotonic() < deadline, "the server never entered its network namespace"
        time.sleep(0.05)

    deadline = time.monotonic() + SERVE_DEADLINE
    while True:
        assert process.poll() is None, f"server exited {process.returncode}:\n{log_tail()}"
        probe = inside(process.pid, healthcheck, server.env, timeout=30)
        if probe.returncode == 0:
            break
        assert time.monotonic() < deadline, f"never SERVING: {probe.stderr}\n{log_tail()}"
        time.sleep(1.0)

    # 3. Both health checks as Docker would run them, and a real call, all inside the netns.
    probe = inside(process.pid, compose_check[1:], server.env, timeout=30)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    target = f"127.0.0.1:{server.env['HUBLESS_PORT']}"
    call = inside(process.pid, [sys.executable, "-c", CLIENT_CALL, target], server.env, 120)
    assert call.returncode == 0, call.stderr + log_tail()
    answer = json.loads(call.stdout.strip().splitlines()[-1])
    assert set(answer["models"]) >= set(tomllib_catalog_names())
    assert answer["models"]["all-minilm-l6-v2"] == "ready", answer
    assert answer["vectors"] == 1 and answer["dimension"] > 0
    assert len(answer["sentiment"]) == 2 and all(answer["sentiment"])

    # The namespace really is offline: the mirror the fetcher used is unreachable from it.
    mirror = urlsplit(endpoint)
    reach = inside(
        process.pid,
        [sys.executable, "-c", REACH, mirror.hostname or "127.0.0.1", str(mirror.port or 80)],
        server.env,
        timeout=30,
    )
    assert reach.stdout.strip() == "unreachable", reach.stdout + reach.stderr


REACH = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("reachable")
except OSError:
    print("unreachable")
"""


def tomllib_catalog_names() -> list[str]:
    """Names of the packaged catalog's models (what a plain `fetch` installs)."""
    import tomllib

    from hubless_fetcher.constants import PACKAGED_CATALOG

    data = tomllib.loads(Path(PACKAGED_CATALOG).read_text(encoding="utf-8"))
    return [model["name"] for model in data["models"]]


def test_air_gap_bundle_through_the_fetcher_container(
    compose: dict[str, Any],
    shm_dirs: Callable[[str], Path],
    hub_mirror: HubMirror,
) -> None:
    """README's air-gap recipe with the fetcher container: export on the connected side,
    `docker compose run --rm -v ...:/bundle:ro fetcher import /bundle/...` with no network."""
    service = compose["services"]["fetcher"]
    dockerfile = parse_dockerfile(REPO / "Dockerfile.fetcher")
    connected = {"models": shm_dirs("connected"), "out": shm_dirs("out")}
    shell = {"HF_ENDPOINT": hub_mirror.endpoint}

    def run(container: Container, argv: list[str], *, net: bool) -> None:
        command, env = container.sandboxed(argv, net=net)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"{argv}:\n{done.stdout}{done.stderr}"

    outside = Container(dockerfile, service, connected, shell, run_volumes=["out:/out"])
    run(outside, outside.argv, net=False)
    # Paths in arguments go through the mounts, as the container would see them.
    bundle = outside.host_path("/out/hubless-models.bundle")
    run(outside, [outside.argv[0], "export", bundle], net=False)
    assert Path(bundle).is_file() and Path(bundle).parent == connected["out"]

    # Inside the air gap: no HF_ENDPOINT, no network namespace route anywhere.
    inside_volumes = {"models": shm_dirs("airgapped"), "out": connected["out"]}
    airgapped = Container(dockerfile, service, inside_volumes, {}, run_volumes=["out:/bundle:ro"])
    assert "HF_ENDPOINT" not in airgapped.env
    bundle = airgapped.host_path("/bundle/hubless-models.bundle")
    run(airgapped, [airgapped.argv[0], "import", bundle], net=True)
    run(airgapped, [airgapped.argv[0], "verify", "--deep"], net=True)
    # A plain `fetch` (what `docker compose up` would run) finds everything installed and
    # needs no network either.
    run(airgapped, airgapped.argv, net=True)
    from hubless_fetcher.manifest import Manifest

    imported = Manifest.load(inside_volumes["models"]).models
    assert sorted(imported) == sorted(tomllib_catalog_names())
