"""Run what a container would run, as a process in Linux namespaces (no Docker engine).

A :class:`Container` is read from a Dockerfile plus a compose service or a Kubernetes
container spec: argv (entrypoint/command/args), environment, mounts and isolation. Its
:meth:`Container.sandboxed` command line gives the process a private mount namespace with its
read-only volumes bind-mounted read-only, a fresh tmpfs on ``/tmp``, a read-only root when
the container has one, and optionally a network namespace with nothing but loopback.

Needs root, ``unshare``/``nsenter``/``mount`` (util-linux) and ``ip`` (iproute2). Deliberate
differences from a real container: volumes live at temporary host paths (environment values
that name a mount target are rewritten to them), the image's venv is this repository's
``.venv``, and processes keep uid 0 (the interpreter under /root is not readable by the
images' uid 10001).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.deploy.deploy_helpers import Dockerfile, compose_env, short_volume

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
# The PATH of the python:*-slim base images, which the Dockerfiles extend with $PATH.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Run by /bin/sh as the container "runtime". Arguments: directories to mount read-only, "--",
# directories to keep writable, "--", the command.
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
    if [ -n "$HUBLESS_SANDBOX_KEEP" ]; then
        # This checkout (code and .venv) lives under /tmp: keep it visible through the tmpfs.
        keep=$(mktemp -d /dev/shm/hubless-keep.XXXXXX)
        mount --bind /tmp "$keep"
    fi
    mount -t tmpfs -o size=256m,mode=1777 tmpfs /tmp
    if [ -n "$HUBLESS_SANDBOX_KEEP" ]; then
        mkdir -p "$HUBLESS_SANDBOX_KEEP"
        mount --bind "$keep${HUBLESS_SANDBOX_KEEP#/tmp}" "$HUBLESS_SANDBOX_KEEP"
        umount "$keep"
        rmdir "$keep"
    fi
fi
if [ "$HUBLESS_SANDBOX_READ_ONLY" = 1 ]; then
    mount -o remount,bind,ro /
fi
if [ "$HUBLESS_SANDBOX_NET" = 1 ]; then
    ip link set lo up
fi
unset HUBLESS_SANDBOX_TMPFS HUBLESS_SANDBOX_READ_ONLY HUBLESS_SANDBOX_NET HUBLESS_SANDBOX_KEEP
exec "$@"
"""


def image_env(dockerfile: Dockerfile) -> dict[str, str]:
    """The final stage's ``ENV``, with ``$PATH`` and the image's venv mapped to this machine."""
    final = dockerfile.final
    env = dict(final.env())
    venvs = [i.args.split()[-1] for i in final.all("COPY") if "--from=" in i.args]
    path = env.get("PATH", BASE_PATH).replace("${PATH}", BASE_PATH).replace("$PATH", BASE_PATH)
    for venv in venvs:
        path = path.replace(f"{venv.rstrip('/')}/bin", str(VENV_BIN))
    env["PATH"] = path
    return env


@dataclass
class Container:
    """What one container runs and how it is isolated."""

    argv: list[str]
    env: dict[str, str]
    targets: dict[str, Path] = field(default_factory=dict)
    ro_dirs: list[Path] = field(default_factory=list)
    rw_dirs: list[Path] = field(default_factory=list)
    read_only_root: bool = False
    tmpfs: bool = False

    def mount(self, target: str, source: Path, *, read_only: bool) -> None:
        self.targets[target] = source
        (self.ro_dirs if read_only else self.rw_dirs).append(source)

    def _rewrite_env(self) -> None:
        """Values naming a mount target, or a path under one (``HUBLESS_CATALOG``), point to
        the host folder mounted there."""
        self.env = {k: self.host_path(v) for k, v in self.env.items()}

    @classmethod
    def from_compose(
        cls,
        dockerfile: Dockerfile,
        service: Mapping[str, Any],
        volumes: Mapping[str, Path],
        shell_env: Mapping[str, str],
        run_volumes: Sequence[str] = (),
    ) -> Container:
        """A compose service (``run_volumes``: extra ``-v`` of ``docker compose run``)."""
        final = dockerfile.final
        entrypoint = final.exec_form("ENTRYPOINT") or []
        command = service.get("command", final.exec_form("CMD") or [])
        env = image_env(dockerfile)
        for key, value in compose_env(dict(service)).items():
            if value is not None:
                env[key] = value
            elif key in shell_env:  # passed through from the shell that runs compose
                env[key] = shell_env[key]
            else:
                env.pop(key, None)
        container = cls(
            argv=entrypoint + list(command),
            env=env,
            read_only_root=bool(service.get("read_only")),
            tmpfs=any(str(t).split(":")[0] == "/tmp" for t in service.get("tmpfs", [])),
        )
        for spec in [*service.get("volumes", []), *run_volumes]:
            source, target, mode = short_volume(spec)
            container.mount(target, volumes[source], read_only=mode == "ro")
        container._rewrite_env()
        return container

    @classmethod
    def from_k8s(
        cls,
        dockerfile: Dockerfile,
        spec: Mapping[str, Any],
        volumes: Mapping[str, Path],
        config_maps: Mapping[str, Mapping[str, str]],
        secrets: Mapping[str, Mapping[str, str]],
    ) -> Container:
        """A Kubernetes container spec. ``volumes``: pod volume name -> host directory; an
        ``emptyDir`` mounted on /tmp becomes the tmpfs. ``command`` replaces the image's
        ENTRYPOINT and ``args`` its CMD, as the kubelet does."""
        final = dockerfile.final
        if "command" in spec:
            argv = list(spec["command"]) + list(spec.get("args", []))
        else:
            argv = (final.exec_form("ENTRYPOINT") or []) + list(
                spec.get("args", final.exec_form("CMD") or [])
            )
        env = image_env(dockerfile)
        for item in spec.get("env", []):
            value = _k8s_value(item, spec, config_maps, secrets)
            if value is None:
                env.pop(item["name"], None)
            else:
                env[item["name"]] = value
        context = spec.get("securityContext", {})
        container = cls(argv=argv, env=env, read_only_root=context["readOnlyRootFilesystem"])
        for mount in spec.get("volumeMounts", []):
            if mount["mountPath"] == "/tmp":
                container.tmpfs = True
                continue
            container.mount(
                mount["mountPath"], volumes[mount["name"]], read_only=bool(mount.get("readOnly"))
            )
        container._rewrite_env()
        return container

    def host_path(self, path: str) -> str:
        """Where a path inside the container is on this machine (through the mounts)."""
        for target, source in self.targets.items():
            if path == target or path.startswith(target.rstrip("/") + "/"):
                return str(source) + path[len(target.rstrip("/")) :]
        return path

    def sandboxed(
        self, argv: Sequence[str] | None = None, *, net: bool
    ) -> tuple[list[str], dict[str, str]]:
        """``unshare`` command line and environment that run ``argv`` (default: the
        container's own) as in the container; ``net``: a new, loopback-only network."""
        outer = ["unshare", "--mount"] + (["--net"] if net else [])
        script = ["/bin/sh", "-c", SANDBOX, "sandbox"]
        dirs = [str(d) for d in self.ro_dirs] + ["--"] + [str(d) for d in self.rw_dirs]
        env = dict(self.env)
        env["HUBLESS_SANDBOX_TMPFS"] = "1" if self.tmpfs else "0"
        env["HUBLESS_SANDBOX_READ_ONLY"] = "1" if self.read_only_root else "0"
        env["HUBLESS_SANDBOX_NET"] = "1" if net else "0"
        env["HUBLESS_SANDBOX_KEEP"] = str(REPO) if REPO.is_relative_to("/tmp") else ""
        return outer + script + dirs + ["--"] + list(argv or self.argv), env

    def run(
        self, argv: Sequence[str] | None = None, *, net: bool, timeout: float = 240
    ) -> subprocess.CompletedProcess:
        """Run to completion in the sandbox."""
        command, env = self.sandboxed(argv, net=net)
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def _k8s_value(
    item: Mapping[str, Any],
    spec: Mapping[str, Any],
    config_maps: Mapping[str, Mapping[str, str]],
    secrets: Mapping[str, Mapping[str, str]],
) -> str | None:
    if "value" in item:
        return str(item["value"])
    source = item["valueFrom"]
    if "resourceFieldRef" in source:
        ref = source["resourceFieldRef"]
        assert ref["resource"] == "limits.cpu" and str(ref.get("divisor", "1")) == "1"
        return str(int(spec["resources"]["limits"]["cpu"]))
    kind, store = (
        ("configMapKeyRef", config_maps)
        if "configMapKeyRef" in source
        else ("secretKeyRef", secrets)
    )
    ref = source[kind]
    value = store.get(ref["name"], {}).get(ref["key"])
    if value is None and not ref.get("optional"):
        raise AssertionError(f"{item['name']}: {ref['name']}/{ref['key']} is required")
    return value


def config_map_volumes(
    pod: Mapping[str, Any], config_maps: Mapping[str, Mapping[str, str]], root: Path
) -> dict[str, Path]:
    """The pod's ConfigMap volumes as the kubelet projects them: one folder per volume under
    ``root``, a file per key (``items`` are not used by the manifests). Returns volume name ->
    folder, to mount read-only."""
    folders: dict[str, Path] = {}
    for volume in pod.get("volumes", []):
        source = volume.get("configMap")
        if source is None:
            continue
        assert "items" not in source, volume
        folder = root / f"configmap-{volume['name']}"
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in config_maps[source["name"]].items():
            (folder / key).write_text(value, encoding="utf-8")
        folders[volume["name"]] = folder
    return folders


def inside(
    pid: int, argv: Sequence[str], env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """Run ``argv`` in the network and mount namespaces of process ``pid``."""
    return subprocess.run(
        ["nsenter", f"--target={pid}", "--net", "--mount", "--", *argv],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(container: Container, log_path: Path) -> subprocess.Popen:
    """Start the container's command in its sandbox with a new network namespace, and
    return once the process is in that namespace (never probe the host's ports by mistake)."""
    command, env = container.sandboxed(net=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while os.readlink(f"/proc/{process.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process, 0)
            raise AssertionError(f"sandbox did not start:\n{tail(log_path)}")
        time.sleep(0.05)
    return process


def wait_until(
    process: subprocess.Popen,
    probe: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    deadline_s: float,
) -> None:
    """Run ``probe`` inside the process's namespaces until it exits 0."""
    deadline = time.monotonic() + deadline_s
    while True:
        assert process.poll() is None, f"exited {process.returncode}:\n{tail(log_path)}"
        result = inside(process.pid, probe, env, timeout=30)
        if result.returncode == 0:
            return
        assert time.monotonic() < deadline, (
            f"{probe} never passed: {result.stderr}\n{tail(log_path)}"
        )
        time.sleep(1.0)


def stop(process: subprocess.Popen, grace: float) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds; the exit status (negative if killed)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def tail(log_path: Path, size: int = 4000) -> str:
    return log_path.read_text(errors="replace")[-size:] if log_path.exists() else ""


REACH = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("reachable")
except OSError:
    print("unreachable")
"""


def reachable(pid: int, host: str, port: int, env: Mapping[str, str]) -> bool:
    """Whether ``host:port`` accepts a TCP connection from inside ``pid``'s namespaces."""
    result = inside(pid, [sys.executable, "-c", REACH, host, str(port)], env, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip() == "reachable"


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``path`` with (size, mtime_ns), symlinks not followed."""
    out = {}
    for item in sorted(path.rglob("*")):
        stat = item.lstat()
        out[str(item.relative_to(path))] = (stat.st_size, stat.st_mtime_ns)
    return out


CLIENT_CALL = r"""
import json, sys
from hubless_client import Client

with Client(sys.argv[1], timeout=60, retries=False) as client:
    models = client.list_models()
    embedding = client.embed(["the models volume is read-only"])
    sentiment = client.analyze_sentiment(["I love this", "I hate this"])
print(json.dumps({
    "models": {m.name: str(m.state) for m in models},
    "dimension": embedding.dimension,
    "vectors": len(embedding.vectors),
    "sentiment": [r.label for r in sentiment.results],
}))
"""


def client_call(pid: int, target: str, env: Mapping[str, str]) -> dict[str, Any]:
    """A few real RPCs through ``hubless_client`` from inside ``pid``'s namespaces."""
    result = inside(pid, [sys.executable, "-c", CLIENT_CALL, target], env, timeout=120)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["vectors"] == 1 and answer["dimension"] > 0, answer
    assert len(answer["sentiment"]) == 2 and all(answer["sentiment"]), answer
    return answer


def catalog_names() -> list[str]:
    """Names of the packaged catalog's models (what a plain ``fetch`` installs)."""
    from hubless_volume import catalog_file

    data = tomllib.loads(catalog_file().read_text(encoding="utf-8"))
    return [model["name"] for model in data["models"]]
