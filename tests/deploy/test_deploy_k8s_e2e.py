"""Both Kubernetes patterns, end to end, without a cluster.

The containers of the kustomize-built manifests run as processes (see ``sandbox.py``) in the
order the cluster would run them, each with its image's ENTRYPOINT/CMD replaced by the spec's
``command``/``args``, the image ENV plus the spec's ``env`` (ConfigMap, optional Secret and
``limits.cpu`` references resolved), its volume mounts (``readOnly`` honoured) and a read-only
root with an emptyDir ``/tmp``:

- init-container: the ``fetch`` init container fills the pod's emptyDir from the catalog of
  the mounted ``hubless-catalog`` ConfigMap, the ``optimize`` init container adds the ONNX
  artifacts of the encoder models, then the server container serves it read-only;
- shared-cache: the ``hubless-fetch`` Job fills the PVC (its ``fetch`` init container) and
  optimizes it (its container); the server pod's ``wait-for-models``
  init container (no network) passes; the server serves the PVC read-only, with no network at
  all as its egress-deny NetworkPolicy demands.

The native gRPC probes are grpc.health.v1 checks: ``hubless-health-probe`` makes the same
call on the probe's port and service. The operator's one edit is done as documented: the
ConfigMap's ``HF_ENDPOINT`` points at the (local) mirror; no token Secret exists.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hubless_fakehub import HubMirror
from hubless_volume import Manifest
from tests.deploy import sandbox
from tests.deploy.deploy_helpers import OVERLAYS, REPO, Dockerfile, parse_dockerfile
from tests.deploy.sandbox import Container
from tests.deploy.test_deploy_k8s import build, one

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SERVE_DEADLINE = 240.0
#: hubless-optimize exports every encoder of the tiny catalog (five models, ~15 s each).
OPTIMIZE_TIMEOUT = 900
GENERATION_TASKS = ("summarization", "conversation")


IMAGES = {"hubless-fetcher": "Dockerfile.fetcher", "hubless-server": "Dockerfile.server"}


def _image(spec: dict[str, Any]) -> Dockerfile:
    """The Dockerfile that builds a container spec's image (``name:tag``)."""
    return parse_dockerfile(REPO / IMAGES[spec["image"].split(":")[0]])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_pattern_end_to_end(
    overlay: str, shm_dirs: Callable[[str], Path], hub_mirror: HubMirror, tmp_path: Path
) -> None:
    docs = build(overlay)
    config_maps = {
        d["metadata"]["name"]: dict(d.get("data", {})) for d in docs if d["kind"] == "ConfigMap"
    }
    config_maps["hubless-fetcher"]["HF_ENDPOINT"] = hub_mirror.endpoint
    secrets: dict[str, dict[str, str]] = {}
    deployment = one(docs, "Deployment", "hubless-server")
    pod = deployment["spec"]["template"]["spec"]

    models = shm_dirs("models")  # the emptyDir, or the PVC
    volumes = {v["name"]: models for v in pod["volumes"] if v["name"] == "models"}
    volumes |= sandbox.config_map_volumes(pod, config_maps, shm_dirs("config-maps"))

    def container(spec: dict[str, Any]) -> Container:
        return Container.from_k8s(_image(spec), spec, volumes, config_maps, secrets)

    if overlay == "shared-cache":  # the Job: its fetch init container, then optimize
        job = one(docs, "Job", "hubless-fetch")["spec"]["template"]["spec"]
        for step in [*job["initContainers"], *job["containers"]]:
            done = container(step).run(net=False, timeout=OPTIMIZE_TIMEOUT)
            assert done.returncode == 0, f"{step['name']}:\n{done.stdout}{done.stderr}"
    for init in pod.get("initContainers", []):
        isolated = overlay == "shared-cache"  # egress denied: no network at all
        timeout = OPTIMIZE_TIMEOUT if init["name"] == "optimize" else 120
        done = container(init).run(net=isolated, timeout=timeout)
        assert done.returncode == 0, f"{init['name']}:\n{done.stdout}{done.stderr}"
    manifest = Manifest.load(models)
    assert sorted(manifest.models) == sorted(sandbox.catalog_names())
    encoders = [e for e in manifest.models.values() if e.task not in GENERATION_TASKS]
    assert encoders and all(e.artifact("onnx") for e in encoders), [
        (e.name, e.optimize_error) for e in encoders
    ]
    before = sandbox.tree(models)

    (server_spec,) = pod["containers"]
    server = container(server_spec)
    assert server.ro_dirs == [models] and not server.rw_dirs
    assert server.read_only_root and server.tmpfs
    assert server.env["HUBLESS_THREADS"] == str(int(server_spec["resources"]["limits"]["cpu"]))
    log_path = tmp_path / "server.log"
    process = sandbox.start(server, log_path)
    grace = pod["terminationGracePeriodSeconds"]
    try:
        for name in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc = server_spec[name]["grpc"]
            probe = [
                "hubless-health-probe",
                "--target",
                f"127.0.0.1:{grpc['port']}",
                "--service",
                grpc.get("service", ""),
                "--timeout",
                str(server_spec[name]["timeoutSeconds"]),
            ]
            deadline = SERVE_DEADLINE if name == "startupProbe" else 10
            sandbox.wait_until(process, probe, server.env, log_path, deadline)
        port = next(p["containerPort"] for p in server_spec["ports"] if p["name"] == "grpc")
        answer = sandbox.client_call(process.pid, f"127.0.0.1:{port}", server.env)
        assert all(answer["models"][name] == "ready" for name in sandbox.catalog_names()), answer
    finally:
        pre_stop = server_spec["lifecycle"]["preStop"]["sleep"]["seconds"]
        status = sandbox.stop(process, grace - pre_stop)
    assert status == 0, sandbox.tail(log_path)
    assert sandbox.tree(models) == before, "the server changed the read-only volume"
