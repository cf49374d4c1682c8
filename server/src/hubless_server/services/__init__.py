"""gRPC servicers, one module per ``hubless.v1`` service."""
