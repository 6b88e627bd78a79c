"""The ``vist3a`` command line.

``info`` and ``render`` inspect and render splat files; ``generate`` runs text -> 3D and ``reconstruct`` video /
frames -> 3D through :mod:`vist3a.pipeline` (``--preset tiny``: small random models, plumbing only;
``--preset micro``: the shipped models trained on the micro world).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

log = logging.getLogger("vist3a")

__all__ = ["build_parser", "main"]


def _load_scene(path: Path):
    """Gaussians from a 3DGS .ply / .splat, or a PointCloud from a point-cloud .ply."""
    from .io import load_gaussians, read_ply_header, read_point_cloud_ply

    if path.suffix.lower() == ".ply":
        vertex = read_ply_header(path).element("vertex")
        if vertex is not None and "f_dc_0" not in vertex.names and "scale_0" not in vertex.names:
            return read_point_cloud_ply(path)
    return load_gaussians(path)


def _cmd_info(args: argparse.Namespace) -> int:
    from .gaussians import Gaussians

    scene = _load_scene(Path(args.file))
    kind = "gaussian splats" if isinstance(scene, Gaussians) else "point cloud"
    lines = [f"file:        {args.file}", f"kind:        {kind}", f"count:       {len(scene)}"]
    if isinstance(scene, Gaussians):
        lines.append(f"sh degree:   {scene.sh_degree}")
        if len(scene):
            op = scene.opacities
            lines.append(f"opacity:     mean {op.mean():.3f}, {(op < 0.005).float().mean() * 100:.1f}% below 0.005")
            lines.append(f"scale:       median {scene.scales.median():.4g}, max {scene.scales.max():.4g}")
    points = scene.means if isinstance(scene, Gaussians) else scene.points
    if len(scene):
        lo, hi = points.amin(0).tolist(), points.amax(0).tolist()
        lines.append("bounds min:  " + ", ".join(f"{v:.4g}" for v in lo))
        lines.append("bounds max:  " + ", ".join(f"{v:.4g}" for v in hi))
    print("\n".join(lines))
    return 0


def _orbit_for(points, num_views: int, size: int, elevation: float, fov: float):
    """Cameras orbiting the robust centre of ``points`` (N, 3) far enough to frame its robust extent."""
    import torch

    from .cameras import Cameras

    pts = points.float()
    if pts.shape[0] > 200_000:  # quantiles of a subset are as good and stay within torch.quantile's limits
        pts = pts[torch.randperm(pts.shape[0], generator=torch.Generator().manual_seed(0))[:200_000]]
    q = torch.tensor([0.02, 0.5, 0.98])
    lo, mid, hi = torch.quantile(pts, q, dim=0)
    extent = float((hi - lo).norm()) / 2 or 1.0
    radius = extent / math.sin(math.radians(fov) / 2) * 1.1
    return Cameras.orbit(num_views, center=mid, radius=radius, elevation_deg=elevation, fov_deg=fov,
                         width=size, height=size)


def _write_mp4(path: Path, frames, fps: int) -> None:
    """(V, H, W, 3) uint8 -> H.264 .mp4 via imageio-ffmpeg, written atomically (temporary file, then rename)."""
    import imageio_ffmpeg

    from .io.atomic import atomic_path

    h, w = frames.shape[1:3]
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(tmp, (w, h), fps=fps, macro_block_size=1, output_params=["-f", "mp4"])
        writer.send(None)
        for frame in frames:
            writer.send(frame.copy(order="C"))
        writer.close()


def _cmd_render(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from .gaussians import Gaussians
    from .io.atomic import atomic_write
    from .render import render, render_point_cloud

    out = Path(args.output)
    if out.suffix.lower() not in (".png", ".mp4"):
        raise ValueError(f"output must be a .png (grid) or .mp4 (orbit video) file, got '{out.name}'")
    if out.suffix.lower() == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401  (optional: ships its own ffmpeg binary)
        except ImportError:
            raise ValueError("writing .mp4 needs the optional imageio-ffmpeg package (`pip install imageio-ffmpeg`); "
                             "or write a .png grid") from None
    if args.views < 1 or args.size < 8:
        raise ValueError("--views must be >= 1 and --size >= 8")
    scene = _load_scene(Path(args.file))
    if len(scene) == 0:
        raise ValueError(f"'{args.file}' holds no splats or points")
    device = torch.device(args.device)
    scene = scene.to(device=device)
    points = scene.means if isinstance(scene, Gaussians) else scene.points
    cams = _orbit_for(points.cpu(), args.views, args.size, args.elevation, args.fov).to(device=device)
    bg = torch.tensor([1.0, 1.0, 1.0] if args.background == "white" else [0.0, 0.0, 0.0], device=device)
    with torch.no_grad():
        if isinstance(scene, Gaussians):
            images = render(scene, cams, background=bg).rgb
        else:
            lo, hi = scene.points.amin(0), scene.points.amax(0)
            radius = float((hi - lo).norm()) / 400 or 0.01
            images = render_point_cloud(scene, cams, radius=radius, background=bg).rgb
    frames = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    if out.suffix.lower() == ".mp4":
        _write_mp4(out, frames, args.fps)
        log.info("wrote a %d-frame orbit video to %s", args.views, out)
        return 0
    cols = math.ceil(math.sqrt(args.views))
    rows = math.ceil(args.views / cols)
    grid = np.zeros((rows * args.size, cols * args.size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, cols)
        grid[r * args.size : (r + 1) * args.size, c * args.size : (c + 1) * args.size] = frame
    with atomic_write(out) as f:
        Image.fromarray(grid).save(f, format="PNG")
    log.info("wrote %d orbit views to %s", args.views, out)
    return 0


# ============================================================================================ generate / reconstruct
_DTYPES = {"fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32",
           "float32": "float32"}


def _parse_size(text: str | None) -> tuple[int, int] | None:
    """``"512"`` -> (512, 512); ``"WxH"`` -> (H, W)."""
    if text is None:
        return None
    parts = str(text).lower().split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--size {text!r}: use one number (512) or WIDTHxHEIGHT (768x512)") from None
    if len(vals) == 1:
        return vals[0], vals[0]
    if len(vals) == 2:
        return vals[1], vals[0]
    raise ValueError(f"--size {text!r}: use one number (512) or WIDTHxHEIGHT (768x512)")


def _outputs(args: argparse.Namespace) -> dict[str, Path]:
    """Check every output path before any model is loaded: suffix, existing folder, no two the same."""
    outs = {"scene": Path(args.output)}
    if args.pointmap:
        outs["pointmap"] = Path(args.pointmap)
    if args.splat:
        outs["splat"] = Path(args.splat)
    wanted = {"scene": (".ply", ".splat"), "pointmap": (".ply",), "splat": (".splat",)}
    flags = {"scene": "-o/--output", "pointmap": "--pointmap", "splat": "--splat"}
    for key, path in outs.items():
        if path.suffix.lower() not in wanted[key]:
            raise ValueError(f"{flags[key]} {str(path)!r} must end in {' or '.join(wanted[key])}")
        parent = path.expanduser().resolve().parent
        if not parent.is_dir():
            raise ValueError(f"{flags[key]} {str(path)!r}: folder {parent} does not exist; create it first")
        if path.is_dir():
            raise ValueError(f"{flags[key]} {str(path)!r} is a folder; give a file name")
    resolved = [p.expanduser().resolve() for p in outs.values()]
    if len(set(resolved)) != len(resolved):
        raise ValueError("-o, --pointmap and --splat must be different files")
    return outs


def _check_sizes(args: argparse.Namespace) -> tuple[int, int] | None:
    """Frame count and size checks before any model is loaded (fail fast, never change them silently)."""
    from .pipeline.settings import check_frames, check_size

    if args.frames is not None:
        check_frames(args.frames)
    size = _parse_size(args.size)
    if size is not None:
        check_size(*size)
    return size


def _runtime(args: argparse.Namespace):
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available in this torch build; use --device cpu")
    name = args.dtype or ("fp16" if device.startswith("cuda") else "fp32")
    if name not in _DTYPES:
        raise ValueError(f"--dtype {name!r}: choose fp16, bf16 or fp32")
    dec_name = args.decoder_dtype or "fp32"
    if dec_name not in _DTYPES:
        raise ValueError(f"--decoder-dtype {dec_name!r}: choose fp16, bf16 or fp32")
    return device, getattr(torch, _DTYPES[name]), getattr(torch, _DTYPES[dec_name])


def _check_preset(args: argparse.Namespace, model_flags: tuple[str, ...]) -> None:
    if args.preset == "micro":
        given = [f"--{f.replace('_', '-')}" for f in (*model_flags, "decoder", "lora")
                 if getattr(args, f, None) is not None]
        if given:
            raise ValueError(f"--preset micro uses the shipped micro models; drop {', '.join(given)}")
    if args.preset == "tiny":
        given = [f"--{f.replace('_', '-')}" for f in model_flags if getattr(args, f, None) is not None]
        if given:
            raise ValueError(f"--preset tiny builds its own tiny models; drop {', '.join(given)} (--decoder / --lora "
                             "may name a decoder / adapter trained on the tiny models)")


def _per_pixel(pipe, args: argparse.Namespace) -> None:
    if getattr(args, "per_pixel", False):
        from .stitching.checkpoint import use_per_pixel_gaussians

        use_per_pixel_gaussians(pipe.decoder)


def _write_scene(scene, outs: dict[str, Path], sh_degree: int | None) -> None:
    from .io import save_gaussians, write_point_cloud_ply, write_splat

    if scene.gaussians is None and outs["scene"].suffix.lower() == ".ply":
        cloud = scene.pointmap.to_point_cloud()
        write_point_cloud_ply(outs["scene"], cloud)
        log.info("wrote %d points to %s (this decoder predicts pointmaps, not Gaussians)", len(cloud), outs["scene"])
    elif scene.gaussians is None:
        raise ValueError("this decoder predicts pointmaps only; write a .ply point cloud instead of a .splat")
    else:
        g = scene.gaussians
        if sh_degree is not None and sh_degree >= 0:
            g = g.with_sh_degree(min(sh_degree, g.sh_degree))
        save_gaussians(outs["scene"], g)
        log.info("wrote %d Gaussians (SH degree %d) to %s", len(g), g.sh_degree, outs["scene"])
    if "pointmap" in outs:
        cloud = scene.pointmap.to_point_cloud()
        write_point_cloud_ply(outs["pointmap"], cloud)
        log.info("wrote %d points to %s", len(cloud), outs["pointmap"])
    if "splat" in outs:
        if scene.gaussians is None:
            raise ValueError("--splat needs a Gaussian decoder (AnySplat); this decoder predicts pointmaps only")
        write_splat(outs["splat"], scene.gaussians)
        log.info("wrote %d Gaussians to %s", len(scene.gaussians), outs["splat"])


def _cmd_generate(args: argparse.Namespace) -> int:
    from .pipeline import TextTo3DPipeline
    from .pipeline.settings import check_prompt

    check_prompt(args.prompt)
    outs = _outputs(args)
    size = _check_sizes(args)
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps {args.steps}: must be >= 1 (published: 50)")
    device, dtype, dec_dtype = _runtime(args)
    _check_preset(args, ("wan", "base"))
    if args.preset == "tiny":
        pipe = TextTo3DPipeline.tiny(seed=0, decoder=args.decoder, lora=args.lora)
        if device != "cpu":
            pipe.to(device)
    elif args.preset == "micro":
        pipe = TextTo3DPipeline.micro()
        if device != "cpu":
            pipe.to(device)
    else:
        if device == "cpu":
            log.warning("running the full-size models on the CPU: expect hours, not minutes (use a CUDA GPU, or "
                        "--preset tiny for a quick offline check)")
        pipe = TextTo3DPipeline.from_pretrained(
            wan=args.wan or "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", decoder=args.decoder,
            lora="auto" if args.lora is None else args.lora, base=args.base, dtype=dtype, decoder_dtype=dec_dtype)
        if args.offload == "model":
            pipe.enable_model_cpu_offload(device)
        elif args.offload == "sequential":
            pipe.enable_sequential_cpu_offload(device)
        else:
            pipe.to(device)
        if args.vae_tiling:
            pipe.enable_vae_tiling()
    _per_pixel(pipe, args)
    kwargs = {}
    if args.no_template:
        kwargs["prompt_template"] = None
    scene = pipe(args.prompt, negative_prompt=args.negative_prompt, num_frames=args.frames,
                 height=size[0] if size else None, width=size[1] if size else None, num_inference_steps=args.steps,
                 guidance_scale=args.cfg, flow_shift=args.flow_shift, seed=args.seed,
                 progress=not args.no_progress, **kwargs)
    _write_scene(scene, outs, args.sh_degree)
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from .pipeline import VideoTo3DPipeline

    source = Path(args.input)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist (pass a folder of ordered frames or a video file)")
    outs = _outputs(args)
    size = _check_sizes(args)
    device, dtype, dec_dtype = _runtime(args)
    _check_preset(args, ("wan", "base"))
    if args.preset == "tiny":
        pipe = VideoTo3DPipeline.tiny(seed=0, decoder=args.decoder)
    elif args.preset == "micro":
        pipe = VideoTo3DPipeline.micro()
    else:
        pipe = VideoTo3DPipeline.from_pretrained(wan=args.wan or "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                                                 decoder=args.decoder, base=args.base, dtype=dtype,
                                                 decoder_dtype=dec_dtype)
        if args.vae_tiling:
            pipe.enable_vae_tiling()
    pipe.to(device)
    _per_pixel(pipe, args)
    scene = pipe(source, num_frames=args.frames, height=size[0] if size else None,
                 width=size[1] if size else None, seed=args.seed if args.seed is not None else 0)
    _write_scene(scene, outs, args.sh_degree)
    return 0


def _add_common(p: argparse.ArgumentParser, presets: tuple[str, ...] = ("tiny",)) -> None:
    p.add_argument("-o", "--output", required=True, help="scene file: 3DGS .ply (or .splat), written atomically")
    p.add_argument("--pointmap", help="also write the pointmap as a point-cloud .ply")
    p.add_argument("--splat", help="also write an antimatter15 .splat file")
    p.add_argument("--sh-degree", type=int, default=0,
                   help="SH degree written to the .ply (default 0 = DC colour only, as the published export; "
                        "-1 keeps the model's)")
    p.add_argument("--frames", type=int, help="video frames, 4k+1 (default 13; tiny and micro presets 9)")
    p.add_argument("--size", help="video size: 512 or WIDTHxHEIGHT, multiples of 16; the 3D model sees size/16*14 "
                                  "(default 512 -> 448; tiny and micro presets 64)")
    p.add_argument("--seed", type=int, help="random seed (generate: initial noise; reconstruct: encoder sample)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", help="Wan dtype: fp16 (default on CUDA, published), bf16, fp32 (default on CPU)")
    p.add_argument("--decoder-dtype", help="stitched decoder dtype (default fp32)")
    p.add_argument("--wan", help="Wan 2.1 diffusers pipeline: hub id or folder (default "
                                 "Wan-AI/Wan2.1-T2V-1.3B-Diffusers)")
    p.add_argument("--decoder", help="stitched decoder: HJGO/VIST3A/anysplat_stitched.pth (default), a local .pth, "
                                     "or a decoder folder / hub repo saved by vist3a")
    p.add_argument("--base", help="base AnySplat for the published decoder (default lhjiang/anysplat; hub id, folder "
                                  "or weights file)")
    p.add_argument("--vae-tiling", action="store_true", help="decode/encode the video in tiles (less VRAM)")
    p.add_argument("--per-pixel", action="store_true",
                   help="one Gaussian per pixel even when the base AnySplat config voxelises (default: follow it, "
                        "like the official loader)")
    p.add_argument("--preset", choices=presets, help=" ".join(_PRESET_HELP[k] for k in presets))


_PRESET_HELP = {"tiny": "tiny: small UNTRAINED random models, CPU, offline, seconds; shows the plumbing only.",
                "micro": "micro: the shipped models trained on the micro world (coloured primitives on a textured "
                         "ground, 9 frames of 64x64; `python -m training.micro`), CPU, offline, about a second."}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vist3a",
        description="VIST3A text-to-3D tools: generate 3D scenes from text or video, inspect and render 3D "
        "Gaussian splat files (.ply, .splat) and point clouds.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="print counts, SH degree and bounds of a splat or point-cloud file")
    p.add_argument("file", help="3DGS .ply, .splat, or point-cloud .ply")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("render", help="render orbit views of a splat or point-cloud file to a PNG grid")
    p.add_argument("file", help="3DGS .ply, .splat, or point-cloud .ply")
    p.add_argument("-o", "--output", required=True,
                   help="output .png grid, or .mp4 orbit video (needs imageio-ffmpeg); written atomically")
    p.add_argument("--views", type=int, default=8, help="number of orbit views (default 8)")
    p.add_argument("--size", type=int, default=256, help="view width and height in pixels (default 256)")
    p.add_argument("--elevation", type=float, default=20.0, help="orbit elevation in degrees (default 20)")
    p.add_argument("--fov", type=float, default=50.0, help="horizontal field of view in degrees (default 50)")
    p.add_argument("--background", choices=["white", "black"], default="white", help="background colour")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--fps", type=int, default=16, help=".mp4 frames per second (default 16)")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("generate", help="text -> 3D scene (.ply / .splat) with Wan 2.1 + the stitched decoder")
    p.add_argument("prompt", help="scene description, e.g. \"a red sports car\"")
    _add_common(p, presets=("tiny", "micro"))
    p.add_argument("--steps", type=int, help="denoising steps (default 50; tiny preset 4, micro 20)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--flow-shift", type=float, help="UniPC flow shift (default 5.0)")
    p.add_argument("--negative-prompt", help="negative prompt (default: the published one; \"\" for none)")
    p.add_argument("--no-template", action="store_true",
                   help="use the prompt as is, without the published camera-orbit template")
    p.add_argument("--lora", help="VIST3A transformer LoRA: PEFT folder or HJGO/VIST3A/<subfolder> (default: the "
                                  "adapter matching --wan); 'none' for the base Wan model")
    p.add_argument("--offload", choices=["none", "model", "sequential"], default="none",
                   help="CPU offload (diffusers hooks): model = one model on the GPU at a time, sequential = least "
                        "VRAM, slowest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("reconstruct", help="video file or folder of ordered frames -> 3D scene (Wan VAE encoder + "
                                           "stitched decoder)")
    p.add_argument("input", help="folder of ordered frames (natural sort) or a video file (needs imageio-ffmpeg)")
    _add_common(p, presets=("tiny", "micro"))
    p.set_defaults(func=_cmd_reconstruct)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .models.loading import CheckpointMismatchError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, OSError, CheckpointMismatchError) as err:
        print(f"vist3a {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vist3a: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
