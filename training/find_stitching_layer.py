"""Find the stitching layer: closed-form (ridge) fit of the stitching conv from video latents to every candidate
layer of the 3D model, ranked by MSE (the paper's Fig. 5 analysis and the stitching-layer initialisation).

``--numerics official`` (default) reproduces the released ``find_layer_for_stitching.py`` (zero-padded im2col, no
intercept, ridge on the full diagonal, bias = mean residual, float16 feature cache, bf16 autocast on CUDA, ranked by
the training MSE of the resulting conv); ``--numerics ours`` fits the conv as it runs (replicate padding, jointly
solved bias, float32 forward) and ranks by held-out MSE (vist3a/stitching/search.py).

Usage::

    python -m training.find_stitching_layer --data /data/DL3DV-960P --model anysplat --model-path lhjiang/anysplat \\
        --vae wan --vae-path Wan-AI/Wan2.1-T2V-1.3B-Diffusers --config conv3d_k5x3x3_o1024_s1x2x2_p2x1x1 \\
        --layers enc_blocks_1..24 --samples 400 --heldout 40 --out runs/layer_search

    torchrun --nproc_per_node 8 -m training.find_stitching_layer ...    # data sharded by rank, sums all-reduced

    python -m training.find_stitching_layer --tiny --synthetic --samples 8 --heldout 4 --out /tmp/ls   # smoke test

Per batch the VAE encodes the clip (raw latent, ``latent_dist.sample()`` unless ``--latent-mean``) and ONE forward of
the 3D model captures every candidate layer; only float64 sums are kept (memory independent of ``--samples``).
Clips are deterministic per index (``--seed``); held-out clips come from held-out scenes (``--heldout-fraction``
of the scenes when there are at least 2). Under torchrun every rank takes the indices ``rank, rank + world, ...``;
with ``--latent-mean`` the result does not depend on the number of processes (otherwise the latent sample is drawn
from a per-rank generator).

Writes into ``--out`` only, at the end (rank 0; every file atomically, so Ctrl-C never leaves a partial file):

* ``ranking.json`` – config, ridge, sample counts, the ranking with train / held-out MSE and CKA per layer;
* ``ranking.csv`` – rank, layer, train_mse, heldout_mse, cka;
* ``stitching_layer_<layer>.safetensors`` – ``weight`` (out, in, *kernel), ``bias`` (out,) of a
  :class:`~vist3a.stitching.layer.StitchingLayer`; metadata: ``config`` string, ``layer``, metrics, models;
* ``layer_mse.png`` – log10 MSE per layer (train and held-out), the best layer marked.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as `python training/<script>.py`: import it as part of the training package
    import os as _os
    import sys as _sys

    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    __package__ = "training"  # noqa: A001 (PEP 366: makes the relative imports below work)

import argparse
import csv
import io
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from vist3a.io.atomic import atomic_path, atomic_write
from vist3a.stitching.config import RELEASED_CONFIG, StitchingConfig
from vist3a.stitching.search import DEFAULT_RIDGE, NUMERICS, LayerSearch, SearchResult, reduce_
from vist3a.stitching.vae import VAE_KINDS, load_video_vae, tiny_video_vae

from .data import (
    FolderClips,
    SyntheticClips,
    check_resolutions,
    default_sizes,
    default_stitching_config,
    find_scenes,
    is_micro_world,
    micro_world_clips,
    shard_indices,
    split_scenes,
)
from .plots import plot_layer_mse
from .runtime import cleanup_distributed, init_distributed, rank_and_world

__all__ = ["build_parser", "main", "parse_layers", "plot_layer_mse", "run", "write_outputs"]

logger = logging.getLogger("vist3a.find_stitching_layer")


# ============================================================================================ arguments
def parse_layers(spec: str, available: Sequence[str]) -> list[str]:
    """``"enc_blocks_1..24"``, ``"enc_blocks_2,enc_blocks_5"``, ``"enc_blocks_1..3,agg_blocks_2"``, ``"enc"``
    (every enc_blocks cut point) or ``"all"`` -> layer names, validated against ``available``."""
    spec = spec.strip()
    if spec in ("all", "enc", "agg"):
        return [n for n in available if spec == "all" or n.startswith(spec + "_")]
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        m = re.fullmatch(r"([a-z_]+?)_?(\d+)\.\.(?:\1_?)?(\d+)", part)
        names = [f"{m.group(1)}_{k}" for k in range(int(m.group(2)), int(m.group(3)) + 1)] if m else [part]
        for name in names:
            if name not in available:
                raise ValueError(f"unknown layer {name!r}; this model has {available[0]}..{available[-1]} "
                                 f"({len(available)} cut points)")
            if name not in out:
                out.append(name)
    if not out:
        raise ValueError(f"no layers in {spec!r}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.find_stitching_layer", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("data")
    src.add_argument("--data", help="folder of scenes (ROOT/<scene>/*.png, ROOT/<scene>/images_4/*.png, ...) or a "
                                    "micro world (python -m training.micro world)")
    src.add_argument("--synthetic", action="store_true", help="procedural synthetic scenes instead of --data")
    src.add_argument("--image-dir", default=None, help="image sub-folder of each scene (default: images_4, images, "
                                                       "the first images_*, or the scene folder itself)")
    src.add_argument("--samples", type=int, default=100, help="training clips (default 100)")
    src.add_argument("--heldout", type=int, default=20, help="held-out clips (default 20; 0: rank by train MSE)")
    src.add_argument("--heldout-fraction", type=float, default=0.1,
                     help="fraction of scenes held out when there are >= 2 (default 0.1)")
    src.add_argument("--views", type=int, default=None, help="frames per clip, 4k+1 (default 13; --tiny: 9)")
    src.add_argument("--window", type=int, default=50, help="frames per unit scene window (default 50)")
    src.add_argument("--vae-size", type=int, default=None, help="VAE frame size (default 512; --tiny: 64)")
    src.add_argument("--model-size", type=int, default=None, help="3D-model image size (default 448; --tiny: 56)")
    src.add_argument("--batch-size", type=int, default=1)
    src.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    src.add_argument("--seed", type=int, default=0)
    mdl = p.add_argument_group("models")
    mdl.add_argument("--model", choices=("anysplat", "vggt", "mvdust3r"), default="anysplat",
                     help="3D model (mvdust3r: candidate layers are its 24 CroCo encoder blocks; the stitching conv "
                          "defaults to the paper's conv3d_k5x7x7_o1024_s1x3x3_p2x0x0, 384 px video -> 224 px)")
    mdl.add_argument("--model-path", default=None, help="hub id, folder or weights file of the 3D model")
    mdl.add_argument("--vae", choices=VAE_KINDS, default="wan",
                     help="video VAE (diffusers): wan (default), cogvideox, hunyuan (AutoencoderKLHunyuanVideo, 16 ch, "
                          "4x8x8) or svd (AutoencoderKLTemporalDecoder, 4 ch, per frame 8x8)")
    mdl.add_argument("--vae-path", default=None, help="diffusers VAE folder / hub id (a pipeline's vae/ is found)")
    mdl.add_argument("--tiny", action="store_true", help="tiny randomly initialised models (smoke tests)")
    mdl.add_argument("--latent-mean", action="store_true", help="use the encoder mean instead of a sample")
    mdl.add_argument("--device", default=None, help="default: cuda:<local rank> if available, else cpu")
    mdl.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                     help="dtype of the 3D model and the VAE (sums are always float64)")
    fit = p.add_argument_group("search")
    fit.add_argument("--config", default=None, help=f"stitching conv (default {RELEASED_CONFIG}; --tiny: o64)")
    fit.add_argument("--layers", default="enc", help="candidate layers: enc_blocks_1..24, a comma list, 'enc' "
                                                     "(default: all DINOv2 blocks) or 'all'")
    fit.add_argument("--ridge", type=float, default=DEFAULT_RIDGE, help="ridge lambda (default 1e-4)")
    fit.add_argument("--no-cka", action="store_true", help="skip CKA (saves layers x D^2 floats)")
    fit.add_argument("--numerics", choices=NUMERICS, default="official",
                     help="official (default): the released search (zero-padded im2col, no intercept, ridge on the "
                          "full diagonal, bias = mean residual, float16 feature cache, bf16 autocast on CUDA, ranked "
                          "by training MSE); ours: replicate padding as the conv, jointly solved bias, float32, "
                          "ranked by held-out MSE (vist3a.stitching.search)")
    fit.add_argument("--official", dest="numerics", action="store_const", const="official",
                     help="same as --numerics official")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# ============================================================================================ building
def _build_model(args, device, dtype):
    if args.tiny:
        from vist3a.models import tiny_model

        model = tiny_model(args.model, args.seed)
    else:
        if not args.model_path:
            raise ValueError("--model-path is required (or use --tiny)")
        from vist3a.models import from_pretrained

        model = from_pretrained(args.model_path, model=args.model)
    return model.to(device=device, dtype=dtype).eval()


def _build_vae(args, device, dtype):
    gen = torch.Generator(device=device).manual_seed(args.seed * 7919 + _rank()[0])
    kw = {"sample": not args.latent_mean, "generator": gen}
    if args.tiny:
        vae = tiny_video_vae(args.vae, seed=args.seed, **kw)
        vae.vae.to(device=device, **({} if dtype == torch.float32 else {"dtype": dtype}))
        return vae
    if not args.vae_path:
        raise ValueError("--vae-path is required (or use --tiny)")
    return load_video_vae(args.vae, args.vae_path, device=device, dtype=dtype, **kw)


def _rank() -> tuple[int, int]:
    return rank_and_world()


def _init_distributed(device: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment when WORLD_SIZE > 1 (see
    :func:`training.runtime.init_distributed`); True when this call started it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or rank_and_world()[1] > 1:
        return False
    init_distributed(device)
    return True


def _collate(items):
    return {"vae": torch.stack([it["vae"] for it in items]), "model": torch.stack([it["model"] for it in items])}


# ============================================================================================ outputs
def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.9g}"


def write_outputs(out_dir: str | os.PathLike, result: SearchResult, meta: dict | None = None) -> list[Path]:
    """Write ranking.json / ranking.csv / stitching_layer_<layer>.safetensors / layer_mse.png (atomically)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    written = []
    for name, fit in result.fits.items():
        tensors = {"weight": fit.weight.to(torch.float32).contiguous(), "bias": fit.bias.to(torch.float32).contiguous()}
        md = {"format": "vist3a.stitching_layer", "config": result.config.to_string(), "layer": name,
              "in_channels": str(result.config.in_channels), "rank": str(fit.rank),
              "train_mse": _fmt(fit.train_mse), "heldout_mse": _fmt(fit.heldout_mse), "cka": _fmt(fit.cka),
              "ridge": repr(result.ridge), **{k: str(v) for k, v in meta.items() if isinstance(v, (str, int, float))}}
        path = out / f"stitching_layer_{name}.safetensors"
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata=md)
        written.append(path)
    doc = {**result.to_dict(), **meta}
    with atomic_write(out / "ranking.json", "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["rank", "layer", "train_mse", "heldout_mse", "cka"])
    for name in result.ranking:
        f = result.fits[name]
        wr.writerow([f.rank, name, _fmt(f.train_mse), _fmt(f.heldout_mse), _fmt(f.cka)])
    with atomic_write(out / "ranking.csv", "w") as fh:
        fh.write(buf.getvalue())
    layers = list(result.fits)
    plot_layer_mse(out / "layer_mse.png", layers, [result.fits[n].train_mse for n in layers],
                   [result.fits[n].heldout_mse for n in layers], best=result.ranking[0],
                   title=f"{meta.get('model', '3D model')} <- {meta.get('vae', 'VAE')}: {result.config.to_string()}")
    return written + [out / "ranking.json", out / "ranking.csv", out / "layer_mse.png"]


# ============================================================================================ main loop
@torch.no_grad()
def _accumulate(search: LayerSearch, model, vae, dataset, split: str, args, device, grid, progress) -> None:
    rank, world = _rank()
    indices = shard_indices(len(dataset), rank, world)
    if not indices:
        return
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=args.batch_size,
                                         num_workers=args.workers, collate_fn=_collate, shuffle=False)
    for batch in loader:
        latent = vae.encode(batch["vae"].to(device))
        images = batch["model"].to(device=device, dtype=next(model.parameters()).dtype)
        # the released search runs AnySplat under bf16 autocast (CUDA only; a no-op elsewhere)
        with torch.autocast("cuda", dtype=torch.bfloat16,
                            enabled=search.numerics == "official" and device.type == "cuda"):
            acts = model.capture(images, search.layers)
        search.update(latent, acts, grid_hw=(grid, grid), split=split)
        progress.update(latent.shape[0] * world)


def run(args: argparse.Namespace) -> SearchResult | None:
    """The search; returns the result on rank 0 (None elsewhere)."""
    from tqdm import tqdm

    if args.synthetic == bool(args.data):
        raise ValueError("give exactly one of --data DIR and --synthetic")
    if args.samples < 1 or args.heldout < 0:
        raise ValueError("--samples must be >= 1 and --heldout >= 0")
    views = args.views or (9 if args.tiny else 13)
    vae_size = args.vae_size or default_sizes(args.model, args.tiny)[0]
    model_size = args.model_size or default_sizes(args.model, args.tiny)[1]
    rank, world = _rank()
    if args.device:
        device = torch.device(args.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dtype = getattr(torch, args.dtype)
    model = _build_model(args, device, dtype)
    vae = _build_vae(args, device, dtype)
    mvd = args.model == "mvdust3r"
    feat_dim = model.embed_dim if mvd else model.aggregator.patch_embed.embed_dim
    config = StitchingConfig.parse(args.config or default_stitching_config(args.model, feat_dim, args.tiny),
                                   in_channels=vae.latent_channels)
    if config.out_channels != feat_dim:
        raise ValueError(f"stitching config {config.to_string()} outputs {config.out_channels} channels but the "
                         f"{args.model} tokens have {feat_dim}")
    if (views - 1) % vae.temporal_compression:
        raise ValueError(f"--views {views}: the {args.vae} VAE needs {vae.temporal_compression}k + 1 frames")
    grid = check_resolutions(vae_size, model_size, spatial_compression=vae.spatial_compression,
                             conv_stride=config.stride[-1],
                             patch_size=model.patch_size if mvd else model.aggregator.patch_size,
                             natural_conv=config if mvd else None)
    layers = parse_layers(args.layers, model.cut_points())
    if args.synthetic:
        train = SyntheticClips(args.samples, views=views, vae_size=vae_size, model_size=model_size, seed=args.seed)
        held = SyntheticClips(args.heldout, views=views, vae_size=vae_size, model_size=model_size,
                              seed=args.seed + 1_000_003)
        split_info = "synthetic (held-out scenes differ)"
    elif is_micro_world(args.data):
        kw = {"views": views, "vae_size": vae_size, "model_size": model_size}
        train = micro_world_clips(args.data, args.samples, split="train", seed=args.seed, **kw)
        held = micro_world_clips(args.data, args.heldout, split="test", seed=args.seed, **kw) if args.heldout else None
        split_info = "micro world: train split / test split (held-out scenes)"
    else:
        scenes = find_scenes(args.data, image_dir=args.image_dir)
        tr_scenes, ho_scenes = split_scenes(scenes, args.heldout_fraction)
        kw = {"views": views, "window": args.window, "vae_size": vae_size, "model_size": model_size}
        train = FolderClips(tr_scenes, args.samples, seed=args.seed, **kw)
        held = FolderClips(ho_scenes, args.heldout, seed=args.seed + 1_000_003, **kw) if args.heldout else None
        split_info = (f"{len(tr_scenes)} train / {len(ho_scenes)} held-out scenes" if tr_scenes is not ho_scenes
                      else "one scene: held-out clips differ by seed only")
    search = LayerSearch(config, layers, in_channels=vae.latent_channels, temporal_factor=vae.temporal_compression,
                         cka=not args.no_cka, heldout=held is not None and args.heldout > 0, device=device,
                         numerics=args.numerics)
    if rank == 0:
        logger.info("layer search: %d layers, config %s, accumulators %.1f MB (flat in the number of samples)",
                    len(layers), config.to_string(), search.nbytes() / 2**20)
    t0 = time.perf_counter()
    total = args.samples + (args.heldout if held is not None else 0)
    with tqdm(total=total, desc="layer search", unit="clip", disable=args.quiet or rank != 0) as bar:
        _accumulate(search, model, vae, train, "train", args, device, grid, bar)
        if held is not None and args.heldout:
            _accumulate(search, model, vae, held, "heldout", args, device, grid, bar)
    reduce_(search)
    if rank != 0:
        return None
    result = search.solve(args.ridge)
    result.info.update({"model": args.model, "model_path": args.model_path or ("tiny" if args.tiny else None),
                        "vae": args.vae, "vae_path": args.vae_path or ("tiny" if args.tiny else None),
                        "data": "synthetic" if args.synthetic else str(args.data), "split": split_info,
                        "views": views, "vae_size": vae_size, "model_size": model_size, "world_size": world,
                        "latent": "mean" if args.latent_mean else "sample", "seconds": time.perf_counter() - t0})
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = _init_distributed(args.device)
    try:
        result = run(args)
        if result is not None:
            meta = {k: result.info[k] for k in ("model", "vae") if k in result.info}
            files = write_outputs(args.out, result, meta)
            best = result.best
            logger.info("best layer %s: held-out MSE %s, train MSE %.6g, CKA %s; wrote %d files to %s", best.layer,
                        _fmt(best.heldout_mse) or "-", best.train_mse, _fmt(best.cka) or "-", len(files), args.out)
        return 0
    except KeyboardInterrupt:
        logger.warning("interrupted: no partial file left (outputs are written atomically, only at the end)")
        return 130
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    finally:
        if started:
            cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
