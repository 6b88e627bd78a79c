"""``python -m vist3a`` runs the ``vist3a`` command."""

import sys

from .cli import main

sys.exit(main())
