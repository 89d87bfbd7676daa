"""``python -m chaos`` from the checkout: the chaos suite (scripts/chaos runs it); not installed with the service."""

import sys

from chaos.cli import main

sys.exit(main())
