"""Loading checkpoints: hub id, local folder or single weights file; strict key matching.

Hub layouts handled:

* ``lhjiang/anysplat`` (PyTorchModelHubMixin): ``config.json`` (``encoder_cfg`` / ``decoder_cfg``) +
  ``model.safetensors`` with ``encoder.*`` keys. Keys ``encoder.distill_*`` (training-only copies present when the
  config has ``distill: true``) are dropped.
* ``facebook/VGGT-1B``: ``model.pt`` (a plain state dict), possibly also ``config.json``.
* Our own folders from :func:`save_pretrained`: ``config.json`` (with ``model_type``) + ``model.safetensors``.

* ``Zhenggang/MV-DUSt3R`` (MVDUSt3R): ``checkpoints/MVD.pth`` (MV-DUSt3R), ``checkpoints/MVDp_s1.pth`` /
  ``MVDp_s2.pth`` (MV-DUSt3R+), training checkpoints ``{"model": state dict, "args": argparse.Namespace, ...}``
  (:func:`load_mvdust3r_state`); pass ``Zhenggang/MV-DUSt3R/checkpoints/MVDp_s2.pth`` or the local file.

``.pt`` / ``.pth`` files are read with ``torch.load(weights_only=True)`` only (the MVDUSt3R ``args`` through an
explicit one-class allowlist); ``.safetensors`` with safetensors.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointMismatchError
from .anysplat import AnySplat
from .config import AnySplatConfig, MVDUSt3RConfig, VGGTConfig, anysplat_config_from_hub
from .mvdust3r import MVDUSt3R
from .vggt import VGGT

__all__ = [
    "KNOWN_REPOS",
    "CheckpointMismatchError",
    "from_pretrained",
    "load_checkpoint_into",
    "load_mvdust3r_state",
    "load_state_dict_file",
    "save_pretrained",
    "tiny_model",
]

logger = logging.getLogger(__name__)

KNOWN_REPOS = {"lhjiang/anysplat": "anysplat", "facebook/VGGT-1B": "vggt", "facebook/VGGT-1B-Commercial": "vggt",
               "Zhenggang/MV-DUSt3R": "mvdust3r"}
MVDUST3R_FILES = {"mvd": "checkpoints/MVD.pth", "mvdp_s1": "checkpoints/MVDp_s1.pth",
                  "mvdp_s2": "checkpoints/MVDp_s2.pth"}
_WEIGHT_NAMES = ("model.safetensors", "model.pt", "pytorch_model.bin", "model.pth")
_DROPPED_PREFIXES = ("encoder.distill_aggregator.", "encoder.distill_camera_head.", "encoder.distill_depth_head.")


def tiny_model(kind: str, seed: int = 0) -> nn.Module:
    """A tiny randomly initialised 3D model of ``kind`` (``"anysplat"``, ``"vggt"`` or ``"mvdust3r"``: MV-DUSt3R+
    with 4 reference paths) for tests and offline plumbing runs, seeded with ``seed``."""
    builders = {"anysplat": lambda: AnySplat(AnySplatConfig.tiny()), "vggt": lambda: VGGT(VGGTConfig.tiny()),
                "mvdust3r": lambda: MVDUSt3R(MVDUSt3RConfig.tiny(n_ref=4))}
    if kind not in builders:
        raise ValueError(f"tiny_model: unknown 3D model {kind!r}; one of {sorted(builders)}")
    torch.manual_seed(seed)
    return builders[kind]()


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file: ``.safetensors`` via safetensors, ``.pt/.pth/.bin`` via ``torch.load(weights_only=True)``
    (:func:`vist3a.io.weights.load_weights`: damaged, truncated, mislabelled or unsafe files raise one clear
    ValueError)."""
    from ..io.weights import load_weights

    return load_weights(path, "weights file")


def _is_mvdust3r_state(state: Mapping[str, Any]) -> bool:
    return any(k.startswith("dec_blocks.") for k in state) and any(k.startswith("downstream_head1.") for k in state)


def load_mvdust3r_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a released MVDUSt3R checkpoint safely -> (state dict, info).

    The releases are training checkpoints ``{"model": state dict, "args": argparse.Namespace, "epoch": ...}``. They
    are read with ``torch.load(weights_only=True)`` and one extra allowed class, ``argparse.Namespace`` (rebuilding
    it only sets attributes; any other Python object in the file is refused with a clear ValueError). Only
    ``model`` is kept; ``args.model`` (the constructor string) is returned as ``info["constructor"]``. A plain state
    dict (``.pth`` or ``.safetensors``) is accepted too. As the official ``load_state_dict``, ``dec_blocks2.*`` is
    copied from ``dec_blocks.*`` when the checkpoint has none. ``info["variant"]`` is ``"mvd"`` or ``"mvdp"``
    (``dec_same_view_blocks.*`` present).
    """
    import argparse

    from ..io.weights import load_torch_file, load_weights

    text = str(path)
    info: dict[str, Any] = {}
    if text.lower().endswith(".safetensors"):
        state = load_weights(text, "MVDUSt3R checkpoint")
    else:
        obj = load_torch_file(text, "MVDUSt3R checkpoint", allow=(argparse.Namespace,))
        if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
            args = obj.get("args")
            constructor = getattr(args, "model", None)
            if isinstance(constructor, str):
                info["constructor"] = constructor
            if "epoch" in obj:
                info["epoch"] = obj["epoch"]
            obj = obj["model"]
        elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping):
            raise ValueError(f"MVDUSt3R checkpoint {text}: expected a dict with a 'model' state dict (the released "
                             f"layout) or a state dict, got {type(obj).__name__}")
        bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
        if bad:
            raise ValueError(f"MVDUSt3R checkpoint {text}: its state dict has non-tensor entries {bad}")
        state = {str(k): v for k, v in obj.items()}
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not _is_mvdust3r_state(state):
        raise ValueError(f"MVDUSt3R checkpoint {text}: no MVDUSt3R keys (dec_blocks.*, downstream_head1.*); pass "
                         "MVD.pth, MVDp_s1.pth or MVDp_s2.pth from Zhenggang/MV-DUSt3R")
    if not any(k.startswith("dec_blocks2.") for k in state):
        state.update({"dec_blocks2." + k[len("dec_blocks."):]: v for k, v in list(state.items())
                      if k.startswith("dec_blocks.")})
    info["variant"] = "mvdp" if any(k.startswith("dec_same_view_blocks.") for k in state) else "mvd"
    return state, info


def mvdust3r_config_for(state: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> MVDUSt3RConfig:
    """The config of a MVDUSt3R state dict: sizes from the tensor shapes, n_ref 4 for MV-DUSt3R+ (or the
    constructor string's ``n_ref``)."""
    enc = state.get("patch_embed.proj.weight")
    dec = state["decoder_embed.weight"]
    enc_depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("enc_blocks."))
    dec_depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("dec_blocks."))
    n_ref = 1
    if any(k.startswith("dec_same_view_blocks.") for k in state):
        m = re.search(r"n_ref\s*=\s*(\d+)", (info or {}).get("constructor", ""))
        n_ref = int(m.group(1)) if m else 4
    skip = "downstream_head1.skip_proj.0.conv.weight" in state
    base = MVDUSt3RConfig()
    enc_dim, dec_dim = int(dec.shape[1]), int(dec.shape[0])
    rgb = state.get("downstream_GS_head.0.mlp_rgb.2.weight")
    p = base.patch_size if enc is None else int(enc.shape[-1])
    sh = 0 if rgb is None else round((rgb.shape[0] // (3 * p * p)) ** 0.5) - 1
    def heads(dim: int) -> int:  # shapes do not fix the head count: 64-dim heads (the releases), else 4 (tiny)
        return dim // 64 if dim >= 256 and dim % 64 == 0 else 4

    return MVDUSt3RConfig(
        patch_size=p, enc_embed_dim=enc_dim, enc_depth=enc_depth, enc_num_heads=heads(enc_dim),
        dec_embed_dim=dec_dim, dec_depth=dec_depth, dec_num_heads=heads(dec_dim), n_ref=n_ref, pts_skip=skip,
        skip_channels=int(state["downstream_head1.skip_proj.0.conv.weight"].shape[0]) if skip else base.skip_channels,
        sh_degree=max(sh, 0))


def _fmt(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def mismatch_lines(missing, unexpected, misshaped: list[str]) -> list[str]:
    """Report lines for a key mismatch: counts and the first keys of each kind (``misshaped`` holds messages)."""
    lines = []
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {_fmt(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
    if misshaped:
        lines.append(f"  mis-shaped keys ({len(misshaped)}): " + "; ".join(misshaped[:8])
                     + (f" ... (+{len(misshaped) - 8} more)" if len(misshaped) > 8 else ""))
    return lines


def load_checkpoint_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
                         ) -> None:
    """Strictly load ``state_dict`` into ``model`` (values cast to each parameter's dtype; a model on the meta device
    adopts the tensors instead of copying them, so only one copy of the weights is ever held); raise
    :class:`CheckpointMismatchError` listing missing, unexpected and mis-shaped keys otherwise."""
    state = {k: v for k, v in state_dict.items() if not k.startswith(_DROPPED_PREFIXES)}
    own = model.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        lines = [f"{type(model).__name__}: {source} does not match the model built from its config."]
        lines += mismatch_lines(missing, unexpected, shapes)
        lines.append("  What to do: check that the file belongs to this model (AnySplat keys start with 'encoder.', "
                     "VGGT keys with 'aggregator.', MVDUSt3R keys with 'enc_blocks.'/'dec_blocks.'), pass model='anysplat', "
                     "'vggt' or 'mvdust3r' explicitly, and pass the "
                     "config the checkpoint was trained with (config.json next to the weights).")
        raise CheckpointMismatchError("\n".join(lines))
    if not any(t.is_meta for t in own.values()):
        model.load_state_dict(dict(state), strict=True, assign=False)
        return
    # Built on the meta device: the model adopts the checkpoint's tensors (cast to each parameter's dtype where
    # they differ) instead of allocating its own and copying into them, so loading holds one copy of the weights,
    # not two. Cast tensors replace their originals in the caller's dict one by one, so a cast never holds two
    # copies of more than one tensor either.
    mutable = isinstance(state_dict, dict)
    for k, v in list(state.items()):
        if v.dtype != own[k].dtype:
            v = v.to(own[k].dtype)
            state[k] = v
            if mutable and k in state_dict:
                state_dict[k] = v
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"{type(model).__name__}: {len(left)} tensors were not in {source} and stay "
                           f"unallocated (e.g. {left[:3]}); this is a bug in the model definition")


def _infer_kind(state: Mapping[str, Any]) -> str:
    if _is_mvdust3r_state(state):
        return "mvdust3r"
    if any(k.startswith("encoder.") for k in state):
        return "anysplat"
    if any(k.startswith("aggregator.") for k in state):
        return "vggt"
    raise ValueError("from_pretrained: cannot tell the model type from the weights; pass model='anysplat', 'vggt' "
                     "or 'mvdust3r'")


def _config_for(kind: str, data: dict | None) -> AnySplatConfig | VGGTConfig:
    if kind == "anysplat":
        if data is None:
            return AnySplatConfig()
        if "encoder_cfg" in data:
            return anysplat_config_from_hub(data)
        return AnySplatConfig.from_dict(data)
    if kind == "vggt":
        if data is None or data.get("model_type") != "vggt":
            # facebook/VGGT-1B's config.json only holds the constructor sizes (img_size, patch_size, embed_dim).
            return VGGTConfig()
        return VGGTConfig.from_dict(data)
    if kind == "mvdust3r":
        return MVDUSt3RConfig.from_dict(data) if data and data.get("model_type") == "mvdust3r" else None
    raise ValueError(f"from_pretrained: unknown model {kind!r}; use 'anysplat', 'vggt' or 'mvdust3r'")


def _offline_message(repo_id: str, err: Exception, caller: str = "from_pretrained",
                     example: str = "from_pretrained('/path/to/folder') or "
                                    "from_pretrained('/path/to/model.safetensors')") -> str:
    return (f"{caller}: could not get {repo_id!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            "Offline mode (HF_HUB_OFFLINE=1), no network, a wrong repository id or missing access rights: "
            "download the repository elsewhere "
            f"(e.g. `hf download {repo_id} --local-dir <folder>`) and pass the local folder or weights "
            f"file instead, e.g. {example}.")


def _download(repo_id: str, revision: str | None) -> Path:
    """Fetch the weights (first of ``_WEIGHT_NAMES`` present) and config.json; return the snapshot folder."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError as err:  # pragma: no cover
        raise RuntimeError("from_pretrained: huggingface_hub is needed for hub ids; pass a local path") from err
    folder: Path | None = None
    for name in _WEIGHT_NAMES:
        try:
            folder = Path(hf_hub_download(repo_id, name, revision=revision)).parent
            break
        except LocalEntryNotFoundError as err:  # offline (HF_HUB_OFFLINE=1 or no network) and not cached
            if not _offline():
                # Online but this file is missing from the cache and the network failed: same advice.
                raise OSError(_offline_message(repo_id, err)) from err
            continue  # offline: another weights name may be in the cache
        except EntryNotFoundError:
            continue  # the repository has no file of this name; try the next one
        except Exception as err:  # no network, missing repository, authentication
            raise OSError(_offline_message(repo_id, err)) from err
    if folder is None:
        if _offline():
            raise OSError(_offline_message(repo_id, RuntimeError("HF_HUB_OFFLINE is set and nothing is cached")))
        raise OSError(f"from_pretrained: {repo_id!r} has none of the weight files {_WEIGHT_NAMES}")
    try:
        hf_hub_download(repo_id, "config.json", revision=revision)
    except (EntryNotFoundError, OSError) as err:  # VGGT-1B needs none; AnySplat falls back to the defaults
        logger.info("from_pretrained: no config.json for %s (%s); using the published defaults", repo_id, err)
    return folder


def _download_file(repo_id: str, filename: str, revision: str | None) -> Path:
    """One file of a hub repository (e.g. ``checkpoints/MVDp_s2.pth`` of ``Zhenggang/MV-DUSt3R``)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:  # pragma: no cover
        raise RuntimeError("from_pretrained: huggingface_hub is needed for hub files; pass a local path") from err
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception as err:  # offline, missing file, no access: one message
        raise OSError(_offline_message(repo_id, err)) from err


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def from_pretrained(
    source: str | Path,
    model: str | None = None,
    config: AnySplatConfig | VGGTConfig | dict | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
) -> AnySplat | VGGT:
    """Build AnySplat, VGGT or MVDUSt3R and load weights strictly.

    Args:
        source: hub id (``"lhjiang/anysplat"``, ``"facebook/VGGT-1B"``), a file in a hub repository
            (``"Zhenggang/MV-DUSt3R/checkpoints/MVDp_s2.pth"``), a local folder (``config.json`` +
            ``model.safetensors`` / ``model.pt``) or a weights file (``.safetensors``, ``.pt``, ``.pth``; the released
            MVDUSt3R ``.pth`` training checkpoints are read by :func:`load_mvdust3r_state`).
        model: ``"anysplat"``, ``"vggt"`` or ``"mvdust3r"``; inferred from config.json ``model_type``, the hub id,
            the file name or the keys.
        config: overrides the config found next to the weights.
        device, dtype: where / as what to place the model (default CPU, the checkpoint dtype cast to float32).
    Returns the model in eval mode.
    """
    source_str = str(source)
    path = Path(source_str).expanduser()
    if path.exists():
        folder = path if path.is_dir() else path.parent
        weights = path if path.is_file() else None
    elif "/" in source_str and not source_str.startswith((".", "/", "~")) and source_str.count("/") == 1:
        folder = _download(source_str, revision)
        weights = None
        model = model or KNOWN_REPOS.get(source_str)
    elif not source_str.startswith((".", "/", "~")) and source_str.count("/") >= 2 and \
            source_str.lower().endswith((".pth", ".pt", ".safetensors")):
        repo_id, _, filename = source_str.partition("/")[2].partition("/")
        repo_id = source_str.split("/")[0] + "/" + repo_id
        weights = _download_file(repo_id, filename, revision)
        folder = weights.parent
        model = model or KNOWN_REPOS.get(repo_id)
    else:
        raise FileNotFoundError(f"from_pretrained: {source_str!r} is neither an existing path nor a hub id")
    if weights is None:
        for name in _WEIGHT_NAMES:
            if (folder / name).is_file():
                weights = folder / name
                break
        else:
            raise FileNotFoundError(f"from_pretrained: no weights ({', '.join(_WEIGHT_NAMES)}) in {folder}")
    cfg_data = None
    cfg_file = folder / "config.json"
    if config is None and cfg_file.is_file():
        from ..io.weights import read_json_file

        cfg_data = read_json_file(cfg_file, "model config")
    mvd_info: dict[str, Any] = {}
    if (model == "mvdust3r" or (cfg_data or {}).get("model_type") == "mvdust3r"
            or isinstance(config, MVDUSt3RConfig) or "mvd" in weights.name.lower()):
        state, mvd_info = load_mvdust3r_state(weights)
    else:
        state = load_state_dict_file(weights)
    if isinstance(config, (AnySplatConfig, VGGTConfig, MVDUSt3RConfig)):
        kind = model or config.model_type
        cfg = config
    else:
        if isinstance(config, dict):
            cfg_data = config
        kind = model or (cfg_data or {}).get("model_type") or ("anysplat" if cfg_data and "encoder_cfg" in cfg_data
                                                                 else None) or _infer_kind(state)
        if kind == "mvdust3r" and not mvd_info and not any(k.startswith("dec_blocks2.") for k in state):
            state = {**state, **{"dec_blocks2." + k[len("dec_blocks."):]: v for k, v in state.items()
                                 if k.startswith("dec_blocks.")}}
        try:
            cfg = _config_for(kind, cfg_data)
        except (KeyError, TypeError, AttributeError) as err:
            where = "the config passed" if isinstance(config, dict) else str(cfg_file)
            raise ValueError(f"from_pretrained: {where} does not describe a {kind} model ({type(err).__name__}: "
                             f"{err}); use the config.json saved with the weights, or remove it to use the "
                             "published defaults") from None
    if kind == "mvdust3r" and cfg is None:
        cfg = mvdust3r_config_for(state, mvd_info)
    with torch.device("meta"):
        net = {"anysplat": AnySplat, "vggt": VGGT, "mvdust3r": MVDUSt3R}[kind](cfg)
    net = net.float()  # still on the meta device: the checkpoint's tensors are adopted, not copied
    load_checkpoint_into(net, state, source=str(weights))
    del state
    net = net.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else net
    return net.eval()


def save_pretrained(model: AnySplat | VGGT, folder: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (our layout, readable by :func:`from_pretrained`).

    Each file is written atomically (temporary file in ``folder``, then renamed), so an interrupted save never leaves
    a truncated checkpoint behind or destroys an earlier one.
    """
    from safetensors.torch import save_file

    from ..io.atomic import atomic_path, atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(tensors, tmp)
    with atomic_write(folder / "config.json", "w") as fh:
        fh.write(json.dumps(model.config.to_dict(), indent=2))
    return folder
