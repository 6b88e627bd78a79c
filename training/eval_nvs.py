"""Novel-view synthesis evaluation of a stitched decoder on RealEstate10K-style sequences (the paper's Table:
8 context + 4 target views; PSNR / SSIM / LPIPS).

Two protocols (``--protocol``):

``official`` (default; the released ``evaluation/novel_view_synthesis_bench`` scripts, whose numbers the published
table reports: ``anysplat_stitched.pth`` 20.94 PSNR / 0.6944 SSIM / 0.2383 LPIPS), per sequence of the index map
(``--index`` re10k_indexmap.json; frames from ``annotations.json`` or our layout, see :mod:`training.eval_data`):

1. the ids in index-map order; the last 4 are the targets (taken in reverse order), the others (8) the context,
   padded to 9 by repeating the last; frames resized by :func:`training.eval_data.official_resize` (512 for the VAE,
   448 for the heads and the metrics);
2. pass 1: VAE-encode the 9 context frames (``latent_dist.sample()``), stitched decoder with the real 448 frames for
   the heads -> Gaussians and the context cameras;
3. pass 2: the same on the 9 context + 4 target frames (13) -> target cameras (camera-to-world) and normalised
   intrinsics; target translations scaled by ``mean(pass-1 context translations) / mean(pass-2 context
   translations)`` (means over all xyz entries, as released);
4. render at 448x448 at those cameras (AnySplat's renderer ignores the near 0.01 / far 100 it is passed and uses
   near 1e-10; background white as in AnySplat's decoder config, ``--background`` to change);
5. prediction and ground truth quantised to 8 bits as the released ``save_image`` does (``uint8(clip(x, 0, 1) *
   255)``, truncating) and read back;
6. PSNR (AnySplat's), SSIM with scikit-image's settings (window 11, Gaussian weights, sample covariance), LPIPS VGG
   (the ``lpips`` package when installed, else ours with the same weights); per sequence, then the mean over
   sequences.

``sim3`` (this pack's earlier protocol, below): ground-truth target poses mapped into the prediction's frame by a
similarity fit of the context cameras; LPIPS AlexNet, SSIM without sample covariance, no quantisation.

Usage::

    python -m training.eval_nvs --data /data/re10k_test --decoder HJGO/VIST3A/anysplat_stitched.pth \\
        --vae-path Wan-AI/Wan2.1-T2V-1.3B-Diffusers --output runs/nvs

    python -m training.eval_nvs --preset tiny --synthetic 2 --output /tmp/nvs      # smoke test, seconds on a CPU

Data layout and view selection: :mod:`training.eval_data` (``ROOT/<sequence>/images/*.png`` + ``cameras.json``,
optional ``ROOT/evaluation_index.json``; otherwise 8 evenly spaced context frames and 4 targets between them).

Protocol, per sequence:

1. The 8 context frames are loaded like the training clips (shorter side -> the video size, centre crop; the same
   crop resized to the 3D-model size, 512 <-> 448) and padded to 4k+1 = 9 frames by repeating the last frame (the
   Wan VAE needs 4k+1 frames).
2. The VAE encodes the 9 video frames to a raw latent (``latent_dist.sample()`` with a per-sequence seed, the
   official encoder setting; ``--latent mean`` for the mean). The stitched decoder reads that latent plus RGB frames
   at the 3D size for its Gaussian head: the input frames themselves (``--head-frames input``, as
   :class:`vist3a.pipeline.VideoTo3DPipeline` does) or their VAE round trip (``decoded``, as text-to-3D does). It
   predicts pixel-aligned Gaussians and the 9 context cameras in its own normalised world frame.
3. Target poses. AnySplat-style models predict cameras in their own frame (first camera at the origin, scene scale
   normalised), so ground-truth target poses must be expressed in that frame. We align the 8 predicted context
   cameras to the 8 ground-truth context cameras with a similarity transform (rotation = chordal mean of the
   per-camera rotation offsets, scale and translation = least squares on the camera centres given that rotation,
   :func:`training.eval_data.align_similarity`), and map the ground-truth target cameras through it. This uses only
   context information (the targets never enter the network, so no target pixels leak into the Gaussians), works
   for any decoder without running it twice, and is exact when the prediction is a similarity transform of the
   ground truth. (AnySplat's own script instead predicts context + target poses in one joint forward pass; that
   needs target images as network input and a 12 -> 13 frame clip, which a stitched decoder fed with a context-only
   latent cannot share with its Gaussians. Rotation from the orientations rather than Umeyama on centres alone
   keeps the alignment defined for RealEstate10K's often nearly collinear camera paths.) Targets use their
   ground-truth intrinsics after the same crop / resize (``--target-intrinsics predicted``: the mean predicted
   context intrinsics instead).
4. The Gaussians are rendered at the mapped target cameras with :func:`vist3a.render.render` at the 3D-model size
   (black background unless ``--background``) and compared with the target frames at that size.

Metrics per target view (PSNR and SSIM of :mod:`training.metrics`, LPIPS v0.1 AlexNet when its weights are found
locally; otherwise skipped with a note), averaged per sequence; the overall numbers are means over sequences of the
per-sequence means (equal to means over views when every sequence has the same number of targets). Paper reference:
AnySplat 20.85 / 0.695 / 0.238, Wan + AnySplat stitched 21.29 / 0.718 / 0.232.

Writes into ``--output`` only, at the end, atomically (Ctrl-C leaves no partial file, exit code 130):
``nvs_results.json`` (settings, per-sequence and overall metrics, per-view numbers, alignment scale) and
``nvs_summary.md`` (a table).
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as `python training/<script>.py`: import it as part of the training package
    import os as _os
    import sys as _sys

    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    __package__ = "training"  # noqa: A001 (PEP 366: makes the relative imports below work)

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vist3a.cameras import Cameras
from vist3a.io.atomic import atomic_write

from .eval_data import (
    INDEX_FILE,
    PosedSequence,
    load_official_views,
    official_frame_paths,
    read_index_map,
    align_similarity,
    apply_similarity,
    default_views,
    find_sequences,
    load_views,
    pad_to_4k1,
    read_index,
    read_sequence,
    write_synthetic_sequences,
)
from .metrics import load_lpips, load_lpips_official, psnr, ssim
from .runtime import run_cli

__all__ = ["add_model_arguments", "build_models", "build_parser", "evaluate", "evaluate_official",
           "evaluate_sequence_official", "main", "map_targets", "official_target_cameras", "predict_scene",
           "quantize_8bit", "render_views", "summarise", "write_results"]

logger = logging.getLogger(__name__)

RESULTS_JSON = "nvs_results.json"
SUMMARY_MD = "nvs_summary.md"
METRICS = ("psnr", "ssim", "lpips")


# ============================================================================================ models
def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Decoder / VAE / device options shared by the evaluation scripts."""
    g = p.add_argument_group("models")
    g.add_argument("--preset", choices=("tiny",), default=None,
                   help="tiny: tiny random Wan VAE + tiny stitched AnySplat (64 px video, 56 px 3D; smoke tests)")
    g.add_argument("--decoder", default=None,
                   help="stitched decoder: our folder / hub repo (save_decoder format) or a published VIST3A .pth "
                        "(e.g. HJGO/VIST3A/anysplat_stitched.pth); default with no --preset: the published one")
    g.add_argument("--base", default=None, help="base AnySplat for a published .pth (hub id / folder / weights file; "
                                                "default lhjiang/anysplat)")
    g.add_argument("--vae-path", default="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                   help="Wan VAE: a diffusers pipeline folder / hub id (its vae/) or a VAE folder")
    g.add_argument("--vae-kind", choices=("wan", "cogvideox", "hunyuan", "svd"), default="wan",
                   help="video VAE of the decoder's latent space (default wan; the tiny preset builds its decoder for "
                        "the chosen VAE's channels and frame compression)")
    g.add_argument("--latent", choices=("sample", "mean"), default="sample",
                   help="encoder latent: a seeded sample (the official encoder setting) or the mean "
                        "(default: %(default)s)")
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="dtype of the decoder and VAE (metrics in float32)")
    g.add_argument("--seed", type=int, default=0, help="seed of the encoder samples (per sequence: seed + index)")


def build_models(args: argparse.Namespace):
    """(VAE adapter, stitched decoder, device) from the parsed options (see :func:`add_model_arguments`)."""
    from vist3a.stitching.vae import load_video_vae, tiny_video_vae

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    sample = args.latent == "sample"
    if args.preset == "tiny":
        from vist3a.pipeline.presets import TINY_WARNING, tiny_decoder

        logger.warning(TINY_WARNING)
        vae = tiny_video_vae(args.vae_kind, seed=args.seed, sample=sample)
        decoder = tiny_decoder(args.seed, latent_channels=vae.latent_channels,
                               temporal_factor=vae.temporal_compression)
    else:
        from vist3a.pipeline.decoders import load_stitched_decoder

        vae = load_video_vae(args.vae_kind, args.vae_path, dtype=dtype, sample=sample)
        decoder = load_stitched_decoder(args.decoder, base=args.base)
    vae.vae.to(device=device, **({} if dtype == torch.float32 else {"dtype": dtype}))
    decoder = decoder.to(device=device, dtype=dtype).eval()
    return vae, decoder, device


def encode(vae, video: Tensor, seed: int) -> Tensor:
    """Video frames (T, 3, S, S) in [0, 1] -> raw latent (1, C, T_lat, S/8, S/8) float32 (seeded sample / mean)."""
    vae.generator = torch.Generator(vae.device).manual_seed(int(seed))
    return vae.encode(video[None]).float()


def decode_to(vae, raw: Tensor, size: tuple[int, int]) -> Tensor:
    """Raw latent (1, C, T_lat, h, w) -> VAE-decoded frames (1, T, 3, *size) in [0, 1] (bilinear resize)."""
    from vist3a.pipeline.wan import decode_frames, resize_frames

    if getattr(vae, "name", "wan") != "wan":  # HunyuanVideo, SVD, CogVideoX: the adapter's own decode
        return resize_frames(vae.decode(raw), size)
    return resize_frames(decode_frames(vae.vae, raw), size)


@torch.no_grad()
def predict_scene(decoder, raw: Tensor, frames3d: Tensor):
    """Stitched decoder on a raw latent (1, C, T_lat, h, w) and head frames (1, T, 3, H3, W3) in [0, 1] ->
    its prediction (``.gaussians[0]`` for AnySplat, ``.cameras[0]`` T cameras, ``.depth`` (1, T, H3, W3))."""
    param = next(decoder.parameters())
    return decoder.predict(raw.to(device=param.device, dtype=param.dtype),
                           frames3d.to(device=param.device, dtype=param.dtype))


def render_views(gaussians, cameras: Cameras, background: Sequence[float] | None = None, *,
                 near_plane: float = 0.01, far_plane: float = 1e10) -> Tensor:
    """Render float32 Gaussians at ``cameras`` -> images (V, 3, H, W) in [0, 1]."""
    from vist3a.render import render

    g = gaussians.to(dtype=torch.float32) if hasattr(gaussians, "to") else gaussians
    cams = cameras.to(device=g.means.device, dtype=torch.float32)
    bg = None if background is None else torch.tensor(list(background), dtype=torch.float32, device=g.means.device)
    with torch.no_grad():
        out = render(g, cams, background=bg, near_plane=near_plane, far_plane=far_plane)
    return out.rgb.permute(0, 3, 1, 2).clamp(0, 1)


# ============================================================================================ evaluation
def map_targets(pred_context: Cameras, gt_context: Cameras, gt_target: Cameras, intrinsics: str = "gt"
                ) -> tuple[Cameras, dict[str, Any]]:
    """Ground-truth target cameras expressed in the predicted frame (see the module docstring, step 3).

    ``pred_context`` (V) and ``gt_context`` (V) are the same context views (same image size); returns the mapped
    targets (float32) and alignment info (scale, mean context centre residual in predicted units). ``intrinsics``:
    ``"gt"`` keeps the targets' ground-truth intrinsics; ``"predicted"`` uses the mean predicted context intrinsics
    (one physical camera per sequence, as on RealEstate10K)."""
    if len(pred_context) != len(gt_context):
        raise ValueError(f"map_targets: {len(pred_context)} predicted vs {len(gt_context)} ground-truth context cameras")
    s, r, t = align_similarity(gt_context.c2w, pred_context.c2w)
    mapped_ctx = apply_similarity(gt_context.c2w.double(), s, r, t)
    resid = (mapped_ctx[:, :3, 3] - pred_context.c2w.double()[:, :3, 3]).norm(dim=-1).mean()
    c2w = apply_similarity(gt_target.c2w.double(), s, r, t).float()
    if intrinsics == "gt":
        K = gt_target.K.float()
    elif intrinsics == "predicted":
        K = pred_context.K.float().mean(0).expand(len(gt_target), 3, 3).clone()
    else:
        raise ValueError(f"map_targets: intrinsics must be 'gt' or 'predicted', got {intrinsics!r}")
    cams = Cameras(c2w, K, gt_target.width, gt_target.height)
    return cams, {"scale": s, "context_center_residual": float(resid)}


def evaluate_sequence(seq: PosedSequence, context: Sequence[int], target: Sequence[int], vae, decoder, *,
                      vae_size: int, model_size: int, seed: int, head_frames: str = "input",
                      background: Sequence[float] | None = None, lpips=None, target_intrinsics: str = "gt"
                      ) -> dict[str, Any]:
    """One sequence -> {"context", "target", "padded_context", per-view and mean metrics, alignment}."""
    padded = pad_to_4k1(list(context))
    video, model_frames, gt_ctx = load_views(seq, padded, vae_size, model_size)
    _, target_frames, gt_tgt = load_views(seq, target, vae_size, model_size)
    raw = encode(vae, video, seed)
    if head_frames == "decoded":
        heads = decode_to(vae, raw, (model_size, model_size))
    else:
        heads = model_frames[None]
    pred = predict_scene(decoder, raw, heads)
    if not hasattr(pred, "gaussians"):
        raise ValueError(f"eval_nvs: the {decoder.kind} decoder predicts no Gaussians; novel-view synthesis needs a "
                         "stitched AnySplat decoder")
    pred_cams = pred.cameras[0].to(device="cpu", dtype=torch.float64)
    n = len(context)
    targets, align = map_targets(pred_cams[:n], gt_ctx[:n], gt_tgt, target_intrinsics)
    renders = render_views(pred.gaussians[0], targets, background)
    gt = target_frames.to(renders.device)
    views = {"psnr": psnr(renders, gt).tolist(), "ssim": ssim(renders, gt).tolist()}
    if lpips is not None:
        dev = next(lpips.parameters()).device
        with torch.no_grad():
            views["lpips"] = lpips(renders.to(dev), gt.to(dev)).float().cpu().tolist()
    means = {k: _mean(v) for k, v in views.items()}
    return {"sequence": seq.name, "context": list(context), "padded_context": padded, "target": list(target),
            "views": views, "metrics": means, "alignment": align}


# ============================================================================================ official protocol
OFFICIAL_TARGETS = 4
OFFICIAL_NEAR = 1e-10  # AnySplat's renderer hard-codes near_plane=1e-10 (the 0.01 / 100 it is given are unused)
OFFICIAL_BACKGROUND = (1.0, 1.0, 1.0)  # AnySplat's decoder config (splatting_cuda.yaml)


def quantize_8bit(images: Tensor) -> Tensor:
    """The released ``save_image`` + ``ToTensor`` round trip: ``uint8(clip(x, 0, 1) * 255)`` (truncation, float32
    arithmetic) read back as ``/ 255`` float32."""
    return (images.float().clip(0, 1) * 255).to(torch.uint8).float().div(255)


def official_split(n: int, targets: int = OFFICIAL_TARGETS) -> tuple[list[int], list[int]]:
    """Positions in an index-map entry of n ids: (context = all but the last ``targets``, in order; targets = the
    last ``targets`` in REVERSE order), as the released script (``list(range(n))[::-1][:4]``)."""
    if n <= targets:
        raise ValueError(f"an index-map entry needs more than {targets} ids, got {n}")
    tgt = list(range(n))[::-1][:targets]
    return [i for i in range(n) if i not in tgt], tgt


def official_target_cameras(context_c2w: Tensor, joint_c2w: Tensor, joint_k_norm: Tensor, n_context: int,
                            width: int, height: int) -> tuple[Cameras, float]:
    """Target cameras of the released protocol from pass 1 (``context_c2w`` (C, 4, 4)) and pass 2 on context +
    targets (``joint_c2w`` (C + T, 4, 4), normalised intrinsics ``joint_k_norm`` (C + T, 3, 3)): pass-2 target poses
    with translations scaled by ``mean(t_ctx, pass 1) / mean(t_ctx, pass 2)``, intrinsics in pixels. Returns
    (cameras, scale)."""
    scale = context_c2w[:, :3, 3].double().mean() / joint_c2w[:n_context, :3, 3].double().mean()
    c2w = joint_c2w[n_context:].double().clone()
    c2w[:, :3, 3] = c2w[:, :3, 3] * scale
    k = joint_k_norm[n_context:].double().clone()
    k[:, 0] = k[:, 0] * width
    k[:, 1] = k[:, 1] * height
    return Cameras(c2w.float(), k.float(), width, height), float(scale)


def evaluate_sequence_official(name: str, paths: Sequence[Path], vae, decoder, *, vae_size: int, model_size: int,
                               seed: int, lpips=None, background: Sequence[float] | None = OFFICIAL_BACKGROUND,
                               aspect: bool = False) -> dict[str, Any]:
    """One sequence of the official protocol (module docstring); ``paths`` are its frames in index-map order."""
    ctx_pos, tgt_pos = official_split(len(paths))
    video, frames = load_official_views(paths, vae_size, model_size, aspect)
    padded = [*ctx_pos, ctx_pos[-1]] if (len(ctx_pos) - 1) % 4 else list(ctx_pos)
    raw1 = encode(vae, video[padded], seed)
    pass1 = predict_scene(decoder, raw1, frames[padded][None])
    if not hasattr(pass1, "gaussians"):
        raise ValueError(f"eval_nvs: the {decoder.kind} decoder predicts no Gaussians; novel-view synthesis needs a "
                         "stitched AnySplat decoder")
    joint = [*padded, *tgt_pos]
    if (len(joint) - 1) % 4:
        raise ValueError(f"{name}: {len(padded)} context + {len(tgt_pos)} target frames is not 4k+1; the official "
                         "protocol uses 8 context + 4 targets (12 ids per index-map entry)")
    raw2 = encode(vae, video[joint], seed + 1_000_003)
    pass2 = predict_scene(decoder, raw2, frames[joint][None])
    cams, scale = official_target_cameras(pass1.raw["c2w"][0].cpu(), pass2.raw["c2w"][0].cpu(),
                                          pass2.raw["intrinsic_normalized"][0].cpu(), len(padded), model_size,
                                          model_size)
    renders = render_views(pass1.gaussians[0], cams, background, near_plane=OFFICIAL_NEAR)
    pred = quantize_8bit(renders).cpu()
    gt = quantize_8bit(frames[tgt_pos])
    views = {"psnr": psnr(pred, gt).tolist(),
             "ssim": ssim(pred.double(), gt.double(), sample_covariance=True).tolist()}
    if lpips is not None:
        with torch.no_grad():
            views["lpips"] = [float(v) for v in lpips(pred.to(_lpips_device(lpips)), gt.to(_lpips_device(lpips)))]
    means = {k: _mean(v) for k, v in views.items()}
    return {"sequence": name, "context": ctx_pos, "padded_context": padded, "target": tgt_pos, "views": views,
            "metrics": means, "alignment": {"scale": scale}}


def _lpips_device(metric) -> torch.device:
    """Where an LPIPS callable wants its inputs: ``metric.device`` (load_lpips_official), a module's parameters."""
    if hasattr(metric, "device"):
        return torch.device(metric.device)
    params = getattr(metric, "parameters", None)
    return next(params()).device if callable(params) else torch.device("cpu")


def plan_official(root: str | Path, index_path: str | Path | None, seq_list: str | Path | None,
                  limit: int | None) -> list[tuple[str, list[Path]]]:
    """(sequence, frame files in index-map order) for every index-map sequence found under ``root`` (and in
    ``seq_list`` when given), in index-map order."""
    root = Path(root)
    if index_path is None:
        raise ValueError("--protocol official needs --index re10k_indexmap.json (the released index map; "
                         "{sequence: [12 frame ids]}), or use --protocol sim3")
    index = read_index_map(index_path)
    wanted = None
    if seq_list:
        wanted = {ln.strip() for ln in Path(seq_list).read_text().splitlines() if ln.strip()}
    jobs, missing = [], 0
    for name, ids in index.items():
        if wanted is not None and name not in wanted:
            continue
        if not (root / name).is_dir():
            missing += 1
            continue
        frames = official_frame_paths(root, name)
        bad = [i for i in ids if not 0 <= i < len(frames)]
        if bad:
            raise ValueError(f"sequence {name}: index-map ids {bad} out of range 0..{len(frames) - 1}")
        jobs.append((name, [frames[i] for i in ids]))
        if limit and len(jobs) >= limit:
            break
    if missing:
        logger.warning("%d index-map sequences are not under %s (skipped)", missing, root)
    if not jobs:
        raise ValueError(f"no index-map sequence of {index_path} found under {root}")
    return jobs


def evaluate_official(args: argparse.Namespace, data_root: str | Path) -> dict[str, Any]:
    """The official protocol over the index map; returns the report written by :func:`write_results`."""
    from tqdm import tqdm

    vae, decoder, device = build_models(args)
    vae_size = args.vae_size or (64 if args.preset == "tiny" else 512)
    model_size = decoder.model_size_for((vae_size, vae_size))[0]
    jobs = plan_official(data_root, args.index, args.seq_list, args.limit)
    lpips, note, source = None, None, None
    if not args.no_lpips:
        lpips, source = load_lpips_official(args.lpips_net or "vgg", device=device)
        if lpips is None:
            note = f"LPIPS skipped: {source}"
    else:
        note = "LPIPS skipped (--no-lpips)"
    background = tuple(args.background) if args.background is not None else OFFICIAL_BACKGROUND
    results = []
    t0 = time.perf_counter()
    for i, (name, paths) in enumerate(tqdm(jobs, desc="nvs", unit="seq", disable=args.quiet)):
        r = evaluate_sequence_official(name, paths, vae, decoder, vae_size=vae_size, model_size=model_size,
                                       seed=args.seed + i, lpips=lpips, background=background,
                                       aspect=args.resize == "aspect")
        logger.info("%s: %s", name, ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items()))
        results.append(r)
    settings = {"protocol": "official", "data": str(data_root), "index": str(args.index),
                "decoder": "tiny" if args.preset == "tiny" else (args.decoder or "published"),
                "vae": "tiny" if args.preset == "tiny" else args.vae_path, "vae_size": vae_size,
                "model_size": model_size, "latent": args.latent, "resize": args.resize,
                "background": list(background), "seed": args.seed, "lpips_net": args.lpips_net or "vgg",
                "lpips_source": source, "ssim": "scikit-image settings (win 11, gaussian, sample covariance)",
                "quantisation": "8 bit (truncating)", "seconds": time.perf_counter() - t0}
    return {"settings": settings, "overall": summarise(results), "sequences": results,
            "notes": [note] if note else []}


def _mean(values: Sequence[float]) -> float:
    """Mean of the non-NaN values (inf when one is inf: the PSNR of identical images); NaN when none."""
    vals = [float(v) for v in values if not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else float("nan")


def summarise(per_sequence: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Overall means over sequences of the per-sequence means, per metric present."""
    out: dict[str, Any] = {"sequences": len(per_sequence), "views": sum(len(r["target"]) for r in per_sequence)}
    for k in METRICS:
        vals = [r["metrics"][k] for r in per_sequence if k in r["metrics"]]
        out[k] = _mean(vals) if vals else None
    return out


def plan(root: str | Path, context: int, target: int, index_path: str | None, limit: int | None
         ) -> list[tuple[PosedSequence, list[int], list[int]]]:
    """Sequences with their context / target frame ids (index file if given or present, else evenly spaced)."""
    root = Path(root)
    folders = find_sequences(root)
    index_file = Path(index_path) if index_path else (root / INDEX_FILE if (root / INDEX_FILE).is_file() else None)
    index = read_index(index_file) if index_file is not None else None
    jobs = []
    for folder in folders:
        if index is not None:
            entry = index.get(folder.name)
            if entry is None:
                continue
            ctx, tgt = entry["context"], entry["target"]
        else:
            ctx = tgt = None
        seq = read_sequence(folder)
        if ctx is None:
            ctx, tgt = default_views(len(seq), context, target)
        if len(ctx) < 2 or not tgt:
            raise ValueError(f"sequence {seq.name}: needs at least 2 context and 1 target view, got {len(ctx)} and "
                             f"{len(tgt)}")
        jobs.append((seq, list(ctx), list(tgt)))
        if limit and len(jobs) >= limit:
            break
    if not jobs:
        raise ValueError(f"no sequence to evaluate under {root}"
                         + (f" (the index {index_file} selects none of them)" if index_file else ""))
    return jobs


def evaluate(args: argparse.Namespace, data_root: str | Path) -> dict[str, Any]:
    """Run the evaluation; returns the report written by :func:`write_results`."""
    from tqdm import tqdm

    vae, decoder, device = build_models(args)
    vae_size = args.vae_size or (64 if args.preset == "tiny" else 512)
    model_size = decoder.model_size_for((vae_size, vae_size))[0]
    jobs = plan(data_root, args.context, args.target, args.index, args.limit)
    args.lpips_net = args.lpips_net or "alex"
    lpips, note = None, None
    if not args.no_lpips:
        lpips = load_lpips(args.lpips_net, device=device)
        if lpips is None:
            note = (f"LPIPS skipped: {args.lpips_net} weights not found locally (see training/metrics.py "
                    "load_lpips)")
    else:
        note = "LPIPS skipped (--no-lpips)"
    results = []
    t0 = time.perf_counter()
    for i, (seq, ctx, tgt) in enumerate(tqdm(jobs, desc="nvs", unit="seq", disable=args.quiet)):
        r = evaluate_sequence(seq, ctx, tgt, vae, decoder, vae_size=vae_size, model_size=model_size,
                              seed=args.seed + i, head_frames=args.head_frames, background=args.background,
                              lpips=lpips, target_intrinsics=args.target_intrinsics)
        logger.info("%s: %s", seq.name, ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items()))
        results.append(r)
    overall = summarise(results)
    settings = {"data": str(data_root), "decoder": "tiny" if args.preset == "tiny" else (args.decoder or "published"),
                "vae": "tiny" if args.preset == "tiny" else args.vae_path, "vae_size": vae_size,
                "model_size": model_size, "context": args.context, "target": args.target, "latent": args.latent,
                "head_frames": args.head_frames, "background": list(args.background or (0.0, 0.0, 0.0)),
                "seed": args.seed, "protocol": "similarity alignment of predicted to GT context cameras; GT target "
                "poses mapped into the predicted frame", "target_intrinsics": args.target_intrinsics,
                "lpips_net": args.lpips_net,
                "seconds": time.perf_counter() - t0}
    return {"settings": settings, "overall": overall, "sequences": results, "notes": [note] if note else []}


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def summary_table(report: dict[str, Any]) -> str:
    """Markdown table: one row per sequence, then the overall mean."""
    lines = ["# Novel-view synthesis", "", "| sequence | views | PSNR | SSIM | LPIPS |", "| --- | --- | --- | --- | --- |"]
    for r in report["sequences"]:
        m = r["metrics"]
        lines.append(f"| {r['sequence']} | {len(r['target'])} | {_fmt(m.get('psnr'))} | {_fmt(m.get('ssim'))} | "
                     f"{_fmt(m.get('lpips'))} |")
    o = report["overall"]
    lines.append(f"| **mean** | {o['views']} | {_fmt(o['psnr'])} | {_fmt(o['ssim'])} | {_fmt(o['lpips'])} |")
    lines += [""] + [f"Note: {n}" for n in report.get("notes", [])]
    return "\n".join(lines) + "\n"


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    """Strict JSON (inf -> "inf", NaN -> null), written atomically."""
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(_json_safe(obj), fh, indent=2, allow_nan=False)
        fh.write("\n")


def write_results(out_dir: str | Path, report: dict[str, Any]) -> list[Path]:
    """``nvs_results.json`` + ``nvs_summary.md`` into ``out_dir`` (atomically). Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RESULTS_JSON, report)
    with atomic_write(out / SUMMARY_MD, "w", encoding="utf-8") as fh:
        fh.write(summary_table(report))
    return [out / RESULTS_JSON, out / SUMMARY_MD]


# ============================================================================================ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.eval_nvs", description=__doc__.split("\n\n")[0],
                                epilog="Protocol details: see the module docstring of training/eval_nvs.py.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", default=None, help="RE10K-style root: ROOT/<sequence>/{images/,cameras.json}")
    d.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="evaluate N synthetic sequences with known cameras (written under --output/synthetic_data)")
    d.add_argument("--protocol", choices=("official", "sim3"), default="official",
                   help="official (default): the released VIST3A protocol (second pass for target poses, 8-bit PNGs, "
                        "LPIPS VGG, scikit-image SSIM); sim3: GT target poses through a similarity fit of the "
                        "context cameras (module docstring)")
    d.add_argument("--index", default=None, help="official: the index map re10k_indexmap.json ({sequence: [12 ids]}); "
                                                  f"sim3: evaluation index JSON (default ROOT/{INDEX_FILE} if present, "
                                                  "else evenly spaced views)")
    d.add_argument("--seq-list", default=None, help="official: only these sequences (re10k_test.txt, one per line)")
    d.add_argument("--resize", choices=("official", "aspect"), default="official",
                   help="official: the released resize (with its width/height swap for non-square frames); "
                        "aspect: keep the aspect ratio")
    d.add_argument("--context", type=int, default=8, help="context views without an index (default 8)")
    d.add_argument("--target", type=int, default=4, help="target views without an index (default 4)")
    d.add_argument("--limit", type=int, default=None, help="evaluate at most this many sequences")
    d.add_argument("--vae-size", type=int, default=None, help="video frame size (default 512; tiny 64); the 3D size "
                                                              "follows (x14/16)")
    add_model_arguments(p)
    e = p.add_argument_group("evaluation")
    e.add_argument("--head-frames", choices=("input", "decoded"), default="input",
                   help="RGB for the Gaussian head: the context frames (default) or their VAE round trip")
    e.add_argument("--background", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="render background in [0, 1] (default black)")
    e.add_argument("--target-intrinsics", choices=("gt", "predicted"), default="gt",
                   help="target intrinsics: ground truth (default) or the mean predicted context intrinsics")
    e.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    e.add_argument("--lpips-net", choices=("alex", "vgg"), default=None,
                   help="LPIPS backbone (default: vgg for official, alex for sim3)")
    p.add_argument("--output", required=True, help="output folder (nothing is written elsewhere)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _synthetic_index_map(root: Path, path: Path) -> Path:
    """An official-style index map (12 ids per sequence: 8 context spread over the clip, 4 targets between them)
    for the synthetic sequences of ``--synthetic``."""
    index = {}
    for folder in find_sequences(root):
        ctx, tgt = default_views(len(read_sequence(folder)), 8, 4)
        index[folder.name] = [*ctx, *tgt]
    write_json(path, index)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def work() -> None:
        if bool(args.data) == bool(args.synthetic):
            raise ValueError("pass exactly one of --data ROOT or --synthetic N")
        if args.preset is None and args.decoder is None:
            logger.info("no --decoder: using the published HJGO/VIST3A/anysplat_stitched.pth")
        if args.protocol == "official" and not args.synthetic and args.index is None:
            raise ValueError("--protocol official needs --index re10k_indexmap.json (the released index map, "
                             "{sequence: [12 frame ids]}); or use --protocol sim3")
        root = args.data
        if args.synthetic:
            size = args.vae_size or (64 if args.preset == "tiny" else 512)
            root = Path(args.output) / "synthetic_data"
            frames = max(16, args.context + args.target + 4)
            write_synthetic_sequences(root, args.synthetic, frames, size, width=size + size // 4, seed=args.seed)
            if args.protocol == "official" and args.index is None:
                args.index = str(_synthetic_index_map(root, Path(args.output) / "synthetic_index_map.json"))
        if args.protocol == "official":
            report = evaluate_official(args, root)
        else:
            args.lpips_net = args.lpips_net or "alex"
            report = evaluate(args, root)
        paths = write_results(args.output, report)
        o = report["overall"]
        logger.info("overall over %d sequences: PSNR %s, SSIM %s, LPIPS %s; wrote %s", o["sequences"],
                    _fmt(o["psnr"]), _fmt(o["ssim"]), _fmt(o["lpips"]), ", ".join(str(p) for p in paths))

    return run_cli(work)


if __name__ == "__main__":
    sys.exit(main())
