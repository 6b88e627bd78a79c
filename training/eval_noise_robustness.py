"""Latent-noise robustness (paper appendix D.2): stitched decoding of a perturbed latent vs decode-then-reconstruct.

Usage::

    python -m training.eval_noise_robustness --data /data/dl3dv --clips 20 --decoder HJGO/VIST3A/anysplat_stitched.pth \\
        --base-model lhjiang/anysplat --vae-path Wan-AI/Wan2.1-T2V-1.3B-Diffusers --output runs/noise

    python -m training.eval_noise_robustness --preset tiny --synthetic --clips 2 --output /tmp/noise   # smoke test

Per clip (T = 4k+1 frames, 13 by default; video size S, 3D size s = S/16*14):

* reference: the ORIGINAL 3D model (base AnySplat / VGGT, uncut) on the clean frames at the 3D size (as the data
  loader makes them: centre crop, bicubic resize) -> cameras, depth, Gaussians; reference renders = its Gaussians at
  its cameras;
* z = VAE latent of the clean clip (raw, un-normalised; encoder mean by default, ``--latent sample`` for a seeded
  sample); one noise tensor eps ~ N(0, I) per clip, shared by all alphas;
* for each alpha: ``z' = z + alpha * ||z|| * eps`` (paper Eq. 7), where ``||z||`` is per sample the plain Frobenius
  norm of the latent (``--norm frobenius``, default): the reading under which the paper's alphas make sense (its
  Fig. 8 shows the methods separating already at alpha = 1e-4..2e-4, and the default alphas span that range). Then
  the noise per element is ``alpha ||z||_F`` standard deviations, i.e. ``alpha sqrt(numel)`` times the latent RMS
  (about 1,400 alpha for a 13-frame 512 px latent). ``--norm rms`` uses the RMS ``||z||_F / sqrt(numel)`` instead, so
  that alpha is the noise-to-signal norm ratio (``||z' - z||_F ~= alpha ||z||_F``; this pack's earlier default,
  with alphas up to 0.5);
  - stitched: the stitched decoder on z' (its Gaussian head reads the VAE decode of z' at the 3D size, as in the
    text-to-3D pipeline);
  - decode-then-reconstruct: the VAE decodes z' to frames, they are resized to the 3D size (bilinear, as the
    official pipeline) and the original 3D model reconstructs from them.
* metrics of each method against the reference: ``psnr_ref_cams`` / ``ssim_ref_cams`` (the method's Gaussians
  rendered at the reference cameras vs the reference renders), ``psnr_own_cams`` (rendered at its own predicted
  cameras), ``depth_abs_rel`` (mean |d - d_ref| / d_ref over pixels of the predicted depth maps) and
  ``rot_err_deg`` (mean angle between relative camera rotations R_i R_0^T of method and reference). VGGT decoders
  have no Gaussians: only the depth and rotation errors.

Writes into ``--output`` only, at the end, atomically (Ctrl-C: exit 130, no partial file): ``noise_results.json``
(settings, per-clip numbers, mean curves), ``noise_summary.md``, ``noise_psnr.png`` (PSNR at the reference cameras
vs alpha; AnySplat only) and ``noise_depth.png`` (depth AbsRel vs alpha).
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as `python training/<script>.py`: import it as part of the training package
    import os as _os
    import sys as _sys

    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    __package__ = "training"  # noqa: A001 (PEP 366: makes the relative imports below work)

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vist3a.io.atomic import atomic_write

from .eval_nvs import (
    _fmt,
    _mean,
    add_model_arguments,
    build_models,
    decode_to,
    encode,
    predict_scene,
    render_views,
    write_json,
)
from .metrics import psnr, ssim
from .plots import plot_curves
from .runtime import run_cli

__all__ = [
    "METHODS",
    "build_original_model",
    "build_parser",
    "compare",
    "evaluate",
    "latent_norm",
    "main",
    "parse_alphas",
    "perturb",
]

logger = logging.getLogger(__name__)

METHODS = ("stitched", "decode_reconstruct")
RESULTS_JSON = "noise_results.json"
SUMMARY_MD = "noise_summary.md"
PSNR_PNG = "noise_psnr.png"
DEPTH_PNG = "noise_depth.png"
#: with the Frobenius norm (default): the paper's range (Fig. 8 separates the methods at 1e-4..2e-4)
DEFAULT_ALPHAS = "0,5e-5,1e-4,2e-4,5e-4,1e-3"
CURVE_METRICS = ("psnr_ref_cams", "ssim_ref_cams", "psnr_own_cams", "depth_abs_rel", "rot_err_deg")


def latent_norm(z: Tensor, norm: str = "rms") -> Tensor:
    """Per-sample latent norm, shaped (B, 1, ..., 1) to broadcast against ``z`` (B, ...): ``"rms"`` =
    ``||z_b||_F / sqrt(numel(z_b))``; ``"frobenius"`` = ``||z_b||_F``."""
    flat = z.flatten(1).double()
    n = flat.norm(dim=1)
    if norm == "rms":
        n = n / math.sqrt(flat.shape[1])
    elif norm != "frobenius":
        raise ValueError(f"latent_norm: norm must be 'rms' or 'frobenius', got {norm!r}")
    return n.to(z.dtype).view(-1, *([1] * (z.dim() - 1)))


def perturb(z: Tensor, alpha: float, eps: Tensor, norm: str = "frobenius") -> Tensor:
    """``z + alpha * ||z|| * eps`` (paper D.2) with the per-sample norm of :func:`latent_norm`; alpha = 0 returns
    ``z`` itself (bit-identical)."""
    if alpha == 0:
        return z
    if eps.shape != z.shape:
        raise ValueError(f"perturb: noise {tuple(eps.shape)} must have the latent's shape {tuple(z.shape)}")
    return z + float(alpha) * latent_norm(z, norm) * eps.to(z.dtype)


def parse_alphas(text: str) -> list[float]:
    """``"0,0.1,0.2"`` -> [0.0, 0.1, 0.2]; sorted, unique, non-negative."""
    try:
        vals = sorted({float(t) for t in text.split(",") if t.strip()})
    except ValueError as exc:
        raise ValueError(f"--alphas must be comma-separated numbers, got {text!r}") from exc
    if not vals or vals[0] < 0 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"--alphas must be finite non-negative numbers, got {text!r}")
    return vals


def build_original_model(args: argparse.Namespace, decoder, device: torch.device):
    """The uncut 3D model the stitched decoder was made from: tiny -> the same tiny random model (same seed as
    :func:`vist3a.pipeline.presets.tiny_decoder`); else ``--base-model`` (default lhjiang/anysplat for AnySplat)."""
    if args.preset == "tiny":
        from vist3a.models import VGGT, AnySplat, AnySplatConfig, VGGTConfig

        torch.manual_seed(args.seed)  # tiny_decoder(seed) builds its model first after the same seeding
        model = AnySplat(AnySplatConfig.tiny()) if decoder.kind == "anysplat" else VGGT(VGGTConfig.tiny())
    else:
        from vist3a.models import from_pretrained

        source = args.base_model or args.base or ("lhjiang/anysplat" if decoder.kind == "anysplat" else None)
        if source is None:
            raise ValueError(f"--base-model is required for a {decoder.kind} decoder (e.g. facebook/VGGT-1B, "
                             "Zhenggang/MV-DUSt3R/checkpoints/MVDp_s2.pth)")
        model = from_pretrained(source, model=decoder.kind)
    param = next(decoder.parameters())
    return model.to(device=device, dtype=param.dtype).eval()


def _relative_rotations(c2w: Tensor) -> Tensor:
    r = c2w[:, :3, :3].double()
    return r @ r[:1].transpose(1, 2)


def compare(pred, ref, ref_renders: Tensor | None, views: Sequence[int], background=None) -> dict[str, float]:
    """Metrics of one prediction against the reference prediction (see the module docstring)."""
    out: dict[str, float] = {}
    pcams, rcams = pred.cameras[0].to("cpu", torch.float32), ref.cameras[0].to("cpu", torch.float32)
    if ref_renders is not None and hasattr(pred, "gaussians"):
        idx = list(views)
        at_ref = render_views(pred.gaussians[0], rcams[torch.tensor(idx)], background).cpu()
        at_own = render_views(pred.gaussians[0], pcams[torch.tensor(idx)], background).cpu()
        out["psnr_ref_cams"] = _mean(psnr(at_ref, ref_renders).tolist())
        out["ssim_ref_cams"] = _mean(ssim(at_ref, ref_renders).tolist()) if min(at_ref.shape[-2:]) >= 11 else None
        out["psnr_own_cams"] = _mean(psnr(at_own, ref_renders).tolist())
    d, dr = pred.depth[0].float().cpu(), ref.depth[0].float().cpu()
    out["depth_abs_rel"] = float(((d - dr).abs() / dr.clamp_min(1e-6)).mean())
    rel = _relative_rotations(pcams.c2w).transpose(1, 2) @ _relative_rotations(rcams.c2w)
    cos = (rel.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    skew = rel - rel.transpose(1, 2)
    sin = torch.stack([skew[:, 2, 1], skew[:, 0, 2], skew[:, 1, 0]], -1).norm(dim=-1) / 2
    out["rot_err_deg"] = float(torch.rad2deg(torch.atan2(sin, cos)).mean())  # atan2: accurate near 0
    return out


@torch.no_grad()
def evaluate_clip(frames_vae: Tensor, frames_3d: Tensor, vae, decoder, original, alphas: Sequence[float], *,
                  seed: int, norm: str, views: Sequence[int] | None, background=None) -> dict[str, Any]:
    """One clip (T, 3, S, S) + (T, 3, s, s) in [0, 1] -> {alpha: {method: metrics}} plus the latent norm."""
    param = next(original.parameters())
    size = tuple(frames_3d.shape[-2:])
    ref = original.predict(frames_3d[None].to(device=param.device, dtype=param.dtype))
    idx = list(range(frames_3d.shape[0])) if views is None else list(views)
    ref_renders = None
    if hasattr(ref, "gaussians"):
        ref_renders = render_views(ref.gaussians[0], ref.cameras[0].to("cpu", torch.float32)[torch.tensor(idx)],
                                   background).cpu()
    z = encode(vae, frames_vae, seed)
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(int(seed) + 7), dtype=torch.float32)
    eps = eps.to(z.device)
    curve = {}
    for alpha in alphas:
        zp = perturb(z, alpha, eps, norm)
        decoded = decode_to(vae, zp, size)
        stitched = predict_scene(decoder, zp, decoded)
        recon = original.predict(decoded.to(device=param.device, dtype=param.dtype))
        curve[f"{alpha:g}"] = {"stitched": compare(stitched, ref, ref_renders, idx, background),
                               "decode_reconstruct": compare(recon, ref, ref_renders, idx, background)}
    return {"latent_rms": float(latent_norm(z, "rms").flatten()[0]), "alphas": curve}


def mean_curves(clips: Sequence[dict[str, Any]], alphas: Sequence[float]) -> dict[str, dict[str, list]]:
    """{method: {metric: [mean over clips per alpha]}} (None where a metric is absent)."""
    out: dict[str, dict[str, list]] = {}
    for method in METHODS:
        out[method] = {}
        for metric in CURVE_METRICS:
            row = []
            for a in alphas:
                vals = [c["alphas"][f"{a:g}"][method].get(metric) for c in clips]
                vals = [v for v in vals if v is not None]
                row.append(_mean(vals) if vals else None)
            out[method][metric] = row
    return out


def _data(args: argparse.Namespace, views: int, vae_size: int, model_size: int):
    from .data import FolderClips, SyntheticClips

    if bool(args.data) == bool(args.synthetic):
        raise ValueError("pass exactly one of --data ROOT or --synthetic")
    if args.synthetic:
        return SyntheticClips(args.clips, views=views, vae_size=vae_size, model_size=model_size, seed=args.seed)
    return FolderClips(args.data, args.clips, views=views, window=args.window, vae_size=vae_size,
                       model_size=model_size, seed=args.seed, image_dir=args.image_dir)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    alphas = parse_alphas(args.alphas)
    vae, decoder, device = build_models(args)
    original = build_original_model(args, decoder, device)
    vae_size = args.vae_size or (64 if args.preset == "tiny" else 512)
    model_size = decoder.model_size_for((vae_size, vae_size))[0]
    views = args.views or (9 if args.preset == "tiny" else 13)
    tc = vae.temporal_compression
    if (views - 1) % tc:
        raise ValueError(f"--views must be {tc}k+1 for the {getattr(vae, 'name', 'video')} VAE, got {views}")
    render_idx = None
    if args.render_views:
        render_idx = sorted({round(i * (views - 1) / max(args.render_views - 1, 1))
                             for i in range(min(args.render_views, views))})
    data = _data(args, views, vae_size, model_size)
    clips = []
    t0 = time.perf_counter()
    for i in tqdm(range(len(data)), desc="noise", unit="clip", disable=args.quiet):
        item = data[i]
        r = evaluate_clip(item["vae"], item["model"], vae, decoder, original, alphas, seed=args.seed + i,
                          norm=args.norm, views=render_idx, background=args.background)
        r.update({"scene": item["scene"], "indices": list(item["indices"])})
        clips.append(r)
    settings = {"data": "synthetic" if args.synthetic else str(args.data), "clips": len(clips), "views": views,
                "vae_size": vae_size, "model_size": model_size, "alphas": alphas, "norm": args.norm,
                "latent": args.latent, "decoder": "tiny" if args.preset == "tiny" else (args.decoder or "published"),
                "original": "tiny" if args.preset == "tiny" else (args.base_model or args.base or "lhjiang/anysplat"),
                "kind": decoder.kind, "render_views": render_idx, "seed": args.seed,
                "seconds": time.perf_counter() - t0}
    return {"settings": settings, "curves": mean_curves(clips, alphas), "clips": clips}


def summary_table(report: dict[str, Any]) -> str:
    alphas = report["settings"]["alphas"]
    c = report["curves"]
    lines = ["# Latent-noise robustness", "", f"z' = z + alpha * ||z|| * eps, ||z|| = {report['settings']['norm']}",
             "", "| alpha | method | PSNR@ref | SSIM@ref | PSNR@own | depth AbsRel | rot err (deg) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for j, a in enumerate(alphas):
        for m in METHODS:
            vals = [c[m][k][j] for k in CURVE_METRICS]
            lines.append(f"| {a:g} | {m} | " + " | ".join(_fmt(v) for v in vals) + " |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | Path, report: dict[str, Any]) -> list[Path]:
    """JSON, markdown table and the PNG curves into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    alphas = report["settings"]["alphas"]
    c = report["curves"]
    paths = []
    if any(v is not None for m in METHODS for v in c[m]["psnr_ref_cams"]):
        plot_curves(out / PSNR_PNG, alphas, {m: c[m]["psnr_ref_cams"] for m in METHODS},
                    title="renders vs clean original model (reference cameras)", xlabel="alpha (latent noise level)",
                    ylabel="PSNR (dB)")
        paths.append(out / PSNR_PNG)
    plot_curves(out / DEPTH_PNG, alphas, {m: c[m]["depth_abs_rel"] for m in METHODS},
                title="depth vs clean original model", xlabel="alpha (latent noise level)", ylabel="depth AbsRel")
    paths.append(out / DEPTH_PNG)
    write_json(out / RESULTS_JSON, report)
    with atomic_write(out / SUMMARY_MD, "w", encoding="utf-8") as fh:
        fh.write(summary_table(report))
    return [out / RESULTS_JSON, out / SUMMARY_MD, *paths]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.eval_noise_robustness",
                                description=__doc__.split("\n\n")[0],
                                epilog="Protocol and noise definition: see the module docstring.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", default=None, help="folder of scenes (training/data.py layouts: ROOT/<scene>/*.png, "
                                                "DL3DV images_4/, ...)")
    d.add_argument("--synthetic", action="store_true", help="procedural synthetic clips instead of --data")
    d.add_argument("--image-dir", default=None, help="image sub-folder of each scene (see training/data.py)")
    d.add_argument("--clips", type=int, default=10, help="number of clips (default 10)")
    d.add_argument("--views", type=int, default=None, help="frames per clip, 4k+1 (default 13; tiny 9)")
    d.add_argument("--window", type=int, default=50, help="frame window per clip (training/data.py sampling)")
    d.add_argument("--vae-size", type=int, default=None, help="video frame size (default 512; tiny 64)")
    add_model_arguments(p)
    p.set_defaults(latent="mean")
    g = p.add_argument_group("noise")
    g.add_argument("--base-model", default=None, help="the original (uncut) 3D model: hub id / folder / weights "
                                                      "(default: --base, else lhjiang/anysplat)")
    g.add_argument("--alphas", default=DEFAULT_ALPHAS, help=f"noise levels (default {DEFAULT_ALPHAS})")
    g.add_argument("--norm", choices=("rms", "frobenius"), default="frobenius",
                   help="||z||: per-sample plain Frobenius norm (default, the paper's reading: alpha 1e-4..2e-4 "
                        "already separates the methods) or RMS (alpha = noise/signal norm ratio)")
    g.add_argument("--render-views", type=int, default=None,
                   help="render only this many evenly spaced views per clip (default all)")
    g.add_argument("--background", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="render background in [0, 1] (default black)")
    p.add_argument("--output", required=True, help="output folder (nothing is written elsewhere)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def work() -> None:
        report = evaluate(args)
        paths = write_results(args.output, report)
        logger.info("wrote %s", ", ".join(str(p) for p in paths))

    return run_cli(work)


if __name__ == "__main__":
    sys.exit(main())
