"""The HTTP door (``--http-port``): an OpenAI-compatible embeddings API, JSON routes for every
RPC and HTTP health, served beside gRPC from the same process, servicers and interceptors.

:mod:`.dispatch` calls the gRPC servicers in-process, :mod:`.routes` is the Starlette app,
:mod:`.openai_compat` the OpenAI shapes, :mod:`.errors` maps statuses, :mod:`.server` runs
uvicorn on the server's event loop. In front of the app, :mod:`.gate` decides from the
request head (token, ``Host``, ``Origin``, ``Content-Type``, size) before reading the body,
:mod:`.connections` caps and times out connections, :mod:`.limits` computes the limits from
the settings and :mod:`.refusals` counts and logs what is refused. Imported only when
``--http-port`` is set.
"""
