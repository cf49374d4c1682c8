"""No network at all: the server runs in a network namespace that has only loopback, on a
volume bind-mounted read-only, and answers every RPC. Needs root (``unshare``) and iproute2."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hubless_fakehub.tiny import load_catalog
from tests.e2e import procs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_server_answers_every_rpc_with_only_loopback(
    fetch_volume: Callable[..., Path], tmp_path: Path
) -> None:
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    assert unshare and ip, "needs util-linux `unshare` and iproute2 `ip` (apt-get install iproute2)"
    assert os.geteuid() == 0, "needs root for `unshare --net --mount` (run the suite as root)"
    volume = fetch_volume()
    quoted = shlex.quote(str(volume))
    script = " && ".join(
        [
            "ip link set lo up",
            f"mount --bind {quoted} {quoted}",
            f"mount -o remount,bind,ro {quoted} {quoted}",
            shlex.join(
                [sys.executable, "-m", "tests.e2e.netns_check", str(volume), str(tmp_path / "srv")]
            ),
        ]
    )
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    proc = subprocess.run(
        [unshare, "--net", "--mount", "--propagation", "private", "sh", "-c", script],
        cwd=procs.REPO_ROOT,
        # The repository first (tests.e2e), then whatever this run imports hubless from.
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(procs.REPO_ROOT), *pythonpath])},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["links"] == ["lo"]
    assert seen["outside"] == ""
    assert seen["volume_writable"] is False and seen["volume_write_error"] == "EROFS"
    assert seen["models_ready"] == sorted(m.name for m in load_catalog().models)
    assert seen["health"] == "SERVING"
    assert seen["reply_model"] == "dialogpt-medium"
    assert seen["non_loopback_remotes"] == []
    assert seen["embed_dimension"] > 0 and seen["summary_tokens"] > 0
    assert seen["stream_finish"] in ("stop", "length")
