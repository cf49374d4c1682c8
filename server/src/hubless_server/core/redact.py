"""What the server shows back to a client of what it was sent: request values cut short.

A leaf module (the registry and the error mapping both use it). A request value echoed in a
status message or in ``ErrorInfo`` metadata (a model name, a label, a template) is cut to
:data:`ECHO_LIMIT` characters: a 1 MB ``model`` field must not come back as a 1 MB trailer.
"""

from __future__ import annotations

ECHO_LIMIT = 64
"""Characters of a request value echoed back to the client; longer values end in an
ellipsis."""


def echo(value: str, limit: int = ECHO_LIMIT) -> str:
    """``value`` cut to ``limit`` characters with an ellipsis: a request value shown back."""
    return value if len(value) <= limit else value[: limit - 1] + "\u2026"
