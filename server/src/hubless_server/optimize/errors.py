"""hubless-optimize's errors, in a module that imports no torch (the CLI and the exporter
both raise or catch them; neither has to import the other for them)."""

from __future__ import annotations


class VolumeFull(OSError):
    """Not enough free space on the volume for an export."""


class ExportError(RuntimeError):
    """The model cannot be exported; the message is for the manifest and the log (no paths)."""


class ParityFailed(RuntimeError):
    """The export does not answer like PyTorch (or ONNX Runtime cannot run it)."""
