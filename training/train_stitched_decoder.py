"""Finetune a stitched decoder (Wan latents -> stitching layer -> AnySplat / VGGT) self-supervised: the frozen
original 3D model on the real frames gives the targets, the stitched decoder on the Wan latents of the same frames is
trained with the paper's weighted L1 (training/losses.py).

Usage::

    torchrun --nproc_per_node 8 -m training.train_stitched_decoder --data /data/DL3DV-960P \\
        --model anysplat --model-path lhjiang/anysplat --vae-path Wan-AI/Wan2.1-T2V-1.3B-Diffusers \\
        --init-stitching runs/layer_search --steps 20000 --output runs/stitched

    python -m training.train_stitched_decoder --preset tiny --synthetic 4 --views 9 --steps 20 --output /tmp/st

    python -m training.train_stitched_decoder ... --output runs/stitched --resume   # continue from the latest step

Recipes (``--recipe``; default ``official``, the released ``model_stitching_training.py`` that produced
``anysplat_stitched.pth``; ``paper`` is the paper's description as this pack first implemented it). Both: the
weights of training/losses.py, AdamW lr 2e-4, no weight decay, 500 warmup steps + cosine, grad clip 1.0, views
{9, 13, 17, 21}. They differ in

=====================  ==========================================  ==========================================
                       official                                    paper
=====================  ==========================================  ==========================================
depth-gradient term    released form: differences along H and      pooled image gradients (x, y) per view
                       across views, / (B V H), strided scales     (losses.gradient_l1)
                       (losses.official_gradient_l1)
extrinsics term        camera-to-world 4x4                         world-to-camera 3x4
heads' RGB (--frames)  the real frames                             the VAE-decoded frames
conv LoRA              loralib (A (r k, in k), B (out k, r k))     peft (Conv2d(in, r, k), Conv2d(r, out, 1))
bf16 (CUDA only)       aggregator weights cast to bf16 (AnySplat   autocast only, weights fp32
                       loads it so; cast_to_bfloat16), heads fp32
=====================  ==========================================  ==========================================

Both voxelisation settings of a base config train per pixel (the official training switches voxelize off on both
models); the exported decoder keeps the base config's setting, which the official inference follows.

Trained: peft LoRA (r=64, alpha=32) on every nn.Linear / nn.Conv2d of the kept 3D model (VGGT's track head excluded:
no loss reaches it), the stitching layer in full and DINO's cls / register / mask tokens; everything else is frozen.
AdamW (lr 2e-4, no weight decay), linear warmup + cosine decay, grad-norm clip 1.0, bf16 autocast on CUDA (heads in
fp32), optional gradient checkpointing. Each step draws its number of views from ``--views`` (4k + 1 frames) with a
generator seeded by (seed, step), so every rank agrees without communication and a resumed run draws the same.

Data: item ``k`` of step ``s`` on rank ``r`` is clip ``(s * world + r) * batch + k`` of a deterministic dataset
(``--data``: training/data.py FolderClips; ``--synthetic N``: N procedural scenes), frames at the video size (VAE)
and at the 3D-model size (original model); ``video / 16 == model / 14`` (512 <-> 448). The latent sample uses a
generator seeded by (seed, step, rank). AnySplat's pixel-reading heads get the VAE-decoded frames resized to the 3D
size (``--frames decoded``, as in text-to-3D inference) or the real frames (``--frames real``).

Writes only into ``--output`` (rank 0; files atomically):

* ``train_config.json`` -- the resolved options;
* ``checkpoints/step_XXXXXX/`` (state.safetensors + state.json, see training/runtime.py) every ``--save-every``
  steps, at the end and when stopped (SIGINT / SIGTERM: exit code 130 / 143 after saving; ``--stop-after K``: 0);
* ``metrics.jsonl`` -- one line per step (loss, terms, lr, grad norm, views, cumulative training seconds ``time``),
  averaged over ranks;
* ``decoder/`` -- the finetuned decoder (LoRA merged) in our format: ``vist3a.stitching.load_decoder(<out>/decoder)``,
  the pipelines (``decoder=<out>/decoder``) and ComfyUI's LoadStitchedDecoder (copy the folder into
  ``models/vist3a/``).
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as `python training/<script>.py`: import it as part of the training package
    import os as _os
    import sys as _sys

    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    __package__ = "training"  # noqa: A001 (PEP 366: makes the relative imports below work)

import argparse
import contextlib
import copy
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from vist3a.io.atomic import atomic_write
from vist3a.stitching.config import RELEASED_CONFIG, StitchingConfig
from vist3a.stitching.decoder import StitchedDecoder
from vist3a.stitching.layer import StitchingLayer

from .data import (
    MVDUST3R_CONFIG,
    FolderClips,
    SyntheticClips,
    check_resolutions,
    default_sizes,
    default_stitching_config,
    find_scenes,
    is_micro_world,
    micro_world_clips,
)
from .losses import RECIPES, loss_weights, stitched_loss
from .runtime import (
    EXIT_SIGINT,
    EXIT_SIGTERM,  # noqa: F401 (re-exported: the exit codes of this CLI)
    DistContext,
    StopRequest,
    all_reduce_mean,
    capture_rng_state,
    cleanup_distributed,
    cosine_with_warmup,
    gather_objects,
    init_distributed,
    latest_checkpoint,
    load_training_state,
    restore_rng_state,
    save_training_state,
)

__all__ = ["StepBatches", "build_parser", "build_student", "main", "parse_views", "run", "trainable_tensors",
           "views_for_step"]

logger = logging.getLogger("vist3a.train_stitched_decoder")

DEFAULT_VIEWS = "9,13,17,21"
CHECKPOINTS = "checkpoints"
DECODER = "decoder"
METRICS = "metrics.jsonl"
CONFIG = "train_config.json"
#: options that must not change when resuming (the run would no longer continue the same schedule / data)
RESUME_KEYS = ("recipe", "model", "model_path", "preset", "cut", "config", "views", "vae_size", "model_size", "batch_size",
               "steps", "seed", "lr", "weight_decay", "warmup", "min_lr_ratio", "lora_rank", "lora_alpha", "frames",
               "latent_mean", "synthetic", "data", "window", "image_dir", "init_stitching", "init_decoder")


# ============================================================================================ arguments
def parse_views(spec: str, temporal_factor: int = 4) -> tuple[int, ...]:
    """``"9,13,17,21"`` -> (9, 13, 17, 21); each count must be ``temporal_factor * k + 1`` (Wan: 4k + 1)."""
    try:
        views = tuple(sorted({int(v) for v in str(spec).split(",") if v.strip()}))
    except ValueError:
        raise ValueError(f"--views {spec!r}: give comma-separated frame counts, e.g. {DEFAULT_VIEWS}") from None
    if not views:
        raise ValueError(f"--views {spec!r}: no frame counts given; e.g. {DEFAULT_VIEWS}")
    bad = [v for v in views if v < 1 or (v - 1) % temporal_factor]
    if bad:
        raise ValueError(f"--views {spec!r}: {bad} not of the form {temporal_factor}k + 1 (the Wan VAE encodes "
                         f"{temporal_factor}k + 1 frames); use e.g. {DEFAULT_VIEWS}")
    return views


def views_for_step(seed: int, step: int, views: Sequence[int]) -> int:
    """The view count of global step ``step`` (0-based): a seeded draw from ``views``, identical on every rank and
    on resume (no state to save)."""
    return random.Random(f"vist3a-views:{seed}:{step}").choice(list(views))


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train_stitched_decoder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", help="folder of scenes (ROOT/<scene>/*.png, DL3DV ROOT/1K/<scene>/images_4/*.png, ...) "
                                  "or a micro world (python -m training.micro world)")
    d.add_argument("--synthetic", type=int, metavar="N", default=None,
                   help="N procedural synthetic scenes instead of --data (tests, smoke runs)")
    d.add_argument("--image-dir", default=None, help="image sub-folder of each scene (default: images_4, images, ...)")
    d.add_argument("--views", default=DEFAULT_VIEWS,
                   help=f"frame counts (4k+1) to draw from per step (default {DEFAULT_VIEWS})")
    d.add_argument("--window", type=int, default=50, help="frames per scene window (default 50)")
    d.add_argument("--vae-size", type=int, default=None, help="video frame size (default 512; tiny: 64)")
    d.add_argument("--model-size", type=int, default=None, help="3D-model frame size (default 448; tiny: 56)")
    d.add_argument("--frames", choices=("decoded", "real"), default=None,
                   help="RGB for AnySplat's pixel-reading heads: VAE-decoded (as at inference) or real (default: "
                        "real for --recipe official, decoded for paper)")
    d.add_argument("--batch-size", type=int, default=1, help="clips per rank and step (default 1)")
    d.add_argument("--workers", type=int, default=0, help="DataLoader workers per rank (default 0)")
    d.add_argument("--seed", type=int, default=0)
    m = p.add_argument_group("models")
    m.add_argument("--recipe", choices=RECIPES, default="official",
                   help="official (default): the released training code that produced the published decoder; "
                        "paper: the paper's description (module docstring lists the differences)")
    m.add_argument("--model", choices=("anysplat", "vggt", "mvdust3r"), default="anysplat",
                   help="3D model (mvdust3r: Zhenggang/MV-DUSt3R, splats and pointmaps; its stitching conv "
                        f"defaults to the paper's {MVDUST3R_CONFIG} at 384 px video / 224 px frames)")
    m.add_argument("--model-path", default=None, help="hub id / folder / weights of the ORIGINAL 3D model")
    m.add_argument("--vae", choices=("wan", "cogvideox", "hunyuan", "svd"), default="wan",
                   help="video VAE whose latents the decoder reads (default wan = Wan 2.1, the published pairing; "
                        "hunyuan / svd / cogvideox: the paper's other pairings; decoded frames need wan, the others "
                        "train on real frames)")
    m.add_argument("--vae-path", default=None, help="VAE: diffusers folder / hub id (a pipeline's vae/)")
    m.add_argument("--preset", choices=("tiny",), default=None,
                   help="tiny: tiny random AnySplat/VGGT + tiny Wan VAE (tests, smoke runs)")
    m.add_argument("--cut", default=None, help="cut point enc_blocks_k (default: from --init-stitching, else "
                                               "enc_blocks_2)")
    m.add_argument("--config", default=None, help=f"stitching conv (default {RELEASED_CONFIG}, tiny: o64)")
    m.add_argument("--init-stitching", default=None,
                   help="find_stitching_layer output: its folder (best layer) or a stitching_layer_*.safetensors")
    m.add_argument("--init-decoder", default=None,
                   help="start from a stitched decoder: our folder (save_decoder) or a published VIST3A .pth")
    m.add_argument("--latent-mean", action="store_true", help="encoder mean instead of a latent sample")
    m.add_argument("--device", default=None, help="default cuda:<local rank> if available, else cpu")
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=20000, help="total optimizer steps (default 20000)")
    o.add_argument("--lr", type=float, default=2e-4)
    o.add_argument("--weight-decay", type=float, default=0.0)
    o.add_argument("--warmup", type=int, default=500, help="linear warmup steps (default 500)")
    o.add_argument("--min-lr-ratio", type=float, default=0.0, help="final lr / lr of the cosine (default 0)")
    o.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (default 1.0; 0: off)")
    o.add_argument("--lora-rank", type=int, default=64)
    o.add_argument("--lora-alpha", type=float, default=32.0)
    o.add_argument("--no-bf16", action="store_true", help="no bf16 autocast on CUDA (it is never used on CPU)")
    o.add_argument("--gradient-checkpointing", action="store_true", help="recompute the kept blocks in backward")
    r = p.add_argument_group("run")
    r.add_argument("--output", required=True, help="output folder (nothing is written elsewhere)")
    r.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    r.add_argument("--save-every", type=int, default=1000, help="checkpoint every N steps (default 1000)")
    r.add_argument("--keep-last", type=int, default=3, help="checkpoints kept (default 3; 0: all)")
    r.add_argument("--stop-after", type=int, default=None, metavar="K",
                   help="stop (checkpoint, exit 0) after K steps of this run, e.g. to fit a job time limit")
    r.add_argument("--log-every", type=int, default=10, help="log a line every N steps (default 10)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if (args.data is None) == (args.synthetic is None):
        raise ValueError("give exactly one of --data DIR (folder of scenes) and --synthetic N")
    if args.synthetic is not None and args.synthetic < 1:
        raise ValueError(f"--synthetic {args.synthetic}: need at least 1 scene")
    if args.data is not None and not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data {args.data}: no such folder; point it at a folder of scenes")
    if args.preset is None and not args.model_path:
        raise ValueError("--model-path (hub id or folder of the original AnySplat / VGGT) is required, or use "
                         "--preset tiny")
    if args.preset is None and not args.vae_path:
        raise ValueError("--vae-path (Wan 2.1 VAE folder / hub id) is required, or use --preset tiny")
    if args.init_stitching and args.init_decoder:
        raise ValueError("give at most one of --init-stitching and --init-decoder")
    for name in ("steps", "batch_size", "save_every", "log_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("warmup", "workers", "keep_last"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.stop_after is not None and args.stop_after < 1:
        raise ValueError(f"--stop-after must be >= 1, got {args.stop_after}")
    if args.lr <= 0 or args.lora_rank < 1:
        raise ValueError("--lr must be > 0 and --lora-rank >= 1")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} is a file; give a folder")
    # cheap checks before any model is loaded (repeated against the real VAE / stitching layer later)
    parse_views(args.views)
    tiny = args.preset == "tiny"
    vae_size, model_size = default_sizes(args.model, tiny)
    if args.model == "mvdust3r":
        text = args.config or (init_stitching_config(args.init_stitching) if args.init_stitching else None)
        conv = StitchingConfig.parse(text or default_stitching_config("mvdust3r", 1024))
        check_resolutions(args.vae_size or vae_size, args.model_size or model_size, patch_size=16,
                          natural_conv=conv)
    else:
        stride = StitchingConfig.parse(args.config).stride[-1] if args.config else 2
        check_resolutions(args.vae_size or vae_size, args.model_size or model_size, conv_stride=stride)


# ============================================================================================ models
def model_width(model: nn.Module) -> int:
    """Token width the stitching layer outputs (1024 for every released model)."""
    agg = getattr(model, "aggregator", None)
    return agg.embed_dim if agg is not None else model.embed_dim


def _load_base(args) -> nn.Module:
    if args.preset == "tiny":
        from vist3a.models import tiny_model

        return tiny_model(args.model, args.seed)
    from vist3a.models import from_pretrained

    return from_pretrained(args.model_path, model=args.model)


def _best_layer_file(folder: Path) -> Path:
    ranking = folder / "ranking.json"
    if not ranking.is_file():
        raise FileNotFoundError(f"--init-stitching {folder}: no ranking.json; pass a find_stitching_layer output "
                                "folder or one of its stitching_layer_<layer>.safetensors files")
    doc = json.loads(ranking.read_text())
    best = doc["ranking"][0]["layer"]
    path = folder / f"stitching_layer_{best}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"--init-stitching {folder}: ranking.json names {best} but {path.name} is missing")
    return path


def _stitching_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = _best_layer_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"--init-stitching {path}: no such file or folder")
    return path


def init_stitching_config(path: str | Path) -> str | None:
    """The stitching config string recorded in a find_stitching_layer output (folder or file), read from the
    file's metadata only (cheap: no tensor is loaded); None when it records none."""
    from safetensors import safe_open

    with safe_open(str(_stitching_file(path)), framework="pt") as fh:
        return (fh.metadata() or {}).get("config")


def load_stitching_init(path: str | Path, in_channels: int, temporal_factor: int = 4) -> tuple[StitchingLayer, str]:
    """A find_stitching_layer output (folder -> its best layer, or a ``stitching_layer_<layer>.safetensors``) ->
    (initialised :class:`StitchingLayer`, its layer name ``enc_blocks_k``)."""
    from safetensors import safe_open

    path = _stitching_file(path)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    if meta.get("format") != "vist3a.stitching_layer" or not {"weight", "bias"} <= set(tensors):
        raise ValueError(f"--init-stitching {path}: not a stitching-layer file written by find_stitching_layer")
    layer = StitchingLayer(meta["config"], in_channels=int(meta.get("in_channels", in_channels)),
                           temporal_factor=temporal_factor)
    layer.load_state_dict({"weight": tensors["weight"].float(), "bias": tensors["bias"].float()})
    return layer, meta["layer"]


def _stitching_config(args, width: int) -> StitchingConfig:
    text = args.config or default_stitching_config(args.model, width, tiny=args.preset == "tiny")
    return StitchingConfig.parse(text)


def build_student(args, base: nn.Module, latent_channels: int = 16, temporal_factor: int = 4) -> StitchedDecoder:
    """The stitched decoder to finetune, before LoRA: from ``--init-decoder``, or a copy of ``base`` cut at
    ``--cut`` with the stitching layer from ``--init-stitching`` (or randomly initialised)."""
    if args.init_decoder:
        from vist3a.stitching.checkpoint import load_decoder, load_published_stitched

        src = str(args.init_decoder)
        if src.endswith((".pth", ".pt")):
            student = load_published_stitched(src, base=copy.deepcopy(base).float())
        else:
            student = load_decoder(src)
        if student.kind != args.model:
            raise ValueError(f"--init-decoder {src} stitches {student.kind}, but --model is {args.model}")
        if args.cut and args.cut != student.cut:
            raise ValueError(f"--init-decoder {src} is cut at {student.cut}, not --cut {args.cut}; drop --cut")
        return student.train()
    width = model_width(base)
    if args.init_stitching:
        layer, cut = load_stitching_init(args.init_stitching, latent_channels, temporal_factor)
        if args.cut and args.cut != cut:
            raise ValueError(f"--init-stitching was fitted at {cut}, not --cut {args.cut}; drop --cut or pick the "
                             f"stitching_layer_{args.cut}.safetensors file")
        if args.config and StitchingConfig.parse(args.config).to_string() != layer.config.to_string():
            raise ValueError(f"--init-stitching has config {layer.config.to_string()}, not --config {args.config}")
    else:
        layer = StitchingLayer(_stitching_config(args, width), in_channels=latent_channels,
                               temporal_factor=temporal_factor)
        cut = args.cut or "enc_blocks_2"
    student = StitchedDecoder(copy.deepcopy(base), cut, layer)
    student.base_id = "tiny-random" if args.preset == "tiny" else args.model_path
    return student.train()


def _lora_targets(student: StitchedDecoder) -> list[str]:
    from vist3a.stitching.lora import lora_target_names

    return [n for n in lora_target_names(student.model) if not n.startswith("track_head")]


def prepare_trainable(student: StitchedDecoder, rank: int, alpha: float) -> StitchedDecoder:
    """Freeze everything, then add peft LoRA (r, alpha) on the kept model's Linear / Conv2d layers; the stitching
    layer and DINO's cls / register / mask tokens become trainable (vist3a.stitching.lora.add_lora)."""
    from vist3a.stitching.lora import add_lora

    student.requires_grad_(False)
    add_lora(student, r=rank, alpha=alpha, target_modules=_lora_targets(student))
    return student


def prepare_trainable_official(student: StitchedDecoder, rank: int, alpha: float) -> StitchedDecoder:
    """The released ``add_lora`` targets: every nn.Linear (peft, whose Linear LoRA equals loralib's) and every
    square nn.Conv2d with loralib's Conv2d factors (:class:`vist3a.stitching.lora.LoralibConv2d`); biases of the
    LoRA layers, the stitching layer and DINO's cls / register / mask tokens are trained too."""
    from vist3a.stitching.lora import add_lora, add_loralib_conv_lora

    student.requires_grad_(False)
    names = _lora_targets(student)
    mods = dict(student.model.named_modules())
    linears = [n for n in names if type(mods[n]) is nn.Linear]
    convs = [n for n in names if type(mods[n]) is nn.Conv2d and mods[n].kernel_size[0] == mods[n].kernel_size[1]
             and mods[n].groups == 1]
    add_lora(student, r=rank, alpha=alpha, target_modules=linears)
    add_loralib_conv_lora(student.model, convs, rank, alpha)
    return student


def cast_like_official_(model: nn.Module) -> nn.Module:
    """bf16 weights as in the released bf16 training: the whole aggregator (AnySplat's ``from_pretrained`` builds it
    in bf16; tokens, norms and the DINO / frame / global blocks) and every other nn.Linear / nn.Conv2d outside the
    heads (``cast_to_bfloat16``); heads stay float32 and LoRA factors float32. CUDA + autocast only."""
    with torch.no_grad():
        agg = getattr(model, "aggregator", None)
        for name, p in (agg.named_parameters() if agg is not None else ()):
            if "lora_" not in name and p.is_floating_point():
                p.data = p.data.to(torch.bfloat16)
        for name, mod in model.named_modules():
            if "head" in name.lower() or ".lora_" in name or not isinstance(mod, (nn.Linear, nn.Conv2d)):
                continue
            for p in (mod.weight, mod.bias):
                if p is not None:
                    p.data = p.data.to(torch.bfloat16)
    return model


def trainable_tensors(module: nn.Module) -> dict[str, Tensor]:
    """name -> parameter for every parameter that requires grad (checkpoint content), in registration order."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def _to_float(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_float(v) for k, v in x.items()}
    return x


def keep_heads_fp32(model: nn.Module, device_type: str) -> nn.Module:
    """Run everything after the aggregator (camera / depth / Gaussian / point heads, unprojection, Gaussian adapter:
    the model's ``_heads``) outside autocast in float32, as the official bf16 training keeps its heads in fp32; the
    aggregator outputs are cast to float32 first. Patches ``model`` in place and returns it."""
    inner = getattr(model, "_heads", None)
    if inner is None:  # MVDUSt3R: its heads run under the same autocast as the rest
        return model

    def heads_fp32(layers, images, **kwargs):
        with torch.autocast(device_type, enabled=False):
            return inner(_to_float(layers), _to_float(images), **kwargs)

    model._heads = heads_fp32
    return model


def _build_vae(args, device: torch.device):
    from vist3a.stitching.vae import load_video_vae, tiny_video_vae

    gen = torch.Generator(device=device)
    kw = {"sample": not args.latent_mean, "generator": gen}
    if args.preset == "tiny":
        vae = tiny_video_vae(args.vae, seed=args.seed, **kw)
        vae.vae.to(device)
    else:
        vae = load_video_vae(args.vae, args.vae_path, device=device, **kw)
    vae.vae.eval().requires_grad_(False)
    return vae


# ============================================================================================ data
class StepBatches(Dataset):
    """Item ``s`` = the batch of global step ``s`` for one rank: ``{"step", "views", "vae": (B, T, 3, S, S),
    "model": (B, T, 3, s, s)}`` (float32 in [0, 1]), T = :func:`views_for_step`, clips
    ``(s * world + rank) * B + k`` of the clip dataset with T views (built lazily per view count)."""

    def __init__(self, make_clips: Callable[[int], Dataset], views: Sequence[int], *, seed: int, rank: int,
                 world_size: int, batch_size: int, steps: int) -> None:
        self.make_clips, self.views = make_clips, tuple(views)
        self.seed, self.rank, self.world, self.batch, self.steps = seed, rank, world_size, batch_size, steps
        self._clips: dict[int, Dataset] = {}

    def __len__(self) -> int:
        return self.steps

    def clips(self, views: int) -> Dataset:
        if views not in self._clips:
            self._clips[views] = self.make_clips(views)
        return self._clips[views]

    def __getitem__(self, step: int) -> dict:
        v = views_for_step(self.seed, step, self.views)
        ds = self.clips(v)
        first = (step * self.world + self.rank) * self.batch
        items = [ds[(first + k) % len(ds)] for k in range(self.batch)]
        return {"step": step, "views": v, "vae": torch.stack([it["vae"] for it in items]),
                "model": torch.stack([it["model"] for it in items])}


@dataclass(frozen=True)
class ClipFactory:
    """views -> the clip dataset with that many views (picklable, for DataLoader workers): the train split of the
    micro world ``world``, else FolderClips over ``scenes``, or SyntheticClips with ``synthetic`` scenes when
    ``scenes`` is None."""

    samples: int
    vae_size: int
    model_size: int
    seed: int
    window: int = 50
    scenes: tuple | None = None
    synthetic: int = 8
    world: str | None = None

    def __call__(self, views: int) -> Dataset:
        if self.world is not None:
            return micro_world_clips(self.world, self.samples, split="train", views=views, vae_size=self.vae_size,
                                     model_size=self.model_size, seed=self.seed)
        if self.scenes is None:
            return SyntheticClips(self.samples, views=views, scenes=self.synthetic, vae_size=self.vae_size,
                                  model_size=self.model_size, seed=self.seed)
        return FolderClips(list(self.scenes), self.samples, views=views, window=self.window, vae_size=self.vae_size,
                           model_size=self.model_size, seed=self.seed)


def _clip_factory(args, vae_size: int, model_size: int, samples: int) -> ClipFactory:
    common = {"samples": samples, "vae_size": vae_size, "model_size": model_size, "seed": args.seed}
    if args.synthetic is not None:
        return ClipFactory(**common, synthetic=args.synthetic)
    if is_micro_world(args.data):
        return ClipFactory(**common, world=str(args.data))
    scenes = find_scenes(args.data, image_dir=args.image_dir)
    if not scenes:
        raise ValueError(f"--data {args.data}: no scenes (folders of .png / .jpg frames) found")
    return ClipFactory(**common, window=args.window, scenes=tuple(scenes))


# ============================================================================================ training
def _config_dict(args, views, vae_size, model_size, cut, config_str, world) -> dict:
    cfg = {k: v for k, v in vars(args).items()}
    cfg.update(views=list(views), vae_size=vae_size, model_size=model_size, cut=cut, config=config_str,
               world_size=world)
    return cfg


def _check_resume_config(saved: dict, current: dict, path: Path) -> None:
    saved = {"recipe": "paper", **saved}  # runs from before --recipe existed trained the paper recipe
    diff = [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in RESUME_KEYS if saved.get(k) != current.get(k)]
    if diff:
        raise ValueError(f"--resume: the options differ from the run that wrote {path} ({'; '.join(diff)}); "
                         "resume with the same options or start a new --output")
    if saved.get("world_size") != current.get("world_size"):
        logger.warning("--resume: world size %s -> %s: data order and latent samples change (not an exact "
                       "continuation)", saved.get("world_size"), current.get("world_size"))


def _write_json(path: Path, doc: dict) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(doc, fh, indent=2, default=str)
        fh.write("\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only the metric lines of steps <= ``step`` (a resumed run rewrites the rest)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError):
            if json.loads(line)["step"] <= step:
                keep.append(line)
    with atomic_write(path, "w") as fh:
        fh.write("".join(s + "\n" for s in keep))


def _elapsed(path: Path, step: int) -> float:
    """Training seconds recorded up to ``step`` in the metrics file (0 when unknown), so ``time`` stays cumulative
    across resumed runs."""
    if not path.is_file() or step == 0:
        return 0.0
    last = 0.0
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            doc = json.loads(line)
            if doc["step"] <= step:
                last = float(doc.get("time", last))
    return last


class Trainer:
    """Everything of one run; :meth:`fit` runs the loop. Built by :func:`run`."""

    def __init__(self, args, ctx: DistContext) -> None:
        self.args, self.ctx = args, ctx
        device = ctx.device
        self.out = Path(args.output)
        self.ckpt_dir = self.out / CHECKPOINTS
        self.vae = _build_vae(args, device)
        base = _load_base(args).float()
        if args.frames is None:
            args.frames = "real" if args.recipe == "official" else "decoded"
        # the loss compares per-pixel Gaussians: train with voxelize off on both models (as the official training);
        # the exported decoder gets the base config's setting back (followed at inference, like the official code)
        self.voxelize = bool(getattr(base.config, "voxelize", False))
        if self.voxelize:
            logger.info("the base config voxelises the Gaussians; training per pixel (as the official training), the "
                        "exported decoder keeps voxelize = True")
            base.config = copy.copy(base.config)
            base.config.voxelize = False
        views = parse_views(args.views, self.vae.temporal_compression)
        self.views = views
        sizes = default_sizes(args.model, args.preset == "tiny")
        self.vae_size = args.vae_size or sizes[0]
        self.model_size = args.model_size or sizes[1]
        if args.vae != "wan" and args.frames == "decoded":
            logger.warning("--vae %s: decoded frames need the Wan VAE's decoder here; training on real frames",
                           args.vae)
            args.frames = "real"
        student = build_student(args, base, self.vae.latent_channels, self.vae.temporal_compression)
        if getattr(getattr(student.model, "config", None), "voxelize", False):  # an --init-decoder that voxelises
            self.voxelize = True
            student.model.config.voxelize = False
        check_resolutions(self.vae_size, self.model_size, spatial_compression=self.vae.spatial_compression,
                          conv_stride=student.stitching.config.stride[-1], patch_size=student.patch_size,
                          natural_conv=student.stitching.config if student.kind == "mvdust3r" else None)
        if args.data is not None and max(views) > args.window:
            raise ValueError(f"--window {args.window} is smaller than the largest --views {max(views)}")
        self.teacher = base.to(device).eval().requires_grad_(False)
        if args.recipe == "official" and student.kind == "anysplat":
            prepare_trainable_official(student, args.lora_rank, args.lora_alpha)
        else:
            prepare_trainable(student, args.lora_rank, args.lora_alpha)
        if hasattr(student.model, "aggregator"):
            student.model.aggregator.set_gradient_checkpointing(args.gradient_checkpointing)
        elif args.gradient_checkpointing:
            logger.warning("--gradient-checkpointing is not implemented for %s; ignored", student.kind)
        self.student = student.to(device)
        self.use_bf16 = device.type == "cuda" and not args.no_bf16
        if self.use_bf16:
            if args.recipe == "official":
                cast_like_official_(self.student.model)
                cast_like_official_(self.teacher)
            keep_heads_fp32(self.student.model, device.type)
            keep_heads_fp32(self.teacher, device.type)
        self.params = trainable_tensors(self.student)
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=args.lr, weight_decay=args.weight_decay)
        self.scheduler = cosine_with_warmup(self.optimizer, args.warmup, args.steps, args.min_lr_ratio)
        self.weights = loss_weights(student.kind, args.recipe)
        self.config = _config_dict(args, views, self.vae_size, self.model_size, student.cut,
                                   student.stitching.config.to_string(), ctx.world_size)
        self.step = 0
        n_train = sum(p.numel() for p in self.params.values())
        if ctx.is_main:
            logger.info("stitched %s at %s (%s); %d trainable tensors, %.2fM parameters; views %s; %d rank(s) on %s",
                        student.kind, student.cut, student.stitching.config.to_string(), len(self.params),
                        n_train / 1e6, list(views), ctx.world_size, device)
        samples = args.steps * ctx.world_size * args.batch_size
        self.batches = StepBatches(_clip_factory(args, self.vae_size, self.model_size, samples), views,
                                   seed=args.seed, rank=ctx.rank, world_size=ctx.world_size,
                                   batch_size=args.batch_size, steps=args.steps)
        for v in views:  # build every view count's dataset now: too-short scenes fail here, not at step 9000
            self.batches.clips(v)
        self.model = self.student
        if ctx.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            # static_graph: the same parameters are used every step (DINO's mask token never is)
            self.model = DDP(self.student, device_ids=ids, static_graph=True)

    # ------------------------------------------------------------------------------------------ state
    def resume(self) -> bool:
        """Load the latest checkpoint of ``--output`` (tensors, optimizer, scheduler, this rank's RNG)."""
        found = latest_checkpoint(self.ckpt_dir)
        if found is None:
            if self.ctx.is_main:
                logger.info("--resume: no checkpoint in %s yet, starting at step 0", self.ckpt_dir)
            return False
        state = load_training_state(found, optimizer=self.optimizer, scheduler=self.scheduler)
        _check_resume_config(state.extra.get("config", {}), self.config, found)
        missing = sorted(set(self.params) - set(state.tensors))
        if missing:
            raise ValueError(f"--resume: {found} lacks trainable tensors {missing[:4]}; it comes from another setup")
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(state.tensors[name].to(device=p.device, dtype=p.dtype))
        rng = state.rng or []
        if len(rng) == self.ctx.world_size:
            restore_rng_state(rng[self.ctx.rank])
        elif self.ctx.is_main:
            logger.warning("--resume: %d saved RNG states for %d ranks; RNG not restored", len(rng),
                           self.ctx.world_size)
        self.step = state.step
        if self.ctx.is_main:
            logger.info("resumed from %s at step %d", found, self.step)
        return True

    def save(self) -> Path | None:
        """Checkpoint at the current step (collective: gathers every rank's RNG state; rank 0 writes)."""
        rng = gather_objects(capture_rng_state(), self.ctx)
        path = None
        if self.ctx.is_main:
            path = save_training_state(self.ckpt_dir, step=self.step, tensors=self.params, optimizer=self.optimizer,
                                       scheduler=self.scheduler, rng=rng,
                                       extra={"config": self.config, "world_size": self.ctx.world_size},
                                       keep_last=self.args.keep_last or None)
            logger.info("checkpoint %s", path)
        self._barrier()
        return path

    def _barrier(self) -> None:
        if self.ctx.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def export(self) -> Path:
        """Rank 0: the finetuned decoder (LoRA merged) as ``<out>/decoder`` (vist3a.stitching.save_decoder)."""
        from vist3a.stitching.checkpoint import save_decoder

        cfg = getattr(self.student.model, "config", None)
        if self.voxelize and cfg is not None:
            cfg.voxelize = True  # restore the base config's setting for inference (saved in decoder_config.json)
        try:
            path = save_decoder(self.student, self.out / DECODER, dtype=torch.float32, video_size=self.vae_size)
        finally:
            if self.voxelize and cfg is not None:
                cfg.voxelize = False
        logger.info("exported the finetuned decoder to %s (load_decoder / pipelines / ComfyUI models/vist3a)", path)
        return path

    # ------------------------------------------------------------------------------------------ step
    def _inputs(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """(latent (B, 16, T_lat, h, w), frames for the stitched heads (B, T, 3, s, s), real frames (B, T, 3, s, s))."""
        device = self.ctx.device
        self.vae.generator.manual_seed(_step_seed(self.args.seed, int(batch["step"]), self.ctx.rank))
        real = batch["model"].to(device, non_blocking=True)
        with torch.no_grad():
            latent = self.vae.encode(batch["vae"].to(device, non_blocking=True)).float()
            if self.student.needs_frames and self.args.frames == "decoded":
                from vist3a.pipeline.wan import decode_frames, resize_frames

                frames = resize_frames(decode_frames(self.vae.vae, latent), tuple(real.shape[-2:]))
            else:
                frames = real
        return latent, frames, real

    def train_step(self, batch: dict) -> dict[str, float]:
        """One optimizer step; returns rank-averaged metrics (loss, terms, grad_norm, lr, views)."""
        latent, frames, real = self._inputs(batch)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_bf16)
        with torch.no_grad(), autocast:
            target = self.teacher(real)
        with autocast:
            pred = self.model(latent, frames)
        loss, terms = stitched_loss(pred, target, self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = list(self.params.values())
        if self.args.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(params, self.args.grad_clip)
        else:
            gnorm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        names = list(terms)
        stats = all_reduce_mean(torch.stack([loss.detach().float(), *(terms[n].detach().float() for n in names),
                                             gnorm.detach().float()]), self.ctx).tolist()
        out = {"step": self.step, "loss": stats[0], **dict(zip(names, stats[1:-1])), "grad_norm": stats[-1],
               "lr": lr, "views": int(batch["views"])}
        if not math.isfinite(out["loss"]):
            raise FloatingPointError(f"step {self.step}: the loss is {out['loss']}; lower --lr or check the data")
        return out

    # ------------------------------------------------------------------------------------------ loop
    def fit(self, on_step: Callable[[int], None] | None = None) -> int:
        """Train from :attr:`step` to ``--steps``; returns the exit code (0, or 130 / 143 when stopped by a
        signal). Checkpoints every ``--save-every`` steps, when stopped, and at the end (then exports)."""
        from tqdm import tqdm

        args, ctx = self.args, self.ctx
        metrics = self.out / METRICS
        if ctx.is_main:
            _truncate_metrics(metrics, self.step)
        # own generator: creating the iterator must not draw from the global RNG (exact resume)
        loader = DataLoader(self.batches, batch_size=None, sampler=range(self.step, args.steps),
                            num_workers=args.workers, pin_memory=ctx.device.type == "cuda",
                            generator=torch.Generator().manual_seed(args.seed))
        run_steps, code, saved_at = 0, 0, None
        t0 = time.perf_counter()
        before = _elapsed(metrics, self.step) if ctx.is_main else 0.0
        with StopRequest() as stop, tqdm(total=args.steps, initial=self.step, desc="finetune", unit="step",
                                         disable=args.quiet or not ctx.is_main) as bar:
            fh = open(metrics, "a", encoding="utf-8") if ctx.is_main else None  # noqa: SIM115
            try:
                for batch in loader:
                    code = stop.agreed(ctx)
                    if code:
                        break
                    m = self.train_step(batch)
                    run_steps += 1
                    if fh is not None:
                        m["time"] = round(before + time.perf_counter() - t0, 3)
                        fh.write(json.dumps(m) + "\n")
                        fh.flush()
                    bar.update(1)
                    bar.set_postfix(loss=f"{m['loss']:.4g}", views=m["views"])
                    if ctx.is_main and (self.step % args.log_every == 0 or self.step == args.steps):
                        logger.info("step %d/%d loss %.5g (%s) lr %.3g grad %.3g", self.step, args.steps, m["loss"],
                                    ", ".join(f"{k} {m[k]:.3g}" for k in self.weights.SOURCES if k in m), m["lr"],
                                    m["grad_norm"])
                    if on_step is not None:
                        on_step(self.step)
                    if self.step % args.save_every == 0:
                        self.save()
                        saved_at = self.step
                    if args.stop_after is not None and run_steps >= args.stop_after and self.step < args.steps:
                        logger.info("--stop-after %d: stopping at step %d", args.stop_after, self.step)
                        break
            finally:
                if fh is not None:
                    fh.close()
            if saved_at != self.step:
                self.save()
        if self.step >= args.steps:
            if ctx.is_main:
                self.export()
                logger.info("done: %d steps (%d in this run, %.1f s)", self.step, run_steps, time.perf_counter() - t0)
            self._barrier()
            return 0
        if code and ctx.is_main:
            logger.warning("stopped at step %d by a signal; continue with --resume", self.step)
        return code


def run(args: argparse.Namespace, ctx: DistContext, on_step: Callable[[int], None] | None = None) -> int:
    """Check the options, build the trainer, resume if asked, train. Returns the exit code."""
    _check_args(args)
    out = Path(args.output)
    if not args.resume and latest_checkpoint(out / CHECKPOINTS) is not None:
        raise ValueError(f"--output {out} already holds checkpoints; pass --resume to continue that run or choose a "
                         "new --output")
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(args.seed % 2**32)
    trainer = Trainer(args, ctx)
    if args.resume:
        trainer.resume()
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / CONFIG, trainer.config)
    trainer._barrier()
    if trainer.step >= args.steps:
        if ctx.is_main:
            logger.info("already at step %d of %d; re-exporting the decoder", trainer.step, args.steps)
            trainer.export()
        return 0
    return trainer.fit(on_step)


def main(argv: Sequence[str] | None = None, on_step: Callable[[int], None] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad options / data, 130 / 143 stopped by SIGINT / SIGTERM).
    Reuses an already initialised process group (and then leaves it initialised)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch.distributed as dist

    owned = not (dist.is_available() and dist.is_initialized())
    try:
        ctx = init_distributed(args.device)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    if not ctx.is_main:  # rank 0 reports; the others only warn
        logging.getLogger("vist3a").setLevel(logging.WARNING)
    try:
        return run(args, ctx, on_step)
    except KeyboardInterrupt:
        logger.warning("aborted (no checkpoint written for the unfinished step); continue with --resume")
        return EXIT_SIGINT
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    finally:
        if owned:
            cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
