"""Offline mode and writable-path hygiene, applied before transformers is imported.

The server never talks to the hub and never writes to the models volume: the hub's offline
switches are forced on, telemetry off, and every library cache is pointed at a folder under
the system temp dir (``/tmp`` in the container, whose root filesystem is read-only).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

FORCED = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}

# Caches that may be written while loading: defaults only, an explicit setting is kept.
CACHE_VARS = {
    "HF_HOME": "hf-home",
    "TORCH_HOME": "torch",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "TRITON_CACHE_DIR": "triton",
    "SENTENCE_TRANSFORMERS_HOME": "sentence-transformers",
    "XDG_CACHE_HOME": "xdg-cache",
    "MPLCONFIGDIR": "matplotlib",
}


# Threading defaults, read once when torch loads its OpenMP runtime; an explicit value wins.
# PASSIVE: idle OpenMP workers sleep instead of spinning. Spinning pays off only on dedicated
# cores; on shared or CFS-throttled CPUs (containers with a CPU limit) it burns the quota and
# measured 14x slower forward passes (all-MiniLM-L6-v2, 2 threads on 2 busy cores: 320 ms
# spinning vs 22 ms passive).
THREAD_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_offline_env() -> None:
    """Force offline mode, point caches at the temp dir, set thread defaults. Idempotent."""
    os.environ.update(FORCED)
    for var, value in THREAD_DEFAULTS.items():
        os.environ.setdefault(var, value)
    base = Path(tempfile.gettempdir()) / "hubless-cache"
    for var, sub in CACHE_VARS.items():
        os.environ.setdefault(var, str(base / sub))
    # Already imported (e.g. by a test harness)? Flip the parsed constant too.
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
        constants.HF_HUB_DISABLE_TELEMETRY = True  # type: ignore[attr-defined]
