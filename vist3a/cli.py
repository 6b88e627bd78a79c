"""The ``vist3a`` command line.

Sub-commands that exist today inspect and render splat files; text-to-3D generation (``generate``) and video-to-3D
(``reconstruct``) join them with the pipeline.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

log = logging.getLogger("vist3a")

__all__ = ["main", "build_parser"]


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


def _cmd_render(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from .gaussians import Gaussians
    from .io.atomic import atomic_write
    from .render import render, render_point_cloud

    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise ValueError(f"output must be a .png file, got '{out.name}'")
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
    cols = math.ceil(math.sqrt(args.views))
    rows = math.ceil(args.views / cols)
    grid = np.zeros((rows * args.size, cols * args.size, 3), dtype=np.uint8)
    frames = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    for i, frame in enumerate(frames):
        r, c = divmod(i, cols)
        grid[r * args.size : (r + 1) * args.size, c * args.size : (c + 1) * args.size] = frame
    with atomic_write(out) as f:
        Image.fromarray(grid).save(f, format="PNG")
    log.info("wrote %d orbit views to %s", args.views, out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vist3a",
        description="VIST3A text-to-3D tools: inspect and render 3D Gaussian splat files (.ply, .splat) and "
        "point clouds.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="print counts, SH degree and bounds of a splat or point-cloud file")
    p.add_argument("file", help="3DGS .ply, .splat, or point-cloud .ply")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("render", help="render orbit views of a splat or point-cloud file to a PNG grid")
    p.add_argument("file", help="3DGS .ply, .splat, or point-cloud .ply")
    p.add_argument("-o", "--output", required=True, help="output .png (written atomically)")
    p.add_argument("--views", type=int, default=8, help="number of orbit views (default 8)")
    p.add_argument("--size", type=int, default=256, help="view width and height in pixels (default 256)")
    p.add_argument("--elevation", type=float, default=20.0, help="orbit elevation in degrees (default 20)")
    p.add_argument("--fov", type=float, default=50.0, help="horizontal field of view in degrees (default 50)")
    p.add_argument("--background", choices=["white", "black"], default="white", help="background colour")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.set_defaults(func=_cmd_render)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"vist3a {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vist3a: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
