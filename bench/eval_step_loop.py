"""Evaluate the generation step loop against transformers' continuous batching manager.

Full-size DialoGPT-medium stand-in (bench/fullsize_models.py), the generation suite's chat
prompts (3 turns), greedy, ``--new-tokens`` new tokens, ``--batch`` requests submitted at
once; generated tokens per second of:

* ``generate``: ``model.generate`` on the left-padded batch (the suite's in-process ceiling);
* ``step loop``: hubless's own loop (:class:`hubless_server.runtimes.chat.ChatEngine`):
  one prefill of the batch, then one decode step at a time, finished rows cut out;
* ``CB manager``: ``model.generate_batch`` (transformers' continuous batching manager,
  paged KV cache; needs psutil on CPU), after its own warm-up.

Each is run ``--repeat`` times, alternating; the best wall time and the least process CPU
time (all threads, ``time.process_time``) are kept: on a CPU shared with other work the CPU
seconds per run are the steadier figure. The manager's per-request options, for the record:
per-request temperature/top_p need ``per_request_processors`` and a generation config that
already samples; a seed exists only per manager (one global torch seed), so a seeded
request's text depends on its companions.

    PYTHONPATH=/path/with/psutil .venv/bin/python -m bench.eval_step_loop
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

from hubless_server.runtimes import ChatItem, ChatRuntime, RuntimeOptions
from hubless_volume import Manifest

from .fullsize_models import ensure_fullsize_volume
from .workload import make_sentences

log = logging.getLogger("bench")
CHAT_TURNS = 3


def prompts(n: int) -> list[tuple[str, ...]]:
    sentences = make_sentences(1024)
    return [
        tuple(sentences[(i * CHAT_TURNS + k) % len(sentences)] for k in range(CHAT_TURNS))
        for i in range(n)
    ]


def run_generate(model: Any, eos: int, histories: list[list[int]], new: int) -> float:
    width = max(map(len, histories))
    ids = torch.full((len(histories), width), eos, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, h in enumerate(histories):
        ids[i, width - len(h) :] = torch.tensor(h)
        mask[i, width - len(h) :] = 1
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            min_new_tokens=new,
            max_new_tokens=new,
            pad_token_id=eos,
        )
    return time.perf_counter() - t0


def run_step_loop(runtime: ChatRuntime, items: list[ChatItem]) -> float:
    engine = runtime.step_engine()
    seqs = [engine.sequence(runtime.prepare(item)) for item in items]
    t0 = time.perf_counter()
    engine.prefill(seqs)
    while engine.rows:
        engine.release([s for s in engine.rows if s.done])
        if engine.rows:
            engine.decode()
    elapsed = time.perf_counter() - t0
    assert all(len(s.tokens) == s.params.max_new_tokens for s in seqs)
    return elapsed


def run_manager(model: Any, histories: list[list[int]], new: int, eos: int) -> float:
    config = GenerationConfig(
        max_new_tokens=new, do_sample=False, eos_token_id=eos, pad_token_id=eos
    )
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate_batch(histories, generation_config=config, warmup=False)
    elapsed = time.perf_counter() - t0
    assert len(out) == len(histories)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.eval_step_loop", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    volume = ensure_fullsize_volume(only=["dialogpt-medium"])
    snapshot = Manifest.load(volume).models["dialogpt-medium"].snapshot_dir(volume)
    runtime = ChatRuntime("dialogpt-medium", snapshot, RuntimeOptions("cpu", "float32"))
    runtime.load()
    model = runtime._model
    eos = runtime._eos_id
    items = [ChatItem(turns, args.new_tokens) for turns in prompts(args.batch)]
    histories = [runtime.prepare(item).features for item in items]
    new, tokens = args.new_tokens, args.batch * args.new_tokens
    cb_ok = True
    try:
        run_manager(model, histories[:2], 2, eos)  # warm-up (and the psutil check)
    except Exception as exc:  # recorded, not fatal: the figure says why it is missing
        log.error("continuous batching manager failed: %r", exc)
        cb_ok = False
    run_generate(model, eos, histories[:2], 2)
    run_step_loop(runtime, items[:2])
    runs = {
        "generate": lambda: run_generate(model, eos, histories, new),
        "step loop": lambda: run_step_loop(runtime, items),
    }
    if cb_ok:
        runs["CB manager"] = lambda: run_manager(model, histories, new, eos)
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeat):
        for name, run in runs.items():
            c0 = time.process_time()
            times[name].append(run())
            cpu[name].append(time.process_time() - c0)
    result: dict[str, Any] = {
        "batch": args.batch,
        "new_tokens": new,
        "prompt_tokens_mean": sum(map(len, histories)) / len(histories),
        "threads": torch.get_num_threads(),
        "tokens_s": {k: tokens / min(v) for k, v in times.items() if v},
        "cpu_s_per_token": {k: min(v) / tokens for k, v in cpu.items() if v},
        "seconds": times,
        "cpu_seconds": cpu,
    }
    base = result["tokens_s"]["generate"]
    result["x_generate"] = {k: v / base for k, v in result["tokens_s"].items()}
    base_cpu = result["cpu_s_per_token"]["generate"]
    result["cpu_x_generate"] = {k: v / base_cpu for k, v in result["cpu_s_per_token"].items()}
    log.info("%s", json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
