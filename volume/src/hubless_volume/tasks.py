"""The task names of the volume format: what a manifest entry's ``task`` may be.

The catalog (fetcher) and the served tasks (server) are both checked against this tuple, so a
task is added in one place. The order is the order the server plans and reports tasks in.
"""

from __future__ import annotations

TASKS: tuple[str, ...] = (
    "emotion",
    "sentiment",
    "zero-shot",
    "summarization",
    "conversation",
    "embedding",
)
