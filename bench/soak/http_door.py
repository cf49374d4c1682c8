"""Soak scenario 6: hostile clients at the HTTP door beside authorised gRPC load.

Runs ``bench/hostile_http.py`` (its own ``hubless-serve`` with tokens, TLS, ``--http-port``
and ``--health-port`` under ``ulimit -n 1024``; see that script's docstring): unauthenticated
big bodies in a loop and 1,100 idle or half-sent connections while one authorised gRPC caller
embeds a text in a loop. Its PASS/FAIL checks become this scenario's criteria; ``--quick``
runs it at about a tenth of the scale (3 MB bodies for 3 s, 110 connections).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .scenario import Scenario

SCRIPT = Path(__file__).resolve().parents[1] / "hostile_http.py"


def http_door(quick: bool) -> Scenario:
    """Run the hostile-HTTP script once and report its checks and figures."""
    sc = Scenario("http-door", "6. hostile clients at the HTTP door beside gRPC load")
    scale = ["--body-mb", "3", "--body-seconds", "3", "--idle", "110", "--idle-window", "15"]
    args = scale if quick else []
    with tempfile.TemporaryDirectory(prefix="hubless-soak-http-") as tmp:
        out = Path(tmp) / "http-door.json"
        argv = [sys.executable, str(SCRIPT), *args, "--json", str(out)]
        sc.setup = f"`{' '.join(['python bench/hostile_http.py', *args])}`"
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        if not out.exists():
            sc.error = f"hostile_http.py exited {done.returncode}: {done.stderr[-800:]}"
            return sc
        data = json.loads(out.read_text())
    for what, passed in data["checks"].items():
        sc.check(what, passed, "see figures")
    big, held = data["big_bodies"], data["idle_connections"]
    sc.figures.update(
        {
            "big-body attempts": big["attempts"],
            "refusal p50 (ms)": big["refusal_p50_ms"],
            "refusal max (ms)": big["refusal_max_ms"],
            "caller p50 idle / during bodies (ms)": (
                f"{data['idle_caller']['p50_ms']:.1f} / {big['caller']['p50_ms']:.1f}"
            ),
            "RSS before / after bodies (MiB)": (
                f"{big['rss_mib_before']:.0f} / {big['rss_mib_after']:.0f}"
            ),
            "idle connections closed by the server": held.get("closed_share"),
            "server log tracebacks": data["server_log_tracebacks"],
        }
    )
    sc.data = data
    return sc
