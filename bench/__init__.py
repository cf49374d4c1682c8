"""hubless benchmarks (``python -m bench.run``) and the soak harness (``python -m bench.soak``).

A package so its modules import each other relative to it, never by a bare name that depends
on which directory is first on ``sys.path``. Not tests: nothing here runs in ``make test``.
"""
