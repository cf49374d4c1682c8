"""The model side of token-level continuous batching for the generation models.

:mod:`.engine` is what the step loop (:mod:`hubless_server.inference.scheduler`) drives:
:mod:`.causal` for decoder-only models, :mod:`.encoder_decoder` for BART; :mod:`.sequence` is
one request's state and token rule.
"""
