"""hubless fetcher: fills a models volume from the Hugging Face hub (or a mirror), verified."""

__version__ = "0.1.0"
