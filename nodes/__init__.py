"""ComfyUI nodes of the VIST3A pack: thin wrappers over :mod:`vist3a`.

Node modules import ComfyUI (``comfy``, ``folder_paths``) only inside functions, so this package imports without
ComfyUI (CI has none). Each node module contributes its classes to the two mappings below; every node's function
is wrapped in the one error path (``nodes/_errors.py``): a failure a user can cause is raised as
``ValueError("<NodeName>: <what is wrong and what to do>")``.
"""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]


def _register() -> None:
    from ._errors import wrap_node
    from .decoding import NODES as decoding_nodes
    from .sampling import NODES as sampling_nodes

    for group in (decoding_nodes, sampling_nodes):
        for node_id, (cls, display) in group.items():
            NODE_CLASS_MAPPINGS[node_id] = wrap_node(cls, node_id)
            NODE_DISPLAY_NAME_MAPPINGS[node_id] = display


_register()
