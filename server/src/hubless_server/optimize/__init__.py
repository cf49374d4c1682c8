"""``hubless-optimize``: ONNX Runtime artifacts of the encoder models, prepared into the volume.

:mod:`.cli` (the command and its exit codes), :mod:`.run` (one run: select, export, check,
install, record), :mod:`.export` (``torch.onnx.export`` and ONNX Runtime's transformer
optimizer), :mod:`.parity` (the probes and the comparison with PyTorch). The server loads what
it installed through :mod:`hubless_server.runtimes.backends`.
"""
