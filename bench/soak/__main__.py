"""``make soak``: load and fault figures of a real ``hubless-serve`` and ``hubless-fetch``.

    python -m bench.soak [--quick] [--duration S] [--clients N] [--fetch-kills N]
                         [--grace-period S] [--scenario NAME,...] [--json PATH] [--keep]

Sets up as ``scripts/demo.py`` does, all on 127.0.0.1: the fake hub (``hubless_fakehub``)
serves the real all-MiniLM-L6-v2 and tiny random-weight stand-ins of the other catalog
models; the real ``hubless-fetch fetch`` fills a temporary volume; the real ``hubless-serve``
serves it with ``--metrics-port`` (``hubless_queue_depth`` is read back from ``/metrics``).
Scenarios (each prints its tables and a PASS/FAIL line per criterion):

  mixed-load      200 clients for 60 s on every task: statuses, p50/p99 per task, server RSS
                  and threads before/after, queue depth back to 0
  deadline-storm  1,000 calls with 1-5 ms deadlines (100 in flight), then normal calls succeed
  cancel-storm    200 reply streams cancelled after their first chunk; generation stops
  sigterm         SIGTERM under load (50 clients): in-flight calls, exit code, time to exit
  fetch-kill      20 x kill -9 of hubless-fetch at a random moment; verify --deep must pass
  http-door       unauthenticated 30 MB bodies and 1,100 idle/half-sent HTTP connections beside
                  an authorised gRPC caller, TLS + tokens, ulimit -n 1024 (bench/hostile_http.py)

Modules of ``bench.soak``: ``env`` (fake hub, fetcher, server process, ``/metrics``,
``/proc``), ``calls`` (one call of each task), ``checks`` (shared checks), ``load`` (1, 2),
``cancel`` (3), ``sigterm`` (4), ``fetch`` (5), ``http_door`` (6), ``scenario`` (tables,
JSON).

``--quick`` runs every scenario at about 1/10 of its scale. Not a test and not in CI; exit
status 1 when any criterion fails. Writes JSON and markdown (``--json``, default
``bench/results/soak.json`` and ``soak.md``; ``bench/.logs/quick/`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

BENCH_DIR = Path(__file__).resolve().parents[1]
# Nothing in this process may reach the real hub (building the tiny models reads local files).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from hubless_fakehub import procfs  # noqa: E402

from ..report import now_utc  # noqa: E402
from .env import (  # noqa: E402
    REPO_ROOT,
    ServerProc,
    hub_mirror,
    run_fetcher,
    start_server,
    stop_server,
)
from .scenario import Scenario  # noqa: E402

SERVER_LOG = BENCH_DIR / ".logs" / "soak-server.log"
SCENARIOS = [
    "mixed-load",
    "deadline-storm",
    "cancel-storm",
    "sigterm",
    "fetch-kill",
    "http-door",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="every scenario at ~1/10 scale")
    p.add_argument("--duration", type=float, help="mixed load seconds (60; quick 6)")
    p.add_argument("--clients", type=int, help="mixed load clients (200; quick 20)")
    p.add_argument("--deadline-calls", type=int, help="deadline storm calls (1000; quick 100)")
    p.add_argument("--cancel-streams", type=int, help="cancel storm streams (200; quick 20)")
    p.add_argument("--sigterm-clients", type=int, help="clients during SIGTERM (50; quick 5)")
    p.add_argument("--fetch-kills", type=int, help="kill -9 runs of the fetcher (20; quick 2)")
    p.add_argument("--grace-period", type=float, default=10.0, help="server --grace-period")
    p.add_argument("--call-timeout", type=float, default=30.0, help="deadline of load calls, s")
    p.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    p.add_argument("--scenario", default="all", help=f"comma list of {', '.join(SCENARIOS)}")
    p.add_argument("--json", type=Path, help="JSON output (markdown beside it, .md)")
    p.add_argument("--keep", action="store_true", help="keep the temporary volume and logs")
    args = p.parse_args(argv)
    q = args.quick
    defaults = {
        "duration": 6.0 if q else 60.0,
        "clients": 20 if q else 200,
        "deadline_calls": 100 if q else 1000,
        "cancel_streams": 20 if q else 200,
        "sigterm_clients": 5 if q else 50,
        "fetch_kills": 2 if q else 20,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.json is None:
        out_dir = BENCH_DIR / (".logs/quick" if q else "results")
        args.json = out_dir / "soak.json"
    names = SCENARIOS if args.scenario == "all" else args.scenario.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {unknown}; choose from {SCENARIOS}")
    args.scenarios = names
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
        return out.stdout.rstrip()
    except OSError:
        return ""


def _uncommitted() -> str:
    """Which code under test differs from the commit (the figures are of the working tree)."""
    dirs = ("server", "fetcher", "volume", "clients", "tools")
    lines = _git("status", "--porcelain", "--", *dirs).splitlines()
    counts: dict[str, int] = {}
    for line in lines:
        top = line[3:].split("/", 1)[0]
        counts[top] = counts.get(top, 0) + 1
    return ", ".join(f"{n} files under {d}/" for d, n in sorted(counts.items())) or "none"


def _emit(sc: Scenario, results: list[Scenario]) -> None:
    results.append(sc)
    print("\n" + sc.markdown(), flush=True)


def _guarded(name: str, title: str, fn: Callable[[], Scenario], results: list[Scenario]) -> None:
    """Run one scenario; an exception is recorded as its failure, the others still run."""
    try:
        sc = fn()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        sc = Scenario(name, title, error=f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    _emit(sc, results)


def _server_scenario(name: str, server: ServerProc, args: argparse.Namespace) -> Scenario:
    """Run one of the scenarios against ``server``."""
    from .cancel import cancel_storm
    from .load import deadline_storm, mixed_load
    from .sigterm import sigterm_under_load

    if name == "mixed-load":
        coro = mixed_load(
            server,
            clients=args.clients,
            duration_s=args.duration,
            timeout_s=args.call_timeout,
            seed=args.seed,
        )
    elif name == "deadline-storm":
        calls = args.deadline_calls
        in_flight = max(1, min(100, calls // 10))
        coro = deadline_storm(server, calls=calls, in_flight=in_flight, seed=args.seed)
    elif name == "cancel-storm":
        n = args.cancel_streams
        coro = cancel_storm(server, streams=n, in_flight=max(1, min(50, n // 4)), new_tokens=100)
    else:
        coro = sigterm_under_load(
            server,
            clients=args.sigterm_clients,
            load_s=2.0 if args.quick else 5.0,
            timeout_s=args.call_timeout,
            margin_s=5.0,
            seed=args.seed,
        )
    return asyncio.run(coro)


def run(args: argparse.Namespace, work: Path) -> list[Scenario]:
    from .fetch import fetch_kills
    from .http_door import http_door

    results: list[Scenario] = []
    volume = work / "models"
    server_names = [n for n in args.scenarios if n not in ("fetch-kill", "http-door")]
    if server_names:
        print(f"== fetching the catalog from the fake hub into {volume}", flush=True)
        with hub_mirror() as mirror:
            t0 = time.monotonic()
            result = run_fetcher("fetch", volume, work / "fetch-hf-home", endpoint=mirror.endpoint)
        if result.returncode != 0:
            raise RuntimeError(f"hubless-fetch fetch exited {result.returncode}:\n{result.stderr}")
        print(f"   fetched in {time.monotonic() - t0:.1f} s", flush=True)
        server = None
        try:
            for name in server_names:
                if server is None or server.proc.poll() is not None:
                    print("== starting hubless-serve", flush=True)
                    server = start_server(volume, work, grace_period=args.grace_period)
                    print(f"   serving on {server.target}, /metrics on :{server.metrics_port}")
                print(f"== {name}", flush=True)
                fn = functools.partial(_server_scenario, name, server, args)
                _guarded(name, name, fn, results)
        finally:
            if server is not None:
                stop_server(server)
                SERVER_LOG.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(server.log_path, SERVER_LOG)
                print(f"   server log: {SERVER_LOG}", flush=True)
    if "fetch-kill" in args.scenarios:
        print("== fetch-kill", flush=True)
        with hub_mirror() as mirror:
            _guarded(
                "fetch-kill",
                "5. kill -9 of the fetcher",
                lambda: fetch_kills(mirror, work, runs=args.fetch_kills, seed=args.seed),
                results,
            )
    if "http-door" in args.scenarios:
        print("== http-door", flush=True)
        _guarded(
            "http-door",
            "6. hostile clients at the HTTP door",
            lambda: http_door(args.quick),
            results,
        )
    return results


def write_results(args: argparse.Namespace, header: dict, results: list[Scenario]) -> None:
    passed = all(sc.passed for sc in results)
    data = {**header, "passed": passed, "scenarios": [sc.to_json() for sc in results]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        f"## Soak, {header['started']}, {header['cpu']}, {header['cores']} cores",
        "",
        f"`{' '.join(['python -m bench.soak', *header['argv']])}` at commit {header['commit']} "
        f"(uncommitted changes: {header['uncommitted_changes']}); load average at start "
        f"{header['loadavg_at_start']}; took {header['took_s']:.0f} s. "
        f"Overall: **{'PASS' if passed else 'FAIL'}**.",
        "",
        *(sc.markdown() for sc in results),
    ]
    md = args.json.with_suffix(".md")
    md.write_text("\n".join(lines).rstrip() + "\n")
    print(f"\nwrote {args.json} and {md}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    (REPO_ROOT / ".cache").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hubless-soak-", dir=REPO_ROOT / ".cache"))
    header = {
        "started": now_utc(),
        "cpu": procfs.cpu_model(),
        "cores": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": _uncommitted(),
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    print(f"soak on {header['cpu']} ({header['cores']} cores), work dir {work}", flush=True)
    t0 = time.monotonic()
    results: list[Scenario] = []
    try:
        results = run(args, work)
    except KeyboardInterrupt:
        print("\nsoak interrupted; everything stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        traceback.print_exc()
        print(f"\nsoak FAILED to set up: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    header["took_s"] = round(time.monotonic() - t0, 1)
    write_results(args, header, results)
    failed = [sc.name for sc in results if not sc.passed]
    print("soak " + ("FAILED: " + ", ".join(failed) if failed else "PASSED: every criterion held"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
