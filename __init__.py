"""ComfyUI entry point of the VIST3A node pack.

ComfyUI imports this file as a package from ``custom_nodes/<pack>/``. The core library ``vist3a`` lives beside it;
the pack folder goes on ``sys.path`` so ``import vist3a`` finds this copy even when it was not pip-installed.
"""

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.insert(0, _PACK_DIR)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
