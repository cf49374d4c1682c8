"""The compose contract, end to end, without a Docker engine.

What the two services of ``deploy/docker-compose.yml`` run is run here as processes (see
``sandbox.py``), with entrypoint, command, environment, mounts and isolation read from the
Dockerfiles and the compose file, so they cannot drift from what is tested:

1. the fetcher fills a fresh models volume from a local hub mirror, with a read-only root and
   a private tmpfs ``/tmp``;
2. the server starts on that volume mounted read-only, read-only root, in a network namespace
   with nothing but loopback (no route to the mirror or anywhere else);
3. inside that namespace a client call answers, and both the image's ``HEALTHCHECK`` command
   and the compose ``healthcheck`` report SERVING;
4. SIGTERM drains and stops the server within its grace period, exit status 0.

The air-gap recipe of the README runs the same way: export, then import and verify with no
network at all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from hubless_fakehub import HubMirror
from hubless_volume import Manifest
from tests.deploy import sandbox
from tests.deploy.deploy_helpers import DEPLOY, REPO, parse_dockerfile, seconds
from tests.deploy.sandbox import Container

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SERVE_DEADLINE = 240.0


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))


def test_compose_contract_end_to_end(
    compose: dict[str, Any],
    shm_dirs: Callable[[str], Path],
    hub_mirror: HubMirror,
    tmp_path: Path,
) -> None:
    models_volume = shm_dirs("models")
    volumes = {"models": models_volume}
    shell = {"HF_ENDPOINT": hub_mirror.endpoint}  # the operator's shell: a mirror, no token
    services = compose["services"]
    fetcher = Container.from_compose(
        parse_dockerfile(REPO / "Dockerfile.fetcher"), services["fetcher"], volumes, shell
    )
    server_dockerfile = parse_dockerfile(REPO / "Dockerfile.server")
    server = Container.from_compose(server_dockerfile, services["server"], volumes, shell)

    # 1. The one-shot fetcher, as `docker compose up` runs it first.
    assert fetcher.env["HF_ENDPOINT"] == hub_mirror.endpoint and "HF_TOKEN" not in fetcher.env
    assert fetcher.read_only_root and fetcher.tmpfs
    fetched = fetcher.run(net=False)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert sorted(Manifest.load(models_volume).models) == sorted(sandbox.catalog_names())
    verified = fetcher.run([fetcher.argv[0], "verify", "--deep"], net=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    before = sandbox.tree(models_volume)

    # 2. The server: read-only volume and root, loopback-only network namespace.
    assert server.ro_dirs == [models_volume] and not server.rw_dirs
    assert server.env["HF_HUB_OFFLINE"] == "1" and "HF_TOKEN" not in server.env
    assert server.read_only_root and server.tmpfs
    log_path = tmp_path / "server.log"
    process = sandbox.start(server, log_path)
    grace = float(server.env["HUBLESS_GRACE_PERIOD"])
    try:
        # 3. The image's HEALTHCHECK until SERVING, then compose's check and real calls.
        _, healthcheck = server_dockerfile.final.healthcheck()
        sandbox.wait_until(process, healthcheck, server.env, log_path, SERVE_DEADLINE)
        compose_check = services["server"]["healthcheck"]["test"]
        assert compose_check[0] == "CMD"
        probe = sandbox.inside(process.pid, compose_check[1:], server.env, timeout=30)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        answer = sandbox.client_call(
            process.pid, f"127.0.0.1:{server.env['HUBLESS_PORT']}", server.env
        )
        assert all(answer["models"][name] == "ready" for name in sandbox.catalog_names()), answer
        # The namespace really is offline: the mirror the fetcher used is unreachable.
        mirror = urlsplit(hub_mirror.endpoint)
        assert mirror.hostname and mirror.port
        assert not sandbox.reachable(process.pid, mirror.hostname, mirror.port, server.env)
        # 4. Graceful stop within the grace period (compose: SIGTERM, then SIGKILL).
        assert seconds(services["server"]["stop_grace_period"]) > grace
    finally:
        status = sandbox.stop(process, grace + 10)
    assert status == 0, sandbox.tail(log_path)
    assert sandbox.tree(models_volume) == before, "the server changed the read-only volume"


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

    def ok(done) -> None:
        assert done.returncode == 0, f"{done.args[-3:]}:\n{done.stdout}{done.stderr}"

    outside = Container.from_compose(dockerfile, service, connected, shell, ["out:/out"])
    ok(outside.run(net=False))
    # Paths in arguments go through the mounts, as the container would see them.
    bundle = outside.host_path("/out/hubless-models.bundle")
    ok(outside.run([outside.argv[0], "export", bundle], net=False))
    assert Path(bundle).is_file() and Path(bundle).parent == connected["out"]

    # Inside the air gap: no HF_ENDPOINT, and a network namespace with no route anywhere.
    inside_volumes = {"models": shm_dirs("airgapped"), "out": connected["out"]}
    airgapped = Container.from_compose(dockerfile, service, inside_volumes, {}, ["out:/bundle:ro"])
    assert "HF_ENDPOINT" not in airgapped.env
    bundle = airgapped.host_path("/bundle/hubless-models.bundle")
    ok(airgapped.run([airgapped.argv[0], "import", bundle], net=True))
    ok(airgapped.run([airgapped.argv[0], "verify", "--deep"], net=True))
    # A plain `fetch` (what `docker compose up` runs) finds everything installed: no network.
    ok(airgapped.run(net=True))
    imported = Manifest.load(inside_volumes["models"]).models
    assert sorted(imported) == sorted(sandbox.catalog_names())
