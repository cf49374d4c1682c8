"""Models volumes for tests: the helpers live in :mod:`hubless_fakehub.volume`, shared with the
benchmarks and the soak; this module keeps the tests' import path."""

from hubless_fakehub.volume import install_dir, install_real_minilm, make_volume

__all__ = ["install_dir", "install_real_minilm", "make_volume"]
