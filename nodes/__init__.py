"""ComfyUI nodes of the VIST3A pack: thin wrappers over :mod:`vist3a`.

Node modules import ComfyUI (``comfy``, ``folder_paths``) only inside functions, so this package imports without
ComfyUI (CI has none). Each node module contributes its classes to the two mappings below.
"""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
