"""``python -m trimtune`` runs the ``trimtune`` command."""

import sys

from .cli import main

sys.exit(main())
