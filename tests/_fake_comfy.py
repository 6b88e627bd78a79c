"""A small test double of the ComfyUI modules the nodes use: ``folder_paths``, ``comfy.utils``,
``comfy.model_management``, ``comfy.model_patcher``. Written for these tests (behaviour from ComfyUI's documented
contracts); installed into ``sys.modules`` by :func:`install` and removed by :func:`uninstall`."""

from __future__ import annotations

import os
import sys
import types

import torch

NAMES = ("folder_paths", "comfy", "comfy.utils", "comfy.model_management", "comfy.model_patcher")


class InterruptProcessingException(Exception):
    pass


def install(root) -> types.SimpleNamespace:
    root = str(root)
    state = types.SimpleNamespace(interrupt=False, interrupt_after=None, checks=0, progress=[], loaded=[], root=root)

    fp = types.ModuleType("folder_paths")
    fp.models_dir = os.path.join(root, "models")
    fp.folder_names_and_paths = {}
    fp.get_output_directory = lambda: os.path.join(root, "output")
    fp.get_temp_directory = lambda: os.path.join(root, "temp")

    def add_model_folder_path(name, path, is_default=False):
        paths, _exts = fp.folder_names_and_paths.setdefault(name, ([], set()))
        if path not in paths:
            paths.insert(0, path) if is_default else paths.append(path)

    def get_folder_paths(name):
        return list(fp.folder_names_and_paths.get(name, ([], set()))[0])

    def get_save_image_path(prefix, output_dir, width=0, height=0):
        # same contract as ComfyUI: (full folder, file name, counter, subfolder, prefix); refuses folders outside
        sub, name = os.path.split(os.path.normpath(prefix))
        full = os.path.join(output_dir, sub)
        if os.path.commonpath((output_dir, os.path.abspath(full))) != output_dir:
            raise Exception("Saving image outside the output folder is not allowed.")
        os.makedirs(full, exist_ok=True)
        return full, name, 1, sub, prefix

    fp.add_model_folder_path = add_model_folder_path
    fp.get_folder_paths = get_folder_paths
    fp.get_save_image_path = get_save_image_path

    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total):
            self.total, self.current = total, 0

        def update(self, n):
            self.current += n
            state.progress.append((self.current, self.total))

        def update_absolute(self, value, total=None, preview=None):
            self.current = value
            state.progress.append((value, total or self.total))

    utils.ProgressBar = ProgressBar

    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")

    def throw_exception_if_processing_interrupted():
        state.checks += 1
        if state.interrupt_after is not None and state.checks > state.interrupt_after:
            state.interrupt = True
        if state.interrupt:
            state.interrupt = False
            raise InterruptProcessingException()

    def load_models_gpu(patchers, **kwargs):
        for p in patchers:
            p.model.to(p.load_device)
            state.loaded.append(p)

    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.load_models_gpu = load_models_gpu

    mp = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device

    mp.ModelPatcher = ModelPatcher
    comfy.utils, comfy.model_management, comfy.model_patcher = utils, mm, mp
    for name, mod in zip(NAMES, (fp, comfy, utils, mm, mp)):
        sys.modules[name] = mod
    return state


def uninstall() -> None:
    for name in NAMES:
        sys.modules.pop(name, None)


CORE_API = ("comfy_api", "comfy_api.latest")


def reload_nodes() -> None:
    """Re-import the node modules so their socket types see the ComfyUI modules installed right now."""
    import importlib

    import nodes
    import nodes.decoding
    import nodes.splat_types

    for mod in (nodes.splat_types, nodes.decoding, nodes):
        importlib.reload(mod)


def install_core_splat(splat_class: type) -> None:
    """A ``comfy_api.latest`` exposing ``Types.SPLAT = splat_class`` (a ComfyUI with the core splat type), then the
    node modules re-imported. Undo with :func:`uninstall_core_splat`."""
    latest = types.ModuleType("comfy_api.latest")
    latest.Types = types.SimpleNamespace(SPLAT=splat_class)
    api = types.ModuleType("comfy_api")
    api.latest = latest
    sys.modules.update(dict(zip(CORE_API, (api, latest))))
    reload_nodes()


def uninstall_core_splat() -> None:
    for name in CORE_API:
        sys.modules.pop(name, None)
    reload_nodes()
