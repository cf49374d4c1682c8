"""The soak harness (``make soak``, ``python -m bench.soak``): a pass/fail check of the real
fetcher and server under load and faults, not a benchmark. The scenarios live in
:mod:`.load`, :mod:`.cancel`, :mod:`.sigterm` and :mod:`.fetch`; :mod:`.env` sets up the fake
hub, the volume and the server; :mod:`.scenario` holds the results.
"""
