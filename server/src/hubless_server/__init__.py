"""hubless server: gRPC inference over the models a hubless fetcher installed, fully offline.

Importing the package forces the hub's offline mode before anything below can import
transformers (see :mod:`hubless_server.core.offline`).
"""

from hubless_server.core.offline import apply_offline_env

apply_offline_env()

__version__ = "0.1.0"
