"""Model lifecycle: what is installed and loaded (``registry``, ``records``), loads retried
while a fetch moves files (``load_retry``), live updates (``reload``) and memory estimates."""
