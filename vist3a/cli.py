"""The ``vist3a`` command line.

``info`` and ``render`` inspect and render splat files; ``generate`` runs text -> 3D and ``reconstruct`` video /
frames -> 3D through :mod:`vist3a.pipeline` (``--preset tiny``: small random models, plumbing only;
``--preset micro``: the shipped models trained on the micro world).

Every command checks all its arguments, files and models before any model loads (:mod:`vist3a.checks`), and every
failure a user can cause ends as one line on stderr naming the file or argument, what is wrong and what to do, with
exit code 2 (:func:`vist3a.errors.user_message`); ``--debug`` shows the traceback instead.
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
    """Gaussians from a 3DGS .ply / .splat / .spz, or a PointCloud from a point-cloud .ply."""
    from .checks import check_input_file
    from .io import load_gaussians, read_ply_header, read_point_cloud_ply

    check_input_file(path, "input file")
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
    if Path(args.file).suffix.lower() == ".spz":
        from .io import read_spz_header

        h = read_spz_header(args.file)
        lines.append(f"format:      .spz version {h.version}, {h.fractional_bits} fractional bits"
                     + (", anti-aliased" if h.antialiased else ""))
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


def _render_cameras(args: argparse.Namespace) -> Path | None:
    """The camera file ``render`` orbits along: ``--cameras auto`` takes ``<scene>.cameras.json`` beside the file
    when it exists (written by generate / reconstruct), ``none`` orbits the scene's bounds, else the file given."""
    from .io.cameras_json import cameras_sidecar

    choice = args.cameras
    if choice == "none":
        return None
    if choice == "auto":
        side = cameras_sidecar(args.file)
        return side if side.is_file() else None
    path = Path(choice)
    if not path.is_file():
        raise ValueError(f"--cameras {choice}: no such file (a .cameras.json written by vist3a generate / "
                         "reconstruct); or use --cameras none")
    return path


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

    from .checks import (
        check_device,
        check_free_space,
        check_input_file,
        check_integer,
        check_number,
        check_output_file,
    )
    from .gaussians import Gaussians
    from .io.atomic import atomic_write
    from .render import render, render_point_cloud

    check_input_file(args.file, "input file")
    out = check_output_file(args.output, "-o/--output", (".png", ".mp4"))
    if out.suffix.lower() == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401  (optional: ships its own ffmpeg binary)
        except ImportError:
            raise ValueError("writing .mp4 needs the optional imageio-ffmpeg package (`pip install imageio-ffmpeg`); "
                             "or write a .png grid") from None
    check_integer(args.views, "--views", lo=1, hi=MAX_VIEWS)
    check_integer(args.size, "--size", lo=8, hi=MAX_RENDER_SIZE)
    if args.fov is not None:
        check_number(args.fov, "--fov", lo=0, hi=180, lo_open=True, hi_open=True, hint="degrees; the default is 50")
    check_number(args.elevation, "--elevation", lo=-90, hi=90, lo_open=True, hi_open=True,
                 hint="degrees above the orbit plane; the default is 20")
    check_integer(args.fps, "--fps", lo=1, hi=240)
    device = torch.device(check_device(args.device))
    check_free_space({out: args.views * args.size * args.size * 3 + 4096})  # uncompressed: an upper bound
    scene = _load_scene(Path(args.file))
    if len(scene) == 0:
        raise ValueError(f"'{args.file}' holds no splats or points; nothing to render")
    scene = scene.to(device=device)
    points = scene.means if isinstance(scene, Gaussians) else scene.points
    source = _render_cameras(args)
    if source is not None:
        from .cameras import Cameras
        from .io.cameras_json import read_cameras_json

        cams = Cameras.orbit_like(read_cameras_json(source), args.views, args.size, args.size,
                                  fov_deg=args.fov,
                                  full_circle=args.full_circle).to(device=device)
        log.info("orbit along the cameras of %s", source)
    else:
        cams = _orbit_for(points.cpu(), args.views, args.size, args.elevation,
                          50.0 if args.fov is None else args.fov).to(device=device)
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


MAX_VIEWS = 360
MAX_RENDER_SIZE = 4096


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
    """Check every output path before any model is loaded: suffix, existing and writable folder (probed), not a
    folder, no two the same. The decoded cameras go beside the scene (``<scene>.cameras.json``) unless
    ``--no-cameras``."""
    from .checks import check_output_file
    from .io.cameras_json import cameras_sidecar

    wanted = {"scene": (".ply", ".splat", ".spz"), "pointmap": (".ply",), "splat": (".splat",), "cameras": (".json",)}
    flags = {"scene": "-o/--output", "pointmap": "--pointmap", "splat": "--splat",
             "cameras": "the camera file beside -o (--no-cameras to skip it)"}
    given = {"scene": args.output, "pointmap": args.pointmap, "splat": args.splat,
             "cameras": None if args.no_cameras or not args.output else str(cameras_sidecar(args.output))}
    outs = {key: check_output_file(value, flags[key], wanted[key]) for key, value in given.items() if value}
    resolved = [p.resolve() for p in outs.values()]
    if len(set(resolved)) != len(resolved):
        raise ValueError("-o, --pointmap, --splat and the camera file beside -o must be different files")
    return outs


def _video_shape(args: argparse.Namespace) -> tuple[int, int, int]:
    """(frames, height, width) the run will use, checked (4k+1 frames, multiples of 16), before any model loads."""
    from .pipeline.presets import MICRO_SETTINGS, TINY_SETTINGS
    from .pipeline.settings import GenerationSettings, check_frames, check_size

    base = {"tiny": TINY_SETTINGS, "micro": MICRO_SETTINGS}.get(args.preset, GenerationSettings())
    frames = base.num_frames if args.frames is None else check_frames(args.frames, "--frames")
    size = _parse_size(args.size)
    height, width = (base.height, base.width) if size is None else check_size(*size, ("--size height",
                                                                                      "--size width"))
    return frames, height, width


def _estimated_bytes(outs: dict[str, Path], shape: tuple[int, int, int], sh_degree: int) -> dict[Path, int]:
    """Upper estimates of the output sizes (one Gaussian / point per 3D pixel of every frame)."""
    from .io.ply import gaussian_ply_property_names
    from .pipeline.settings import model_size

    frames, height, width = shape
    h3, w3 = model_size(height, width)
    n = frames * h3 * w3
    per_point = {"scene": 4 * len(gaussian_ply_property_names(4 if sh_degree < 0 else min(sh_degree, 4))),
                 "pointmap": 19, "splat": 32}
    sizes = {}
    for key, path in outs.items():
        if key == "cameras":
            sizes[path] = frames * 400 + 4096  # JSON text of the cameras
            continue
        per = 32 if path.suffix.lower() == ".splat" else per_point[key]
        sizes[path] = n * per + 4096
    return sizes


def _runtime(args: argparse.Namespace):
    import torch

    from .checks import check_device

    device = check_device(args.device) or ("cuda" if torch.cuda.is_available() else "cpu")
    name = args.dtype or ("fp16" if device.startswith("cuda") else "fp32")
    if name not in _DTYPES:
        raise ValueError(f"--dtype {name!r}: choose fp16, bf16 or fp32")
    dec_name = args.decoder_dtype or "fp32"
    if dec_name not in _DTYPES:
        raise ValueError(f"--decoder-dtype {dec_name!r}: choose fp16, bf16 or fp32")
    if getattr(args, "offload", "none") != "none":
        if not device.startswith("cuda"):
            raise ValueError(f"--offload {args.offload} moves models between the CPU and a GPU; it needs --device "
                             "cuda (on the CPU every model already sits in CPU memory)")
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise ValueError(f"--offload {args.offload} needs the accelerate package (`pip install accelerate`); or "
                             "run without --offload") from None
    return device, getattr(torch, _DTYPES[name]), getattr(torch, _DTYPES[dec_name])


_SETTING_FLAGS = {"num_frames": "--frames", "height": "--size height", "width": "--size width",
                  "num_inference_steps": "--steps", "guidance_scale": "--cfg", "flow_shift": "--flow-shift"}


def _check_generation(args: argparse.Namespace, shape: tuple[int, int, int]) -> None:
    """--steps / --cfg / --flow-shift / --seed / --sh-degree: finite and in range, before any model loads."""
    from .checks import check_integer, check_seed
    from .pipeline.presets import TINY_SETTINGS
    from .pipeline.settings import GenerationSettings

    base = TINY_SETTINGS if args.preset == "tiny" else GenerationSettings()
    frames, height, width = shape
    base.replace(num_frames=frames, height=height, width=width, num_inference_steps=getattr(args, "steps", None),
                 guidance_scale=getattr(args, "cfg", None), flow_shift=getattr(args, "flow_shift", None)
                 ).check(_SETTING_FLAGS)
    check_seed(args.seed, "--seed")
    check_integer(args.sh_degree, "--sh-degree", lo=-1, hi=4, hint="0 = DC colour only, -1 = the model's degree")


def _check_models(args: argparse.Namespace, kind: str) -> None:
    """Every model the run needs, all at once (:func:`vist3a.checks.check_model_sources`), before any loads."""
    from .checks import check_model_sources
    from .pipeline.sources import (
        decoder_sources,
        lora_source,
        text_to_3d_sources,
        video_to_3d_sources,
    )

    if args.preset == "micro":
        from .pipeline.presets import micro_decoder_parts, micro_path

        for part in ("vae", *micro_decoder_parts(args.micro_model or "anysplat")):
            micro_path(part)
        return
    lora = getattr(args, "lora", None)
    if args.preset == "tiny":
        sources = [lora_source(lora)] + (decoder_sources(args.decoder) if args.decoder is not None else [])
    elif kind == "generate":
        sources = text_to_3d_sources(args.wan, args.decoder, "auto" if lora is None else lora, args.base)
    else:
        sources = video_to_3d_sources(args.wan, args.decoder, args.base)
    check_model_sources(sources)


def _check_preset(args: argparse.Namespace, model_flags: tuple[str, ...]) -> None:
    if getattr(args, "micro_model", None) is not None and args.preset != "micro":
        raise ValueError("--micro-model chooses the shipped micro decoder; use it with --preset micro")
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
        raise ValueError("this decoder predicts pointmaps only; write a .ply point cloud instead of a .splat / .spz")
    else:
        g = scene.gaussians
        if sh_degree is not None and sh_degree >= 0:
            g = g.with_sh_degree(min(sh_degree, g.sh_degree))
        save_gaussians(outs["scene"], g)
        log.info("wrote %d Gaussians (SH degree %d) to %s", len(g), g.sh_degree, outs["scene"])
    if "cameras" in outs and scene.cameras is not None:
        from .io.cameras_json import write_cameras_json

        write_cameras_json(outs["cameras"], scene.cameras)
        log.info("wrote the %d decoded cameras to %s (vist3a render uses them)", len(scene.cameras),
                 outs["cameras"])
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
    from .checks import check_free_space
    from .pipeline import TextTo3DPipeline
    from .pipeline.settings import check_prompt

    # Everything is checked before the first model loads: a run that would fail fails now.
    check_prompt(args.prompt)
    outs = _outputs(args)
    shape = _video_shape(args)
    _check_generation(args, shape)
    device, dtype, dec_dtype = _runtime(args)
    fast = _fast_options(args)
    _check_preset(args, ("wan", "base"))
    _check_models(args, "generate")
    check_free_space(_estimated_bytes(outs, shape, args.sh_degree))
    if args.preset == "tiny":
        pipe = TextTo3DPipeline.tiny(seed=0, decoder=args.decoder, lora=args.lora)
        if device != "cpu":
            pipe.to(device)
    elif args.preset == "micro":
        pipe = TextTo3DPipeline.micro(model3d=args.micro_model or "anysplat")
        if device != "cpu":
            pipe.to(device)
    else:
        if device == "cpu":
            log.warning("running the full-size models on the CPU: expect hours, not minutes (use a CUDA GPU, or "
                        "--preset tiny for a quick offline check)")
        pipe = TextTo3DPipeline.from_pretrained(
            wan=args.wan or "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", decoder=args.decoder,
            lora="auto" if args.lora is None else args.lora, base=args.base, dtype=dtype, decoder_dtype=dec_dtype,
            check_sources=False)
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
    frames, height, width = shape
    scene = pipe(args.prompt, negative_prompt=args.negative_prompt, num_frames=frames, height=height, width=width,
                 num_inference_steps=args.steps, guidance_scale=args.cfg, flow_shift=args.flow_shift, seed=args.seed,
                 progress=not args.no_progress, fast=fast, **kwargs)
    _write_scene(scene, outs, args.sh_degree)
    return 0


def _fast_options(args: argparse.Namespace):
    """--fast / --compile / --attention-backend -> FastOptions (None: the published path), checked before loading."""
    from .pipeline.fast import FAST, FastOptions

    backend = args.attention_backend
    if backend is not None:
        from diffusers.models.attention_dispatch import AttentionBackendName

        names = [b.value for b in AttentionBackendName]
        if backend not in names:
            raise ValueError(f"--attention-backend {backend!r}: diffusers knows "
                             f"{', '.join(n for n in names if not n.startswith('_'))} (and the _native_* variants)")
    if not (args.fast or args.compile or backend):
        return None
    if args.fast:
        options = FAST if args.steps is None else FAST.replace(steps=args.steps)
    else:  # only --compile / --attention-backend: the default sampling, nothing approximate
        options = FastOptions(batch_cfg=False, cache="none", decoder_bf16=False)
    return options.replace(compile=bool(args.compile), attention_backend=backend).check()


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from .checks import check_free_space
    from .pipeline import VideoTo3DPipeline
    from .pipeline.frames import load_frames

    source = Path(args.input)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist (pass a folder of ordered frames or a video file)")
    outs = _outputs(args)
    shape = _video_shape(args)
    frames, height, width = shape
    _check_generation(args, shape)
    device, dtype, dec_dtype = _runtime(args)
    _check_preset(args, ("wan", "base"))
    _check_models(args, "reconstruct")
    check_free_space(_estimated_bytes(outs, shape, args.sh_degree))
    clip = load_frames(source, frames, height, width)  # read (and checked) before any model loads
    if args.preset == "tiny":
        pipe = VideoTo3DPipeline.tiny(seed=0, decoder=args.decoder)
    elif args.preset == "micro":
        pipe = VideoTo3DPipeline.micro(args.micro_model or "anysplat")
    else:
        pipe = VideoTo3DPipeline.from_pretrained(wan=args.wan or "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                                                 decoder=args.decoder, base=args.base, dtype=dtype,
                                                 decoder_dtype=dec_dtype, check_sources=False)
        if args.vae_tiling:
            pipe.enable_vae_tiling()
    pipe.to(device)
    _per_pixel(pipe, args)
    scene = pipe(clip, num_frames=frames, height=height, width=width, seed=args.seed if args.seed is not None else 0)
    _write_scene(scene, outs, args.sh_degree)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    """Any splat file the pack reads -> .ply / .splat / .spz (chosen by the extension); point clouds -> .ply."""
    from .checks import check_input_file, check_output_file
    from .gaussians import Gaussians
    from .io import (
        GAUSSIAN_EXTENSIONS,
        read_spz,
        write_gaussians_ply,
        write_point_cloud_ply,
        write_splat,
        write_spz,
    )

    src = Path(check_input_file(args.input, "input file"))
    dst = check_output_file(args.output, "output", tuple(GAUSSIAN_EXTENSIONS))
    ext = dst.suffix.lower()
    if src.suffix.lower() == ".spz":
        scene = read_spz(src, frame=args.spz_frame)
    else:
        scene = _load_scene(src)
    if not isinstance(scene, Gaussians):
        if ext != ".ply":
            raise ValueError(f"{src} is a point cloud; it converts to a point-cloud .ply only, not {ext}")
        write_point_cloud_ply(dst, scene)
        log.info("wrote %d points to %s", len(scene), dst)
        return 0
    if args.sh_degree is not None and args.sh_degree >= 0:
        scene = scene.with_sh_degree(min(args.sh_degree, scene.sh_degree))
    if ext == ".spz":
        write_spz(dst, scene, version=args.spz_version, frame=args.spz_frame)
    elif ext == ".splat":
        write_splat(dst, scene)
    else:
        write_gaussians_ply(dst, scene)
    before, after = src.stat().st_size, dst.stat().st_size
    log.info("wrote %d Gaussians (SH degree %d) to %s: %.1f MB -> %.1f MB", len(scene),
             0 if ext == ".splat" else min(scene.sh_degree, 3 if ext == ".spz" else 4), dst, before / 1e6, after / 1e6)
    return 0


def _add_common(p: argparse.ArgumentParser, presets: tuple[str, ...] = ("tiny",)) -> None:
    p.add_argument("-o", "--output", required=True,
                   help="scene file: 3DGS .ply (or .splat, or compressed .spz), written atomically")
    p.add_argument("--pointmap", help="also write the pointmap as a point-cloud .ply")
    p.add_argument("--splat", help="also write an antimatter15 .splat file")
    p.add_argument("--no-cameras", action="store_true",
                   help="do not write the decoded cameras beside the scene (<scene>.cameras.json, which vist3a "
                        "render orbits along)")
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
    if "micro" in presets:
        p.add_argument("--micro-model", choices=("anysplat", "mvdust3r"),
                       help="with --preset micro: the shipped micro 3D model the decoder stitches: anysplat (default; "
                            "splats + cameras) or mvdust3r (splats + pointmap; write the pointmap with --pointmap)")


_PRESET_HELP = {"tiny": "tiny: small UNTRAINED random models, CPU, offline, seconds; shows the plumbing only.",
                "micro": "micro: the shipped models trained on the micro world (coloured primitives on a textured "
                         "ground, 9 frames of 64x64; `python -m training.micro`), CPU, offline, about a second."}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vist3a",
        description="VIST3A text-to-3D tools: generate 3D scenes from text or video, inspect and render 3D "
        "Gaussian splat files (.ply, .splat, .spz) and point clouds.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    debug = argparse.ArgumentParser(add_help=False)  # --debug is also accepted after the command
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    p = sub.add_parser("info", parents=[debug], help="print counts, SH degree and bounds of a splat or point-cloud file")
    p.add_argument("file", help="3DGS .ply, .splat, .spz, or point-cloud .ply")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("render", parents=[debug], help="render orbit views of a splat or point-cloud file to a PNG grid")
    p.add_argument("file", help="3DGS .ply, .splat, .spz, or point-cloud .ply")
    p.add_argument("-o", "--output", required=True,
                   help="output .png grid, or .mp4 orbit video (needs imageio-ffmpeg); written atomically")
    p.add_argument("--views", type=int, default=8, help="number of orbit views (default 8)")
    p.add_argument("--size", type=int, default=256, help="view width and height in pixels (default 256)")
    p.add_argument("--elevation", type=float, default=20.0, help="orbit elevation in degrees (default 20)")
    p.add_argument("--fov", type=float, default=None,
                   help="horizontal field of view in degrees, in (0, 180) (default 50; with cameras: theirs)")
    p.add_argument("--cameras", default="auto",
                   help="orbit along these cameras: auto (default) = <scene>.cameras.json beside the file when it "
                        "exists (written by generate / reconstruct), none = orbit the scene's bounds, or a file")
    p.add_argument("--full-circle", action="store_true",
                   help="with cameras: go all around instead of over the arc the cameras covered")
    p.add_argument("--background", choices=["white", "black"], default="white", help="background colour")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--fps", type=int, default=16, help=".mp4 frames per second (default 16)")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("convert", parents=[debug], help="convert a splat file between .ply, .splat and .spz (by the extensions)")
    p.add_argument("input", help="3DGS .ply, .splat, .spz, or point-cloud .ply (-> .ply only)")
    p.add_argument("output", help=".ply (all SH bands), .splat (DC colour) or .spz (compressed, SH up to degree 3); "
                                  "written atomically")
    p.add_argument("--sh-degree", type=int, default=None, help="keep at most this SH degree (default: all the "
                                                               "output format holds)")
    p.add_argument("--spz-version", type=int, choices=(2, 3), default=3,
                   help=".spz version to write (default 3; 2 for old readers)")
    p.add_argument("--spz-frame", choices=("as-is", "rub"), default="as-is",
                   help=".spz coordinates: as-is (the .ply frame, as ComfyUI and Spark use; default) or rub "
                        "(Niantic's right-up-back frame)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("generate", parents=[debug], help="text -> 3D scene (.ply / .splat / .spz) with Wan 2.1 + the stitched "
                                        "decoder")
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
    p.add_argument("--fast", action="store_true",
                   help="fast path: CFG batched in one forward, diffusers' First Block Cache, 0.6x the steps (50 -> "
                        "30; an explicit --steps is kept), the decoder in bf16 autocast on CUDA; quality cost vs the "
                        "default measured in bench/bench_fast_path.py")
    p.add_argument("--compile", action="store_true", help="torch.compile the Wan transformer blocks (the first "
                                                          "run compiles; pays off over repeated runs)")
    p.add_argument("--attention-backend", help="diffusers attention backend for Wan (e.g. flash, sage, "
                                               "_native_cudnn; needs the matching kernels)")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("reconstruct", parents=[debug], help="video file or folder of ordered frames -> 3D scene (Wan VAE encoder + "
                                           "stitched decoder)")
    p.add_argument("input", help="folder of ordered frames (natural sort) or a video file (needs imageio-ffmpeg)")
    _add_common(p, presets=("tiny", "micro"))
    p.set_defaults(func=_cmd_reconstruct)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code: 0 done, 2 a problem the user can fix (one line on stderr naming the
    file or argument, what is wrong and what to do), 1 an internal error (a bug), 130 interrupted."""
    from .errors import user_message

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("vist3a: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        message = user_message(err)
        if message is None:
            print(f"vist3a {args.command}: internal error: {type(err).__name__}: {err}\n(this is a bug in vist3a: "
                  "re-run with --debug for the traceback and report it)", file=sys.stderr)
            return 1
        print(f"vist3a {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
