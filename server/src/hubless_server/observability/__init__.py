"""Logs, metrics (and their HTTP endpoint), tracing, the batching core's tracer hook, what a
request tells the access log, and the allocator trim: what every layer may report into."""
