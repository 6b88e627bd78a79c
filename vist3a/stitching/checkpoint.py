"""Stitched-decoder checkpoints: import of the published VIST3A ``.pth`` files, and our own folder format.

Published (``HJGO/VIST3A``: ``anysplat_stitched.pth``, ``anysplat_stitched_21_frame_extended.pth``), read with
``torch.load(weights_only=True)`` only. A dict of:

* ``lora``: loralib ``<module>.lora_A`` / ``<module>.lora_B`` for every nn.Linear and square nn.Conv2d of the stitched
  AnySplat, plus ``<module>.bias`` of those layers; keys relative to the stitched model (``encoder.`` prefix, DINO
  blocks re-indexed after the cut: ``patch_embed.blocks.j`` = original block j + 2);
* ``stitching_layer``: ``{weight (1024, 16, 5, 3, 3), bias (1024,)}``;
* ``mask_token`` (1, 1024), ``cls_token`` (1, 1, 1024), ``register_tokens`` (1, 4, 1024) (bfloat16).

When the base config has ``distill: true`` the official stitched model also holds AnySplat's training-only
``encoder.distill_aggregator`` / ``distill_camera_head`` / ``distill_depth_head`` copies, and the official
``add_lora`` wraps them too: such a checkpoint carries their LoRA factors and biases (``encoder.distill_*`` keys).
They never run in the stitched forward; the import drops them (and our model never builds those modules).

Gaussians follow the base config like the official loader: with ``voxelize: true`` (AnySplat's training config)
the per-pixel Gaussians are fused per voxel of ``voxel_size``; ``per_pixel=True`` (:func:`use_per_pixel_gaussians`)
forces one Gaussian per pixel.

Import = base AnySplat (``lhjiang/anysplat``) -> cut -> merge LoRA (``W += (B @ A).view(W.shape) * alpha / r``,
alpha = 32 is not stored in the file) -> biases of the LoRA layers FROM THE CHECKPOINT -> stitching layer -> tokens
(official ``load_stitching_model`` + ``.eval()`` merge).

Our format, a folder (or hub repo) written by :func:`save_decoder`:

* ``decoder_config.json``: format name/version, base model (type, hub id, full model config), cut, stitching config
  string, latent channels / temporal factor, LoRA (r, alpha, merged), latent convention, resolutions, dtype;
* ``model.safetensors``: the decoder's full state dict -- the kept part of the 3D model with LoRA merged, plus the
  stitching layer (``model.*``, ``stitching.weight``, ``stitching.bias``). Self-contained: loading needs no base
  checkpoint (the whole kept model is stored, not a difference to the base).

``weights: "lora"`` variant (format version 2, :func:`save_decoder` with ``base_source``): like the published
checkpoints, the folder stores only what finetuning changed -- the unmerged peft LoRA factors, the LoRA layers'
biases, the DINO cls / register / mask tokens and the stitching layer -- and names its base model in
``base_model.source`` (a hub id, or a path relative to the decoder folder) with the SHA-256 of the base weights
file. Loading builds the base, cuts it, injects the same LoRA (``lora``: r, alpha, targets, bias), loads the
tensors strictly and merges. A base whose weights differ from the recorded hash is refused.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..models import (
    VGGT,
    AnySplat,
    AnySplatConfig,
    CheckpointMismatchError,
    MVDUSt3R,
    MVDUSt3RConfig,
    VGGTConfig,
    from_pretrained,
)
from ..models.loading import (
    _fmt,
    _offline,
    _offline_message,
    load_checkpoint_into,
    mismatch_lines,
)
from .config import RELEASED_CONFIG, StitchingConfig
from .decoder import VAE_SCALE, StitchedDecoder, cut_index
from .layer import StitchingLayer
from .lora import (
    has_lora,
    loralib_shapes,
    loralib_target_modules,
    merge_loralib_,
    merged_state_dict,
)

__all__ = [
    "CONFIG_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PUBLISHED_FILES",
    "PUBLISHED_REPO",
    "WEIGHTS_NAME",
    "import_published_state",
    "load_decoder",
    "load_published_stitched",
    "save_decoder",
    "use_per_pixel_gaussians",
]

logger = logging.getLogger(__name__)

PUBLISHED_REPO = "HJGO/VIST3A"
PUBLISHED_FILES = ("anysplat_stitched.pth", "anysplat_stitched_21_frame_extended.pth")
BASE_REPOS = {"anysplat": "lhjiang/anysplat", "vggt": "facebook/VGGT-1B", "mvdust3r": "Zhenggang/MV-DUSt3R"}
_MODEL_CLASSES = {"anysplat": (AnySplat, AnySplatConfig), "vggt": (VGGT, VGGTConfig),
                  "mvdust3r": (MVDUSt3R, MVDUSt3RConfig)}
PUBLISHED_TOP_KEYS = ("lora", "stitching_layer", "mask_token", "cls_token", "register_tokens")
CONFIG_NAME = "decoder_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_NAME = "vist3a-stitched-decoder"
FORMAT_VERSION = 2  # 2 added the "lora" weights variant; full-weight folders are still written as version 1
LATENT_CONVENTION = "raw Wan latent = z*std + mean (un-normalised VAE latent, as fed to the VAE decoder)"
#: LoRA entries of the training-only distillation copies (present when the base config has ``distill: true``)
DISTILL_PREFIX = "encoder.distill_"
_DINO_BLOCK = re.compile(r"^encoder\.aggregator\.patch_embed\.blocks\.(\d+)\.")


# ============================================================================================ hub helpers
def _hub_file(repo_id: str, filename: str, revision: str | None, caller: str, example: str) -> Path:
    """Download one file (or use the cache); offline / network errors -> OSError in from_pretrained's style."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception as err:  # offline and not cached, no network, missing repo / file, authentication
        if _offline():
            err = RuntimeError(f"HF_HUB_OFFLINE is set and {filename} is not cached ({type(err).__name__}: {err})")
        raise OSError(_offline_message(repo_id, err, caller=caller, example=example)) from err


# ============================================================================================ published import
def _published_error(source: str, lines: list[str], what_to_do: str) -> CheckpointMismatchError:
    head = f"load_published_stitched: {source} does not match the stitched AnySplat decoder."
    return CheckpointMismatchError("\n".join([head, *lines, f"  What to do: {what_to_do}"]))


def _check_top_level(ckpt: Any, source: str) -> None:
    if not isinstance(ckpt, Mapping):
        raise _published_error(source, [f"  expected a dict, got {type(ckpt).__name__}"],
                               f"pass a VIST3A stitched checkpoint ({', '.join(PUBLISHED_FILES)})")
    missing = set(PUBLISHED_TOP_KEYS) - set(ckpt)
    unexpected = set(ckpt) - set(PUBLISHED_TOP_KEYS)
    if missing or unexpected:
        lines = []
        if missing:
            lines.append(f"  missing top-level entries: {_fmt(missing)}")
        if unexpected:
            lines.append(f"  unexpected top-level entries: {_fmt(unexpected)}")
        hint = (" (this looks like a plain state dict / one of our folders: use load_decoder or "
                "vist3a.models.from_pretrained)" if any(str(k).startswith(("encoder.", "model.")) for k in ckpt)
                else "")
        raise _published_error(source, lines, f"pass the published .pth with entries {PUBLISHED_TOP_KEYS}{hint}")
    if not isinstance(ckpt["lora"], Mapping) or not isinstance(ckpt["stitching_layer"], Mapping):
        raise _published_error(source, ["  'lora' and 'stitching_layer' must be dicts of tensors"],
                               "pass an unmodified published checkpoint")
    bad = [f"{group}.{k}" for group in ("lora", "stitching_layer") for k, v in ckpt[group].items()
           if not isinstance(v, Tensor)]
    bad += [k for k in PUBLISHED_TOP_KEYS[2:] if not isinstance(ckpt[k], Tensor)]
    if bad:
        raise _published_error(source, [f"  entries that are not tensors: {_fmt(bad)}"],
                               "pass an unmodified published checkpoint")


def _check_cut(lora: Mapping[str, Tensor], cut: str, dino_depth: int, source: str) -> None:
    blocks = {int(m.group(1)) for k in lora if (m := _DINO_BLOCK.match(k))}
    if not blocks:
        line = ("  its 'lora' entry holds no LoRA for the DINO blocks (encoder.aggregator.patch_embed.blocks.*): it "
                "is empty or for another model")
        raise _published_error(source, [line], "pass an unmodified published VIST3A checkpoint")
    kept = max(blocks) + 1
    looks_like = dino_depth - kept
    if looks_like != cut_index(cut):
        raise _published_error(
            source, [(f"  it holds LoRA for {kept} DINO blocks (patch_embed.blocks.0..{kept - 1}), i.e. it was "
                      f"trained at cut 'enc_blocks_{looks_like}', not {cut!r}")],
            f"pass cut='enc_blocks_{looks_like}' (the released checkpoints use 'enc_blocks_2')")


def drop_distill_entries(lora: Mapping[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """``lora`` without the ``encoder.distill_*`` entries (LoRA of the distillation copies that a ``distill: true``
    base config adds; they never run in the stitched forward)."""
    kept = {k: v for k, v in lora.items() if not str(k).startswith(DISTILL_PREFIX)}
    dropped = len(lora) - len(kept)
    if dropped:
        modules = {str(k).rsplit(".", 1)[0] for k in lora if str(k).startswith(DISTILL_PREFIX)}
        logger.info("%s: dropped %d entries (%d LoRA modules) of the distillation copies (%s*; the base config had "
                    "distill: true); they never run in the stitched forward", source, dropped, len(modules),
                    DISTILL_PREFIX)
    return kept


def use_per_pixel_gaussians(decoder: StitchedDecoder | AnySplat, per_pixel: bool = True) -> StitchedDecoder | AnySplat:
    """Force one Gaussian per pixel (``config.voxelize = False``) on a stitched AnySplat decoder or an AnySplat, in
    place, instead of following the base config; a no-op for VGGT (point maps) or ``per_pixel=False``."""
    model = getattr(decoder, "model", decoder)
    cfg = getattr(model, "config", None)
    if per_pixel and getattr(cfg, "voxelize", False):
        cfg.voxelize = False
        logger.info("one Gaussian per pixel (the base config's voxelisation, voxel %s, is switched off)",
                    cfg.voxel_size)
    return decoder


@torch.no_grad()
def import_published_state(decoder: StitchedDecoder, ckpt: Mapping[str, Any], alpha: float = 32.0,
                           source: str = "checkpoint") -> dict[str, Any]:
    """Apply a published checkpoint dict to a freshly cut ``decoder`` in place (LoRA merged). Validates the whole
    structure first (missing / unexpected / mis-shaped keys -> :class:`CheckpointMismatchError`, nothing changed).
    Returns ``{"r": r, "alpha": alpha, "merged": True}``."""
    _check_top_level(ckpt, source)
    lora = drop_distill_entries(ckpt["lora"], source)
    model = decoder.model
    dino = model.aggregator.patch_embed
    _check_cut(lora, decoder.cut, dino.first_block + len(dino.blocks), source)
    targets = loralib_target_modules(model)
    if not targets:
        raise ValueError("import_published_state: the model has no Linear/Conv2d layers")
    first = next(iter(targets))
    a_first = lora.get(f"{first}.lora_A")
    k_first = 1 if isinstance(targets[first], torch.nn.Linear) else targets[first].kernel_size[0]
    r = int(a_first.shape[0]) // k_first if isinstance(a_first, Tensor) else None

    expected: dict[str, tuple[int, ...]] = {}
    for name, mod in targets.items():
        if r is not None:
            a_shape, b_shape = loralib_shapes(mod, r)
            expected[f"{name}.lora_A"], expected[f"{name}.lora_B"] = a_shape, b_shape
        if mod.bias is not None:
            expected[f"{name}.bias"] = tuple(mod.bias.shape)
    lines = []
    if r is None:
        lines.append(f"  missing key {first}.lora_A (cannot tell the LoRA rank)")
    missing = set(expected) - set(lora)
    unexpected = set(lora) - set(expected) - ({f"{first}.lora_A", f"{first}.lora_B"} if r is None else set())
    shapes = [f"{k}: checkpoint {tuple(lora[k].shape)} vs expected {expected[k]}" for k in sorted(set(expected)
              & set(lora)) if not isinstance(lora[k], Tensor) or tuple(lora[k].shape) != expected[k]]
    sl = ckpt["stitching_layer"]
    sl_expected = {"weight": tuple(decoder.stitching.weight.shape), "bias": tuple(decoder.stitching.bias.shape)}
    for key, shape in sl_expected.items():
        if key not in sl:
            lines.append(f"  missing key stitching_layer.{key}")
        elif tuple(sl[key].shape) != shape:
            shapes.append(f"stitching_layer.{key}: checkpoint {tuple(sl[key].shape)} vs expected {shape} (stitching "
                          f"config {decoder.stitching.config.to_string()})")
    lines += [f"  unexpected key stitching_layer.{k}" for k in sorted(set(sl) - set(sl_expected))]
    tokens = {"cls_token": dino.cls_token, "register_tokens": dino.register_tokens, "mask_token": dino.mask_token}
    shapes += [f"{k}: checkpoint {tuple(ckpt[k].shape)} vs expected {tuple(p.shape)}" for k, p in tokens.items()
               if tuple(ckpt[k].shape) != tuple(p.shape)]
    lines += mismatch_lines(missing, unexpected, shapes)
    if lines:
        raise _published_error(source, lines, "check that the file is a VIST3A stitched AnySplat checkpoint for this "
                                              "base model, cut and stitching config (released: base lhjiang/anysplat"
                                              f", cut enc_blocks_2, stitching {RELEASED_CONFIG})")

    scaling = float(alpha) / r
    for name, mod in targets.items():
        merge_loralib_(mod, lora[f"{name}.lora_A"], lora[f"{name}.lora_B"], scaling)
        if mod.bias is not None:
            mod.bias.copy_(lora[f"{name}.bias"].to(mod.bias.dtype))
    decoder.stitching.weight.copy_(sl["weight"])
    decoder.stitching.bias.copy_(sl["bias"])
    for key, param in tokens.items():
        param.copy_(ckpt[key].to(param.dtype))
    info = {"r": r, "alpha": float(alpha), "merged": True, "format": "loralib"}
    decoder.lora_info = info
    logger.info("imported %s: %d LoRA layers merged (r=%d, alpha=%s)", source, len(targets), r, alpha)
    return info


def _resolve_published(source: str | Path, revision: str | None) -> Path:
    path = Path(str(source)).expanduser()
    if path.is_file():
        return path
    name = str(source)
    if name.startswith(PUBLISHED_REPO + "/"):
        name = name[len(PUBLISHED_REPO) + 1:]
    if "/" in name or "\\" in name or not name.endswith((".pth", ".pt")):
        raise FileNotFoundError(f"load_published_stitched: {str(source)!r} is neither an existing file nor a file "
                                f"of {PUBLISHED_REPO} (e.g. {PUBLISHED_FILES[0]!r})")
    return _hub_file(PUBLISHED_REPO, name, revision, "load_published_stitched",
                     f"load_published_stitched('/path/to/{name}', base='/path/to/anysplat')")


def load_published_stitched(
    source: str | Path = PUBLISHED_FILES[0],
    base: AnySplat | str | Path | None = None,
    cut: str = "enc_blocks_2",
    stitching: str | StitchingConfig = RELEASED_CONFIG,
    alpha: float = 32.0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    per_pixel: bool = False,
) -> StitchedDecoder:
    """Build the published stitched AnySplat decoder in one call.

    Args:
        source: a local ``.pth`` or a file name in ``HJGO/VIST3A`` (``anysplat_stitched.pth``,
            ``anysplat_stitched_21_frame_extended.pth``), downloaded with ``hf_hub_download``.
        base: the base AnySplat: None = ``lhjiang/anysplat`` via :func:`vist3a.models.from_pretrained`, a hub id /
            local folder / weights file, or an AnySplat instance (used and modified in place).
        cut, stitching, alpha: the released values (``enc_blocks_2``, ``conv3d_k5x3x3_o1024_s1x2x2_p2x1x1``,
            LoRA alpha 32; the rank is read from the file).
        device, dtype: placement of the returned decoder (default: CPU, float32).
        per_pixel: one Gaussian per pixel even when the base config voxelises (default: follow the base config,
            like the official loader).
    Returns the decoder in eval mode with LoRA merged.
    """
    from ..io.weights import load_torch_file

    path = _resolve_published(source, revision)
    ckpt = load_torch_file(path, "stitched decoder checkpoint")
    _check_top_level(ckpt, str(path))
    dino_depth = (base.config.aggregator.dino_depth if isinstance(base, AnySplat)
                  else AnySplatConfig().aggregator.dino_depth)
    _check_cut(ckpt["lora"], cut, dino_depth, str(path))  # before the (large) base model is loaded
    if isinstance(base, VGGT):
        raise TypeError("load_published_stitched: the published checkpoints stitch AnySplat, not VGGT; pass an "
                        "AnySplat base (or none for lhjiang/anysplat)")
    if base is None or isinstance(base, (str, Path)):
        base = from_pretrained(BASE_REPOS["anysplat"] if base is None else base, model="anysplat")
    base = base.float()
    decoder = StitchedDecoder(base, cut, StitchingLayer(stitching))
    import_published_state(decoder, ckpt, alpha=alpha, source=str(path))
    decoder.base_id = BASE_REPOS["anysplat"]
    use_per_pixel_gaussians(decoder, per_pixel)
    del ckpt
    if device is not None or dtype is not None:
        decoder = decoder.to(device=device, dtype=dtype)
    return decoder.eval()


# ============================================================================================ our format
def _lora_summary(decoder: StitchedDecoder) -> dict[str, Any] | None:
    cfg = getattr(decoder.model, "peft_config", {}).get("default") if has_lora(decoder) else None
    if cfg is not None:
        return {"r": cfg.r, "alpha": cfg.lora_alpha, "merged": True, "format": "peft (merged on save)"}
    info = getattr(decoder, "lora_info", None)
    return dict(info) if info else None


def decoder_config(decoder: StitchedDecoder, dtype: torch.dtype, video_size: int = 512) -> dict[str, Any]:
    """The ``decoder_config.json`` content for ``decoder`` (see the module docstring); ``video_size`` is the video
    resolution it was trained for (the 3D size follows: video / 16 * 14)."""
    model = decoder.model
    ppt, patch = decoder.video_pixels_per_token, decoder.patch_size
    model_size = decoder.model_size_for((video_size, video_size))[0]
    return {
        "format": FORMAT_NAME,
        "format_version": 1,
        "base_model": {"type": decoder.kind, "id": getattr(decoder, "base_id", BASE_REPOS[decoder.kind]),
                       "config": model.config.to_dict()},
        "cut": decoder.cut,
        "stitching": decoder.stitching.config.to_string(),
        "latent_channels": decoder.stitching.in_channels,
        "temporal_factor": decoder.stitching.temporal_factor,
        "lora": _lora_summary(decoder),
        "latent_convention": LATENT_CONVENTION,
        "resolution": {"vae_scale": VAE_SCALE, "video_pixels_per_token": ppt, "model_patch": patch,
                       "rule": (f"3D / {patch} == stitching conv output on the latent (video / {VAE_SCALE})"
                                if decoder.kind == "mvdust3r" else f"video / {ppt} == 3D / {patch}"),
                       "video": video_size, "model": model_size},
        "needs_frames": decoder.needs_frames,
        "outputs": list(decoder.outputs),
        "dtype": str(dtype).replace("torch.", ""),
        "weights": "full",
        "weights_note": f"{WEIGHTS_NAME}: full state dict of the kept 3D model (LoRA merged) + stitching layer",
    }


_TOKENS = ("cls_token", "register_tokens", "mask_token")


def lora_delta_state(decoder: StitchedDecoder) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors a ``weights: "lora"`` folder stores (module docstring) and the LoRA description
    ``{"r", "alpha", "targets", "bias", "merged": False}``. The decoder must hold one unmerged peft adapter."""
    from .lora import _lora_layers

    cfg = getattr(decoder.model, "peft_config", {}).get("default") if has_lora(decoder) else None
    if cfg is None:
        raise ValueError("save_decoder(base_source=...): the decoder has no unmerged LoRA adapter; a merged decoder "
                         "can only be saved with its full weights (omit base_source)")
    from .lora import LoralibConv2d

    if any(isinstance(m, LoralibConv2d) for m in decoder.modules()):
        raise ValueError("save_decoder(base_source=...): the decoder has loralib Conv2d LoRA (the official training "
                         "recipe); save it with its full weights (omit base_source)")
    layers = {f"model.{n}." for n in _lora_layers(decoder.model)}
    state = decoder.state_dict()
    keep = {}
    for key, value in state.items():
        prefix = next((p for p in layers if key.startswith(p)), None)
        rest = key[len(prefix):] if prefix else ""
        if (prefix and (".lora_" in key or rest == "base_layer.bias")) or key.startswith("stitching.") or \
                key.rsplit(".", 1)[-1] in _TOKENS:
            keep[key] = value
    info = {"r": int(cfg.r), "alpha": float(cfg.lora_alpha), "targets": sorted(cfg.target_modules),
            "bias": str(cfg.bias), "merged": False, "format": "peft (unmerged)"}
    return keep, info


def _is_hub_id(source: str, folder: Path) -> bool:
    """A base source is a hub id when it is ``owner/name`` and no such path exists beside the decoder folder."""
    return (source.count("/") == 1 and not source.startswith((".", "/", "~")) and not (folder / source).exists()
            and not Path(source).is_absolute())


def _relative(folder: Path, source: str) -> Path:
    """``source`` (absolute, or relative to ``folder``), normalised lexically (``folder`` need not exist yet)."""
    import os

    return Path(source) if Path(source).is_absolute() else Path(os.path.normpath(folder / source))


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_decoder(decoder: StitchedDecoder, folder: str | Path, dtype: torch.dtype | None = None,
                 video_size: int = 512, base_source: str | None = None) -> Path:
    """Write ``decoder_config.json`` + ``model.safetensors`` into ``folder`` (created if needed).

    Unmerged peft LoRA is merged into the saved weights (the decoder itself is not changed). ``dtype`` casts the
    stored floating tensors (default: the decoder's); ``video_size`` is recorded as the trained video resolution.
    Each file is replaced atomically and everything is prepared before the first write, so a failing save leaves
    earlier files untouched.

    ``base_source``: write the ``weights: "lora"`` variant instead (module docstring): only the finetuned tensors,
    with the base named by a hub id or a folder path relative to ``folder`` (its ``model.safetensors`` is hashed
    now, so it must exist)."""
    from safetensors.torch import save_file

    from ..io.atomic import atomic_path, atomic_write

    folder = Path(folder)
    dtype = dtype or decoder.stitching.weight.dtype
    config = decoder_config(decoder, dtype, video_size)
    if base_source is None:
        state = merged_state_dict(decoder)
    else:
        state, lora = lora_delta_state(decoder)
        base_dir = None if _is_hub_id(base_source, folder) else _relative(folder, base_source)
        config.update(format_version=2, weights="lora", lora=lora,
                      weights_note=f"{WEIGHTS_NAME}: peft LoRA factors, LoRA-layer biases, DINO tokens and the "
                                   "stitching layer; everything else comes from base_model.source")
        config["base_model"]["source"] = base_source
        if base_dir is not None:
            weights = base_dir / WEIGHTS_NAME
            if not weights.is_file():
                raise FileNotFoundError(f"save_decoder: base_source {base_source!r} resolves to {base_dir}, which "
                                        f"has no {WEIGHTS_NAME}; save the base model there first")
            config["base_model"]["sha256"] = _sha256(weights)
    tensors = {k: v.detach().to(dtype=dtype if v.is_floating_point() else v.dtype).contiguous().cpu()
               for k, v in state.items()}
    text = json.dumps(config, indent=2)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(tensors, tmp, metadata={"format": FORMAT_NAME, "format_version": str(config["format_version"])})
    with atomic_write(folder / CONFIG_NAME, "w") as fh:
        fh.write(text)
    logger.info("saved stitched decoder to %s (%d tensors)", folder, len(tensors))
    return folder


def _resolve_ours(source: str | Path, revision: str | None) -> tuple[Path, Path]:
    path = Path(str(source)).expanduser()
    if path.is_dir():
        return path / CONFIG_NAME, path / WEIGHTS_NAME
    if path.is_file():
        if path.name == CONFIG_NAME:
            return path, path.parent / WEIGHTS_NAME
        return path.parent / CONFIG_NAME, path
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        example = "load_decoder('/path/to/folder')"
        cfg = _hub_file(text, CONFIG_NAME, revision, "load_decoder", example)
        return cfg, _hub_file(text, WEIGHTS_NAME, revision, "load_decoder", example)
    raise FileNotFoundError(f"load_decoder: {text!r} is neither an existing folder / file nor a hub id")


def _config_error(cfg_file: Path, problem: str) -> ValueError:
    return ValueError(f"load_decoder: {cfg_file}: {problem}. Use the {CONFIG_NAME} written by save_decoder together "
                      f"with its {WEIGHTS_NAME} (training/ writes both), or the published .pth")


_REQUIRED = {"cut": str, "stitching": str, "base_model": dict}


def read_decoder_config(cfg_file: str | Path) -> dict[str, Any]:
    """Read and validate a ``decoder_config.json`` (every entry loading needs, with its type) without building
    anything; one clear ValueError naming the file and the entry otherwise. Used by the pre-flight checks too."""
    from ..io.weights import read_json_file

    cfg_file = Path(cfg_file)
    cfg = read_json_file(cfg_file, "decoder config")
    if cfg.get("format") != FORMAT_NAME:
        raise ValueError(f"load_decoder: {cfg_file} is not a stitched-decoder config (format {cfg.get('format')!r}, "
                         f"expected {FORMAT_NAME!r})")
    version = cfg.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise _config_error(cfg_file, f"format_version must be a whole number, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"load_decoder: {cfg_file} has format_version {version}; this vist3a reads up to "
                         f"{FORMAT_VERSION}. Update vist3a")
    for key, typ in _REQUIRED.items():
        if key not in cfg:
            raise _config_error(cfg_file, f"the entry {key!r} is missing")
        if not isinstance(cfg[key], typ):
            raise _config_error(cfg_file, f"{key!r} must be a {typ.__name__}, got {type(cfg[key]).__name__}")
    for key in ("latent_channels", "temporal_factor"):
        value = cfg.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _config_error(cfg_file, f"{key!r} must be a positive whole number, got {value!r}")
    if not isinstance(cfg.get("resolution", {}), dict):
        raise _config_error(cfg_file, "'resolution' must be a JSON object")
    base = cfg["base_model"]
    if base.get("type") not in _MODEL_CLASSES:
        raise ValueError(f"load_decoder: {cfg_file}: unknown base model type {base.get('type')!r} (anysplat, vggt or "
                         "mvdust3r)")
    weights = cfg.get("weights", "full")
    if weights not in ("full", "lora"):
        raise _config_error(cfg_file, f"'weights' must be \"full\" or \"lora\", got {weights!r}")
    if weights == "full" and not isinstance(base.get("config"), dict):
        raise _config_error(cfg_file, "base_model.config (the 3D model's full config) is missing")
    if weights == "lora":
        if not isinstance(base.get("source"), str) or not base["source"]:
            raise ValueError(f"load_decoder: {cfg_file} stores LoRA weights but names no base_model.source")
        lora = cfg.get("lora")
        if not isinstance(lora, dict) or any(k not in lora for k in ("r", "alpha", "targets")):
            raise _config_error(cfg_file, "the lora entry (r, alpha, targets) is missing or incomplete")
    return cfg


def _meta_decoder(cfg: dict[str, Any], cfg_file: Path) -> StitchedDecoder:
    """The decoder a full-weights config describes, on the meta device (no memory, no weights)."""
    base = cfg["base_model"]
    cls, cfg_cls = _MODEL_CLASSES[base["type"]]
    try:
        with torch.device("meta"):
            model = cls(cfg_cls.from_dict(base["config"]))
            layer = StitchingLayer(cfg["stitching"], in_channels=cfg.get("latent_channels", 16),
                                   temporal_factor=cfg.get("temporal_factor", 4))
            return StitchedDecoder(model, cfg["cut"], layer, cfg.get("resolution", {}).get("video_pixels_per_token",
                                                                                           16))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, AssertionError) as err:
        raise _config_error(cfg_file, f"it describes no buildable decoder ({type(err).__name__}: {err})") from None


def check_decoder_folder(folder: str | Path) -> dict[str, Any]:
    """Everything :func:`load_decoder` will check, without reading a single weight: the config (every entry), the
    weights file's header, and -- for full-weights folders -- every key and shape of the header against the model
    the config describes (built on the meta device). Raises what loading would raise; returns the config."""
    from safetensors import safe_open

    from ..io.weights import check_weights_file

    folder = Path(folder)
    cfg_file, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    cfg = read_decoder_config(cfg_file)
    check_weights_file(weights, "decoder weights")
    if cfg.get("weights") == "lora":
        return cfg  # its tensors are checked against the base model when it loads
    own = {k: tuple(v.shape) for k, v in _meta_decoder(cfg, cfg_file).state_dict().items()}
    with safe_open(str(weights), framework="pt") as fh:
        stored = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118 (no __iter__)
    missing, unexpected = set(own) - set(stored), set(stored) - set(own)
    shapes = [f"{k}: checkpoint {stored[k]} vs model {own[k]}" for k in sorted(set(own) & set(stored))
              if stored[k] != own[k]]
    if missing or unexpected or shapes:
        head = f"load_decoder: {weights} does not match the decoder {cfg_file} describes:"
        fix = f"  What to do: use the {WEIGHTS_NAME} written together with this {CONFIG_NAME} by save_decoder"
        raise CheckpointMismatchError("\n".join([head, *mismatch_lines(missing, unexpected, shapes), fix]))
    return cfg


def load_decoder(source: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 revision: str | None = None, per_pixel: bool = False) -> StitchedDecoder:
    """Load a decoder saved by :func:`save_decoder` from a folder, its ``model.safetensors`` /
    ``decoder_config.json``, or a hub repo id. No base checkpoint is needed. Returns it in eval mode.
    ``per_pixel``: one Gaussian per pixel even when the stored base config voxelises."""
    return use_per_pixel_gaussians(_load_decoder(source, device, dtype, revision), per_pixel)


def _load_decoder(source: str | Path, device: str | torch.device | None, dtype: torch.dtype | None,
                  revision: str | None) -> StitchedDecoder:
    from ..io.weights import check_weights_file, load_safetensors

    cfg_file, weights = _resolve_ours(source, revision)
    for f in (cfg_file, weights):
        if not f.is_file():
            raise FileNotFoundError(f"load_decoder: {f} is missing; a stitched-decoder folder holds {CONFIG_NAME} "
                                    f"and {WEIGHTS_NAME} (written by save_decoder). For the published VIST3A .pth "
                                    "use load_published_stitched")
    cfg = read_decoder_config(cfg_file)
    base = cfg["base_model"]
    if cfg.get("weights") == "lora":
        return _load_lora_decoder(cfg, cfg_file, weights, device, dtype, revision)
    check_weights_file(weights, "decoder weights")  # a truncated file fails here, before the model is built
    decoder = _meta_decoder(cfg, cfg_file)
    decoder = decoder.float()  # on the meta device until it adopts the file's tensors: one copy in memory, not two
    state = load_safetensors(weights, "decoder weights")
    try:
        load_checkpoint_into(decoder, state, source=str(weights))
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f"{err}\n  ({weights} must be the {WEIGHTS_NAME} written together with "
                                      f"{cfg_file} by save_decoder; keys start with 'model.' or 'stitching.')"
                                      ) from None
    del state
    decoder.base_id = base.get("id")
    if cfg.get("lora"):
        decoder.lora_info = cfg["lora"]
    if device is not None or dtype is not None:
        decoder = decoder.to(device=device, dtype=dtype)
    return decoder.eval()


def _resolve_base(base: dict[str, Any], cfg_file: Path, revision: str | None) -> Path:
    source = str(base.get("source") or "")
    if not source:
        raise ValueError(f"load_decoder: {cfg_file} stores LoRA weights but names no base_model.source")
    folder = cfg_file.parent
    if _is_hub_id(source, folder):
        from ..models.loading import _download

        return _download(source, revision)
    path = _relative(folder, source)
    if not (path / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"load_decoder: the base model of {cfg_file} is {source!r} -> {path}, which has no "
                                f"{WEIGHTS_NAME}; keep the decoder folder next to its base model")
    return path


def _load_lora_decoder(cfg: dict, cfg_file: Path, weights: Path, device, dtype, revision) -> StitchedDecoder:
    """The ``weights: "lora"`` variant: base -> cut -> LoRA injected -> finetuned tensors loaded strictly -> merged."""
    from ..io.weights import check_weights_file, load_safetensors
    from .lora import add_lora, merge_lora

    base = cfg["base_model"]
    check_weights_file(weights, "decoder LoRA weights")  # before the base model is loaded
    base_dir = _resolve_base(base, cfg_file, revision)
    if base.get("sha256") and (base_dir / WEIGHTS_NAME).is_file():
        got = _sha256(base_dir / WEIGHTS_NAME)
        if got != base["sha256"]:
            raise ValueError(f"load_decoder: {cfg_file} was trained on a base model whose {WEIGHTS_NAME} has SHA-256 "
                             f"{base['sha256'][:16]}..., but {base_dir / WEIGHTS_NAME} has {got[:16]}...; use the "
                             "base it was trained on")
    model = from_pretrained(base_dir, model=base["type"])
    stored = base.get("config")
    if stored is not None and model.config.to_dict() != stored:
        raise ValueError(f"load_decoder: the base model at {base_dir} has another config than the one {cfg_file} "
                         "was trained on")
    lora = cfg.get("lora") or {}
    try:
        layer = StitchingLayer(cfg["stitching"], in_channels=cfg.get("latent_channels", 16),
                               temporal_factor=cfg.get("temporal_factor", 4))
        decoder = StitchedDecoder(model.float(), cfg["cut"], layer,
                                  cfg.get("resolution", {}).get("video_pixels_per_token", 16))
        add_lora(decoder, r=int(lora["r"]), alpha=float(lora["alpha"]), target_modules=list(lora["targets"]),
                 bias=str(lora.get("bias", "lora_only")))
    except KeyError as exc:
        raise ValueError(f"load_decoder: {cfg_file}: the lora entry lacks {exc}") from None
    except (TypeError, ValueError, AttributeError, IndexError, AssertionError) as err:
        raise _config_error(cfg_file, f"it describes no buildable decoder ({type(err).__name__}: {err})") from None
    state = load_safetensors(weights, "decoder LoRA weights")
    expected, _ = lora_delta_state(decoder)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in sorted(
              set(state) & set(expected)) if tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError("\n".join([f"load_decoder: {weights} does not fit {cfg_file}:"]
                                                + mismatch_lines(missing, unexpected, shapes)))
    own = decoder.state_dict()
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))
    merge_lora(decoder)
    decoder.base_id = base.get("id")
    decoder.lora_info = {**lora, "merged": True}
    if device is not None or dtype is not None:
        decoder = decoder.to(device=device, dtype=dtype)
    return decoder.eval()
