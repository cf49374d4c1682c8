"""The HTTP door (``--http-port``): an OpenAI-compatible embeddings API, JSON routes for every
RPC and HTTP health, served beside gRPC from the same process, servicers and interceptors.

:mod:`.dispatch` calls the gRPC servicers in-process, :mod:`.routes` is the Starlette app,
:mod:`.openai_compat` the OpenAI shapes, :mod:`.errors` maps statuses, :mod:`.server` runs
uvicorn on the server's event loop. Imported only when ``--http-port`` is set.
"""
