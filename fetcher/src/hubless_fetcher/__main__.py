"""``python -m hubless_fetcher`` = ``hubless-fetch``."""

from hubless_fetcher.cli import main

raise SystemExit(main())
