"""``python -m training.micro``: the micro world's stages (see training/micro/cli.py)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
