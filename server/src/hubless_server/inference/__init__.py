"""The inference core, independent of gRPC and of any particular model: the batch queue
(``batching``), the generation step loop (``scheduler``), streaming and the inference gate."""
