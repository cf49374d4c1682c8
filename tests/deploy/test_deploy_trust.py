"""deploy/: the signature keys where hubless is deployed. The public key reaches the server as a
read-only mount named by HUBLESS_TRUSTED_KEY (compose: docker-compose.trust.yml, a file
secret; kustomize: the component trusted-key, the ConfigMap hubless-trusted-key); the private
key reaches the signing step alone (compose: the sign service of docker-compose.sign.yml;
kustomize: the component signing-job, the Secret hubless-signing-key mounted into the fetch
Job's last container, which runs `hubless-fetch sign` after fetch and optimize). Rendered with
the real Compose CLI and kustomize (no engine, no cluster)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from hubless_fetcher import settings as fetcher_settings
from hubless_server.core.flags import load_settings
from tests.deploy.deploy_helpers import CUSTOM_KINDS, K8S, REPO, compose_env, short_volume, tool
from tests.deploy.test_deploy_compose import COMPOSE, SIGN, TLS, TRUST, compose_config
from tests.deploy.test_deploy_k8s import K8S_VERSION, one, server_container
from tests.deploy.test_deploy_k8s_safety import kustomize_own

Doc = dict[str, Any]
SIGNING_SECRET = "hubless-signing-key"
TRUSTED_CONFIGMAP = "hubless-trusted-key"
DOCS = REPO / "docs" / "air-gap.md"


def render(overlay: str, *components: str) -> list[Doc]:
    """``kubectl kustomize`` of ``overlay`` with ``components`` (paths under deploy/k8s, in
    this order), as a kustomization of one's own lists them."""
    with tempfile.TemporaryDirectory() as tmp:
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(K8S / "overlays" / overlay, tmp)],
            "components": [os.path.relpath(K8S / c, tmp) for c in components],
        }
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        result = subprocess.run(
            [tool("kubectl"), "kustomize", tmp], capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


SIGNED_STACK = (
    "overlays/shared-cache/fetch-cron",
    "components/servicemonitor",
    "components/tls-auth",
    "components/signing-job",
    "components/trusted-key",
)


@pytest.fixture(scope="module")
def signed() -> list[Doc]:
    """The shared cache with the nightly refresh, signing, the trusted key and TLS."""
    return render("shared-cache", *SIGNED_STACK)


def pod_specs(docs: list[Doc]) -> dict[str, Doc]:
    """Every pod template by ``Kind/name``."""
    specs = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            specs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            specs[f"CronJob/{doc['metadata']['name']}"] = template
    return specs


def mount_of(container: Doc, path: str) -> Doc:
    """The volume mount holding ``path``."""
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    return mount


def volume(spec: Doc, name: str) -> Doc:
    (found,) = [v for v in spec["volumes"] if v["name"] == name]
    return found


# ---- Kubernetes ------------------------------------------------------------------------


def test_the_signed_stack_validates_strictly(signed: list[Doc]) -> None:
    for doc in signed:
        if (doc["apiVersion"], doc["kind"]) not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["shared-cache", "init-container"])
def test_the_server_reads_the_public_key_from_a_read_only_config_map(overlay: str) -> None:
    docs = render(overlay, "components/trusted-key")
    deployment = one(docs, "Deployment", "hubless-server")
    server = server_container(deployment)
    env = {e["name"]: e for e in server["env"]}
    key = env["HUBLESS_TRUSTED_KEY"]["value"]
    mount = mount_of(server, key)
    assert mount["readOnly"] is True and "subPath" not in mount  # replaced keys arrive
    source = volume(deployment["spec"]["template"]["spec"], mount["name"])["configMap"]
    assert source["name"] == TRUSTED_CONFIGMAP
    assert source["items"] == [{"key": Path(key).name, "path": Path(key).name}]
    assert not source.get("optional"), "no key, no start: never serve unchecked by mistake"
    assert not [d for d in docs if d["kind"] in ("ConfigMap", "Secret") and "trusted" in str(d)]
    environ = {e["name"]: e["value"] for e in server["env"] if "value" in e}
    assert load_settings([], environ=environ).trusted_key == Path(key)


@pytest.mark.parametrize("kind_name", ["Job/hubless-fetch", "CronJob/hubless-fetch-refresh"])
def test_the_fetch_job_signs_after_fetch_and_optimize(signed: list[Doc], kind_name: str) -> None:
    spec = pod_specs(signed)[kind_name]
    assert [c["name"] for c in spec["initContainers"]] == ["fetch", "optimize"]
    (sign,) = spec["containers"]
    fetch = spec["initContainers"][0]
    # the fetch container's image as the kustomizations set it (the Job: the overlay's tag)
    assert sign["name"] == "sign" and sign["image"] == fetch["image"]
    assert fetch["image"].startswith("hubless-fetcher")
    if kind_name.startswith("Job/"):
        assert sign["image"] == "hubless-fetcher:0.1.0"
    assert sign["args"][:2] == ["sign", "--key"]
    key = sign["args"][2]
    mount = mount_of(sign, key)
    assert mount["readOnly"] is True
    source = volume(spec, mount["name"])["secret"]
    assert source["secretName"] == SIGNING_SECRET
    assert source["items"] == [{"key": Path(key).name, "path": Path(key).name}]
    assert source["defaultMode"] & 0o007 == 0, "not readable by other users"
    models = {m["name"]: m for m in sign["volumeMounts"]}["models"]
    assert models["mountPath"] == "/models" and not models.get("readOnly")  # writes signatures
    assert sign["securityContext"] == fetch["securityContext"]
    assert sign["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in sign["env"]}
    assert "HF_TOKEN" not in env and "HF_ENDPOINT" not in env
    assert str(fetcher_settings.Settings.from_env(env).models_dir) == "/models"


def test_only_the_sign_container_sees_the_signing_key(signed: list[Doc]) -> None:
    """The Secret is a volume of the fetch pods only, mounted by their sign container alone:
    not by fetch or optimize, not by the servers; and no resource carries the key itself."""
    seen = []
    for where, spec in pod_specs(signed).items():
        key_volumes = {
            v["name"]
            for v in spec["volumes"]
            if v.get("secret", {}).get("secretName") == SIGNING_SECRET
        }
        for container in spec.get("initContainers", []) + spec["containers"]:
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            if mounts & key_volumes:
                seen.append(f"{where}/{container['name']}")
            assert not [e for e in container.get("env", []) if "SIGNING" in e["name"]]
        if where.startswith("Deployment/"):
            assert SIGNING_SECRET not in str(spec)
    assert sorted(seen) == ["CronJob/hubless-fetch-refresh/sign", "Job/hubless-fetch/sign"]
    assert not [d for d in signed if d["kind"] == "Secret"], "no secret in the manifests"


def test_signing_is_a_no_op_without_a_fetch_job() -> None:
    docs = render("init-container", "components/signing-job")
    assert SIGNING_SECRET not in yaml.safe_dump_all(docs)
    assert docs == render("init-container")


# ---- Compose ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def composed() -> dict[str, Any]:
    return compose_config(COMPOSE, SIGN, TRUST, TLS)


def test_compose_gives_the_server_the_public_key_as_a_file_secret(
    composed: dict[str, Any],
) -> None:
    server = composed["services"]["server"]
    key = server["environment"]["HUBLESS_TRUSTED_KEY"]
    (secret,) = [s for s in server["secrets"] if s["target"] == key]
    assert composed["secrets"][secret["source"]]["file"] == str(
        REPO / "deploy" / "secrets" / "trusted-key.pem"
    )
    assert [
        short_volume(v)
        for v in yaml.safe_load(COMPOSE.read_text())["services"]["server"]["volumes"]
    ] == [("models", "/models", "ro")]
    override = yaml.safe_load(TRUST.read_text())
    assert compose_env(override["services"]["server"]) == {"HUBLESS_TRUSTED_KEY": key}
    moved = compose_config(COMPOSE, TRUST, HUBLESS_TRUSTED_KEY_FILE="/etc/keys/pub.pem")
    assert moved["secrets"][secret["source"]]["file"] == "/etc/keys/pub.pem"


def test_compose_signs_after_optimize_with_a_key_only_the_sign_service_has(
    composed: dict[str, Any],
) -> None:
    services = composed["services"]
    sign = services["sign"]
    assert sign["command"][:2] == ["sign", "--key"]
    (secret,) = sign["secrets"]
    assert secret["target"] == sign["command"][2]
    assert composed["secrets"][secret["source"]]["file"] == str(
        REPO / "deploy" / "secrets" / "signing-key.pem"
    )
    for name, service in services.items():
        if name != "sign":
            assert secret["source"] not in {s["source"] for s in service.get("secrets", [])}
    assert sign["depends_on"]["optimize"]["condition"] == "service_completed_successfully"
    assert services["server"]["depends_on"]["sign"]["condition"] == (
        "service_completed_successfully"
    )
    assert sign["image"] == services["fetcher"]["image"]
    assert [(v["source"], v["target"], v.get("read_only", False)) for v in sign["volumes"]] == [
        ("models", "/models", False)
    ]
    assert sign["read_only"] is True and sign["cap_drop"] == ["ALL"]
    assert sign["security_opt"] == ["no-new-privileges:true"] and sign["restart"] == "no"
    assert "HF_TOKEN" not in sign["environment"] and "HF_ENDPOINT" not in sign["environment"]


def test_without_the_sign_override_the_server_does_not_wait_for_signing() -> None:
    config = compose_config(COMPOSE, TRUST)
    assert set(config["services"]["server"]["depends_on"]) == {"optimize"}
    assert "sign" not in config["services"]


# ---- docs ------------------------------------------------------------------------------


def test_the_docs_name_what_the_manifests_mount() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name in (
        SIGNING_SECRET,
        TRUSTED_CONFIGMAP,
        "components/trusted-key",
        "components/signing-job",
        "docker-compose.trust.yml",
        "docker-compose.sign.yml",
        "deploy/secrets/trusted-key.pem",
        "deploy/secrets/signing-key.pem",
    ):
        assert name in text, name
    assert "--from-file=trusted-key.pem=" in text and "--from-file=key.pem=" in text


def test_the_documented_kustomization_signs_and_trusts() -> None:
    """docs/air-gap.md's kustomization builds as written, beside the overlays: every
    container (the sign ones too) from the registry, the Job and the CronJob signing, the
    server trusting the key."""
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    (example,) = [yaml.safe_load(b) for b in blocks if "kind: Kustomization" in b]
    docs = kustomize_own(example)
    specs = pod_specs(docs)
    images = [
        c["image"]
        for spec in specs.values()
        for c in spec.get("initContainers", []) + spec["containers"]
    ]
    assert images and all(i.startswith("registry.example.com/hubless-") for i in images), images
    for where in ("Job/hubless-fetch", "CronJob/hubless-fetch-refresh"):
        assert [c["name"] for c in specs[where]["containers"]] == ["sign"], where
    server = server_container(one(docs, "Deployment", "hubless-server"))
    assert "HUBLESS_TRUSTED_KEY" in {e["name"] for e in server["env"]}
