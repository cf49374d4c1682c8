"""``--assert-no-egress`` with no route at all: in a network namespace that has only loopback
(``unshare --net``), the check of a hub given by address and of one given by name both pass
(``hubless_egress_reachable`` 0, whole-server health not held back). Needs root and iproute2.

The hubs are reserved names and addresses that lead nowhere even outside the namespace: the
documentation network 192.0.2.0/24 (RFC 5737, never routed) and the ``.invalid`` top-level
domain (RFC 2606, never resolves); the script first checks that loopback is the only
interface, so no packet can leave the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.e2e import procs

pytestmark = pytest.mark.e2e

HUBS = ("https://192.0.2.1", "http://hub.hubless.invalid:8080")

SCRIPT = """
import asyncio, json, socket, sys
from hubless_server.observability import metrics
from hubless_server.observability.egress import EgressCheck

interfaces = [name for _, name in socket.if_nameindex()]
if interfaces != ["lo"]:
    sys.exit(f"not a loopback-only namespace: {interfaces}")

async def check(endpoint):
    egress = EgressCheck("refuse", 0, endpoint)
    found = await egress.check()
    metric = metrics.REGISTRY.get_sample_value(
        "hubless_egress_reachable", {"target": str(egress.target)}
    )
    return {
        "endpoint": endpoint,
        "reachable": found.reachable,
        "refusing": egress.refusing,
        "metric": metric,
        "failures": list(found.failures),
    }

checks = [asyncio.run(check(endpoint)) for endpoint in sys.argv[1:]]
print(json.dumps({"interfaces": interfaces, "checks": checks}))
"""


def test_no_route_passes() -> None:
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if not (unshare and ip) or os.geteuid() != 0:
        pytest.skip("needs root, util-linux `unshare` and iproute2 `ip`")
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    script = 'ip link set lo up && exec "$@"'
    proc = subprocess.run(
        [unshare, "--net", "sh", "-c", script, "sh", sys.executable, "-c", SCRIPT, *HUBS],
        cwd=procs.REPO_ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(procs.REPO_ROOT), *pythonpath])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["interfaces"] == ["lo"]
    by_address, by_name = seen["checks"]
    for check in (by_address, by_name):
        assert check["reachable"] is False and check["refusing"] is False
        assert check["metric"] == 0
    assert by_address["failures"] == ["TCP connection to 192.0.2.1:443: Network is unreachable"]
    assert len(by_name["failures"]) == 1
    assert by_name["failures"][0].startswith("DNS lookup of hub.hubless.invalid: ")
