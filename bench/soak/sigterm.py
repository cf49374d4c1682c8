"""Soak scenario 4: SIGTERM to ``hubless-serve`` under load: what happens to the calls in
flight, to the calls sent after the signal, and how long the server takes to exit.

The server drains in two steps (docs/server.md, "Draining"): for ``--drain-delay`` seconds
(read from its log line) it refuses new calls with UNAVAILABLE/SHUTTING_DOWN while the calls in
flight go on, then closes the listener and gives those ``--grace-period`` seconds."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import time

from .calls import TASKS, Recorder, by_status, status_table, statuses
from .checks import MAX_CALLS, check_no_unexpected, close_all, in_thread, open_channels
from .env import ServerProc
from .scenario import Scenario

# A call sent this shortly before SIGTERM may race the server's GOAWAY and be refused
# (UNAVAILABLE) without ever reaching a handler: the SIGTERM check leaves those out.
RACE_S = 0.05
# The server's log lines that open and close its drain window (hubless_server/app.py).
WINDOW_LINE = re.compile(r"refusing new RPCs \(UNAVAILABLE, SHUTTING_DOWN\) for ([0-9.]+) s")
CLOSE_LINE = "draining in-flight RPCs"
SHUTTING_DOWN = "UNAVAILABLE/SHUTTING_DOWN"


# ---- 4. SIGTERM under load ------------------------------------------------------------------


async def sigterm_under_load(
    server: ServerProc,
    *,
    clients: int,
    load_s: float,
    timeout_s: float,
    margin_s: float,
    seed: int,
) -> Scenario:
    grace = server.grace_period
    sc = Scenario(
        "sigterm",
        f"4. SIGTERM under load: {clients} clients, --grace-period {grace:g}",
        setup=(
            f"{clients} closed-loop clients on every task for {load_s:g} s, then SIGTERM to "
            "the server; clients keep starting calls for 0.5 s more. In flight = started "
            "before the signal and ended after it."
        ),
    )
    rec = Recorder()
    channels = open_channels(server.target, clients, timeout_s)
    state = {"new_calls": True}

    async def worker(i: int) -> None:
        rng = random.Random(seed * 7_919 + i)
        k = i
        while state["new_calls"] and len(rec.calls) < MAX_CALLS:
            call = await rec.run(channels[i % len(channels)], rng.choice(TASKS), k, timeout_s)
            if call.status != "OK":
                await asyncio.sleep(0.05)  # no busy loop against a stopped server
            k += 1

    workers = [asyncio.create_task(worker(i)) for i in range(clients)]
    await asyncio.sleep(load_s)
    t_sig, t_sig_wall = time.monotonic(), time.time()
    os.kill(server.pid, signal.SIGTERM)
    waiter = asyncio.create_task(in_thread(_wait_exit, server.proc, grace + margin_s + 30))
    await asyncio.sleep(0.5)
    state["new_calls"] = False
    code = await waiter
    t_exit = time.monotonic()
    await asyncio.gather(*workers)
    await close_all(channels)
    exit_s = t_exit - t_sig

    in_flight = [c for c in rec.calls if c.start < t_sig < c.end]
    old = [c for c in in_flight if c.start <= t_sig - RACE_S]
    after = [c for c in rec.calls if c.start >= t_sig]
    before = [c for c in rec.calls if c.end <= t_sig]
    groups = [
        ("ended before SIGTERM", before),
        ("in flight at SIGTERM", in_flight),
        (f"... of which sent >= {RACE_S * 1e3:.0f} ms before it", old),
        ("started after SIGTERM", after),
    ]
    labels = sorted({c.label for c in rec.calls})
    sc.table(
        "Calls by final status (client side):",
        ["calls", "total", *labels],
        [
            [name, len(cs), *(sum(c.label == lab for c in cs) for lab in labels)]
            for name, cs in groups
        ],
    )
    sc.table(
        "First message of each error status:",
        ["status/reason", "first message"],
        [[r[0], r[2]] for r in status_table(by_status(rec.calls), rec.examples) if r[2]]
        or [["—", ""]],
    )
    rows = []
    for label, n in by_status(after).items():
        mine = [c for c in after if c.label == label]
        sent = [(c.start - t_sig) * 1e3 for c in mine]
        ended = [(c.end - t_sig) * 1e3 for c in mine]
        tasks = ", ".join(sorted({c.task for c in mine}))
        rows.append([label, n, tasks, f"{min(sent):.0f}-{max(sent):.0f}",
                     f"{min(ended):.0f}-{max(ended):.0f}"])  # fmt: skip
    sc.table(
        "Calls started after SIGTERM, by status (times in ms after the signal):",
        ["status/reason", "calls", "tasks", "sent", "ended"],
        rows or [["—", 0, "", "", ""]],
    )
    last_ok = max((c.end for c in in_flight if c.status == "OK"), default=t_sig) - t_sig
    tracebacks = server.log_count("Traceback")
    stopped = server.log_time("server stopped")
    drained = stopped - t_sig_wall if stopped is not None else float("nan")
    delay = drain_delay(server)
    closed_wall = server.log_time(CLOSE_LINE)
    # When the listener closed, on the clients' clock (monotonic); unknown: never.
    closed = t_sig + (closed_wall - t_sig_wall) if closed_wall is not None else float("inf")
    expected = [
        c
        for c in after
        if c.label == SHUTTING_DOWN
        or (c.label == "OK" and c.start < t_sig + RACE_S)  # raced the signal to a handler
        # refused by the closed listener (the client names it UNAVAILABLE/UNREACHABLE)
        or (c.label in ("UNAVAILABLE", "UNAVAILABLE/UNREACHABLE") and c.end >= closed)
    ]
    expected_ids = {id(c) for c in expected}
    unexpected = by_status(c for c in after if id(c) not in expected_ids)
    sc.figures.update(
        {
            "exit code": code,
            "time from SIGTERM to exit (s)": round(exit_s, 2),
            "time from SIGTERM to the log's 'server stopped' (s)": round(drained, 2),
            "drain window (--drain-delay, s)": delay,
            "time from SIGTERM to the listener's close (s)": round(closed - t_sig, 2),
            "last in-flight call ended OK (s after SIGTERM)": round(last_ok, 2),
            "grace period (s)": grace,
            "Traceback lines in the server log (whole soak)": tracebacks,
        }
    )
    sc.data = {
        "in_flight": by_status(in_flight),
        "in_flight_sent_100ms_before": by_status(old),
        "after": by_status(after),
    }
    sc.check("server exits with code 0", code == 0, code)
    sc.check(
        f"exits within --drain-delay + --grace-period + {margin_s:g} s",
        code is not None and exit_s <= delay + grace + margin_s,
        f"{exit_s:.2f} s",
    )
    check_no_unexpected(sc, statuses(rec.calls), {})
    not_ok = by_status(c for c in old if c.status != "OK")
    all_not_ok = by_status(c for c in in_flight if c.status != "OK")
    sc.check(
        f"every call in flight at SIGTERM and sent >= {RACE_S * 1e3:.0f} ms before it ends OK",
        not not_ok,
        f"{len(old) - sum(not_ok.values())} OK of {len(old)}"
        + (f", {not_ok}" if not_ok else "")
        + f"; of all {len(in_flight)} in flight: {len(in_flight) - sum(all_not_ok.values())} OK"
        + (f", {all_not_ok}" if all_not_ok else ""),
    )
    sc.check(
        "every call started after SIGTERM got UNAVAILABLE/SHUTTING_DOWN (or, once the listener "
        f"closed, a refused connection; OK if sent < {RACE_S * 1e3:.0f} ms after the signal); "
        "none CANCELLED",
        bool(after) and not unexpected,
        f"{len(expected)} of {len(after)}: {by_status(after)}",
    )
    sc.check("no Traceback in the server log", tracebacks == 0, tracebacks)
    return sc


def drain_delay(server: ServerProc) -> float:
    """The server's ``--drain-delay``, from its log line; 0 when it logged none (no window)."""
    try:
        text = server.log_path.read_text(errors="replace")
    except OSError:
        return 0.0
    found = WINDOW_LINE.findall(text)
    return float(found[-1]) if found else 0.0


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None
