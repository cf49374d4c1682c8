"""Token-level continuous batching for the generation models.

:mod:`.scheduler` (independent of gRPC, like :mod:`hubless_server.batching`) runs one step
loop per generation model; :mod:`.engine` is the model side it drives (:mod:`.causal` for
decoder-only models, :mod:`.encoder_decoder` for BART), :mod:`.sequence` one request's state
and token rule.
"""
