"""Typed Python client for the hubless gRPC model server."""

__version__ = "0.1.0"
