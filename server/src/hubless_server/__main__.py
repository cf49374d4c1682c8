"""``python -m hubless_server``."""

import sys

from hubless_server.cli import main

sys.exit(main())
