"""hubless server: gRPC inference over the models a hubless fetcher installed, fully offline."""

__version__ = "0.1.0"
