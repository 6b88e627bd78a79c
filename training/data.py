"""Clips for the stitching-layer search: a folder-of-frames reader (DL3DV-style) and procedural synthetic scenes.

Every dataset item is a dict::

    {"vae":   (T, 3, S, S) float32 in [0, 1]   frames at the video-VAE resolution (S = 512 by default),
     "model": (T, 3, s, s) float32 in [0, 1]   the SAME frames at the 3D-model resolution (s = 448),
     "scene": str, "indices": list[int]}        which scene and which of its frames

The 3D-model frames are the VAE frames (already centre-cropped square) resized to ``s``, so both see the same field
of view; the token grid of the 3D model (s / 14) then lines up with the stitching conv's output grid (S / 8 latent
pixels, stride 2 -> S / 16). Hence the constraint ``S / 16 == s / 14`` (512 <-> 448, 64 <-> 56 for tiny tests),
checked by :func:`check_resolutions`.

Folder layouts (a *scene* is a folder of ordered frames; frames are sorted in natural order, ``frame_2`` before
``frame_10``; extensions .png, .jpg, .jpeg, case-insensitive):

* ``ROOT/<scene>/*.png`` – frames directly in the scene folder;
* ``ROOT/<scene>/images_<k>/*.png`` – DL3DV (``images_4`` is preferred, the official choice; else ``images``, else
  the first ``images_*`` in sorted order; ``image_dir`` picks one explicitly);
* ``ROOT/<group>/<scene>/...`` – DL3DV's ``1K/ 2K/ ...`` grouping (any depth up to 3 below ROOT);
* ``ROOT`` itself may be a single scene.

Frame sampling (like the official VIST3A loader, but seedable and deterministic per item): pick a window length L
uniformly in [views, min(window, frames)], a start uniformly among the valid ones, then always the window's first
frame plus ``views - 1`` distinct others from the window, in temporal order. Item ``i`` always gives the same clip
for the same seed (independent of worker / rank), so sharding by index is reproducible.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "FolderClips",
    "Scene",
    "SyntheticClips",
    "check_resolutions",
    "find_scenes",
    "is_micro_world",
    "load_clip",
    "micro_world_clips",
    "sample_frame_indices",
    "shard_indices",
    "split_scenes",
    "synthetic_scene_frames",
    "write_synthetic_scenes",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_MAX_DEPTH = 3


# ============================================================================================ scenes on disk
@dataclass
class Scene:
    """A named, ordered list of frame files."""

    name: str
    frames: list[Path]

    def __len__(self) -> int:
        return len(self.frames)


def _natural_key(path: Path) -> list:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", path.name)]


def _images_in(folder: Path) -> list[Path]:
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    files = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(files, key=_natural_key)


def _image_subdir(folder: Path, image_dir: str | None) -> Path | None:
    if image_dir is not None:
        sub = folder / image_dir
        return sub if sub.is_dir() else None
    candidates = sorted(p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"images(_\d+)?", p.name))
    names = {p.name: p for p in candidates}
    for preferred in ("images_4", "images"):
        if preferred in names:
            return names[preferred]
    return candidates[0] if candidates else None


def find_scenes(root: str | os.PathLike, image_dir: str | None = None) -> list[Scene]:
    """All scenes under ``root`` (layouts in the module docstring), sorted by relative path.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
        ValueError: no scene with at least one image was found.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise FileNotFoundError(f"data path {root} is not a folder (expected scenes as folders of frames)")
    scenes: list[Scene] = []

    def visit(folder: Path, depth: int) -> None:
        sub = _image_subdir(folder, image_dir)
        if sub is not None and _images_in(sub):
            frames = _images_in(sub)
        elif image_dir is None and _images_in(folder):
            frames = _images_in(folder)
        else:
            frames = []
        if frames:
            rel = folder.relative_to(root).as_posix()
            scenes.append(Scene(rel if rel != "." else folder.name, frames))
            return
        if depth >= _MAX_DEPTH:
            return
        for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            visit(child, depth + 1)

    visit(root, 0)
    if not scenes:
        where = f" (looking for image sub-folder {image_dir!r})" if image_dir else ""
        raise ValueError(f"no scenes found under {root}{where}: expected ROOT/<scene>/*.png|jpg, "
                         f"ROOT/<scene>/images_4/*.png (DL3DV) or ROOT/<group>/<scene>/...")
    return scenes


def split_scenes(scenes: Sequence[Scene], heldout_fraction: float = 0.1) -> tuple[list[Scene], list[Scene]]:
    """(train, held-out) by scene: the last ``max(1, round(fraction * n))`` scenes (sorted order) are held out when
    there are at least 2 scenes; with one scene both splits use it (the held-out clips then differ only by seed)."""
    scenes = list(scenes)
    if len(scenes) < 2 or heldout_fraction <= 0:
        return scenes, scenes
    k = min(len(scenes) - 1, max(1, round(heldout_fraction * len(scenes))))
    return scenes[:-k], scenes[-k:]


# ============================================================================================ sampling / loading
def sample_frame_indices(num_frames: int, views: int, window: int, rng: random.Random) -> list[int]:
    """``views`` sorted frame indices from one window of at most ``window`` consecutive frames (module docstring).

    Raises:
        ValueError: fewer than ``views`` frames, or ``window < views``.
    """
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    if window < views:
        raise ValueError(f"the frame window ({window}) must be at least the number of views ({views})")
    if num_frames < views:
        raise ValueError(f"too few frames: {num_frames} available, {views} needed")
    length = rng.randint(views, min(window, num_frames))
    start = rng.randint(0, num_frames - length)
    picked = sorted(rng.sample(range(1, length), views - 1)) if views > 1 else []
    return [start] + [start + i for i in picked]


#: per 3D model: (video size, 3D-model size) of the paper's pairing and of the tiny test models
MODEL_SIZES = {"anysplat": (512, 448), "vggt": (512, 448), "mvdust3r": (384, 224)}
TINY_MODEL_SIZES = {"anysplat": (64, 56), "vggt": (64, 56), "mvdust3r": (128, 64)}
#: MVDUSt3R's stitching layer (paper appendix B.1): 384 px video (latent 48) -> 14 x 14 tokens of 1024 channels
MVDUST3R_CONFIG = "conv3d_k5x7x7_o1024_s1x3x3_p2x0x0"


def default_sizes(kind: str, tiny: bool = False) -> tuple[int, int]:
    """(video size, 3D-model size) defaults for ``kind`` (``anysplat``, ``vggt``, ``mvdust3r``)."""
    return (TINY_MODEL_SIZES if tiny else MODEL_SIZES)[kind]


def default_stitching_config(kind: str, width: int, tiny: bool = False) -> str:
    """The stitching conv for ``kind``: the released VIST3A layer (AnySplat, VGGT) or the paper's MVDUSt3R layer;
    ``tiny``: the same geometry at the tiny models' ``width``."""
    if kind == "mvdust3r":
        return MVDUST3R_CONFIG.replace("_o1024_", f"_o{width}_") if tiny else MVDUST3R_CONFIG
    return f"conv3d_k5x3x3_o{width}_s1x2x2_p2x1x1" if tiny else "conv3d_k5x3x3_o1024_s1x2x2_p2x1x1"


def check_resolutions(vae_size: int, model_size: int, *, spatial_compression: int = 8, conv_stride: int = 2,
                      patch_size: int = 14, natural_conv=None) -> int:
    """Check ``vae_size / (spatial_compression * conv_stride) == model_size / patch_size`` (512/16 == 448/14 == 32)
    and return that token-grid side. ``natural_conv`` (a StitchingConfig, MVDUSt3R): the grid is the conv's output
    on the latent as it is (384 px -> latent 48 -> (48 - 7) // 3 + 1 = 14) and must equal ``model_size /
    patch_size`` (224 / 16)."""
    if natural_conv is not None:
        if vae_size % spatial_compression or model_size % patch_size:
            raise ValueError(f"resolutions: the video size {vae_size} must be a multiple of {spatial_compression} "
                             f"and the 3D size {model_size} of {patch_size}; use e.g. 384 and 224")
        lat = vae_size // spatial_compression
        conv = natural_conv
        grid = (lat + 2 * conv.padding[-1] - conv.receptive[-1]) // conv.stride[-1] + 1
        if grid != model_size // patch_size:
            raise ValueError(f"resolutions do not line up: the stitching conv {conv.to_string()} gives {grid} token "
                             f"rows on a {lat}-pixel latent ({vae_size} px video), the 3D model "
                             f"{model_size}/{patch_size} = {model_size // patch_size}; use e.g. 384 and 224 (or 128 "
                             f"and 64)")
        return grid
    step = spatial_compression * conv_stride
    if vae_size % step or model_size % patch_size or vae_size // step != model_size // patch_size:
        raise ValueError(f"resolutions do not line up: the stitching conv gives {vae_size}/{step} = "
                         f"{vae_size / step:g} token rows, the 3D model {model_size}/{patch_size} = "
                         f"{model_size / patch_size:g}; use e.g. 512 and 448 (or 64 and 56)")
    return vae_size // step


def _to_tensor(img) -> Tensor:
    import numpy as np

    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _crop_square(img, size: int):
    """Resize the shorter side to ``size`` (bicubic) and centre-crop to size x size (PIL image in, PIL out)."""
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_clip(paths: Sequence[str | os.PathLike], vae_size: int = 512, model_size: int = 448
              ) -> tuple[Tensor, Tensor]:
    """Frames -> ((T, 3, vae_size, vae_size), (T, 3, model_size, model_size)), float32 in [0, 1]: shorter side
    resized to ``vae_size``, centre crop, then the crop resized to ``model_size`` (bicubic)."""
    from PIL import Image

    vae, model = [], []
    for p in paths:
        try:
            with Image.open(p) as im:
                img = im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read image {p}: {exc}") from exc
        crop = _crop_square(img, vae_size)
        vae.append(_to_tensor(crop))
        small = crop if model_size == vae_size else crop.resize((model_size, model_size), Image.BICUBIC)
        model.append(_to_tensor(small))
    return torch.stack(vae), torch.stack(model)


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Indices of ``range(n)`` for one process: rank, rank + world, ... (disjoint, covering everything)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    return list(range(rank, n, world_size))


def _item_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"vist3a-clip:{seed}:{index}")  # str seeds are hashed deterministically (sha512)


# ============================================================================================ datasets
class FolderClips(Dataset):
    """Clips of ``views`` frames from scenes on disk (see the module docstring).

    Args:
        scenes: a root folder or a list of :class:`Scene` (e.g. from :func:`split_scenes`).
        samples: dataset length (clips are drawn per index, cycling over the scenes in a seeded order).
        views: frames per clip (13 = 4 * 3 + 1 in VIST3A; must be 4k + 1 for the Wan VAE).
        window: frames per unit scene window (50 in the official command line).
        vae_size, model_size: square output sizes (512 and 448).
        seed: base seed; item i uses its own generator derived from (seed, i).
        skip_short: drop scenes with fewer than ``views`` frames (with a warning) instead of raising.
    """

    def __init__(self, scenes: str | os.PathLike | Sequence[Scene], samples: int, *, views: int = 13,
                 window: int = 50, vae_size: int = 512, model_size: int = 448, seed: int = 0,
                 image_dir: str | None = None, skip_short: bool = False) -> None:
        if isinstance(scenes, (str, os.PathLike)):
            scenes = find_scenes(scenes, image_dir=image_dir)
        scenes = list(scenes)
        if not scenes:
            raise ValueError("FolderClips: no scenes")
        short = [s for s in scenes if len(s) < views]
        if short:
            listing = ", ".join(f"{s.name} ({len(s)})" for s in short[:5]) + (" ..." if len(short) > 5 else "")
            if not skip_short:
                raise ValueError(f"FolderClips: {len(short)} scene(s) have fewer than {views} frames: {listing}")
            logger.warning("FolderClips: skipping %d scene(s) with fewer than %d frames: %s", len(short), views,
                           listing)
            scenes = [s for s in scenes if len(s) >= views]
            if not scenes:
                raise ValueError(f"FolderClips: no scene has at least {views} frames")
        if window < views:
            raise ValueError(f"FolderClips: window ({window}) must be >= views ({views})")
        self.scenes = scenes
        self.samples, self.views, self.window = int(samples), int(views), int(window)
        self.vae_size, self.model_size, self.seed = int(vae_size), int(model_size), int(seed)
        order = list(range(len(scenes)))
        random.Random(f"vist3a-scenes:{seed}").shuffle(order)
        self._order = order

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.samples:
            raise IndexError(index)
        rng = _item_rng(self.seed, index)
        scene = self.scenes[self._order[index % len(self.scenes)]]
        idx = sample_frame_indices(len(scene), self.views, self.window, rng)
        vae, model = load_clip([scene.frames[i] for i in idx], self.vae_size, self.model_size)
        return {"vae": vae, "model": model, "scene": scene.name, "indices": idx}


# ============================================================================================ micro world
def is_micro_world(path: str | os.PathLike | None) -> bool:
    """True when ``path`` is a micro-world folder (``python -m training.micro world``), which every ``--data``
    option accepts besides folders of frames."""
    if path is None:
        return False
    from .micro.shards import is_world

    return is_world(path)


def micro_world_clips(root: str | os.PathLike, samples: int, *, split: str = "train", views: int = 9,
                      vae_size: int = 64, model_size: int = 56, seed: int = 0) -> Dataset:
    """Clips (this module's item layout) of a micro world's ``split``: ``train`` for training, ``test`` for
    held-out evaluation (its scenes are never trained on)."""
    from .micro.shards import MicroClips

    return MicroClips(root, split, samples, views=views, vae_size=vae_size, model_size=model_size, seed=seed)


# ============================================================================================ synthetic scenes
def synthetic_scene_frames(seed: int, frames: int, size: int, *, blobs: int = 24, orbit_degrees: float = 60.0
                           ) -> Tensor:
    """Procedural scene (T, 3, size, size) in [0, 1]: coloured soft 3D blobs seen from a camera orbiting the origin
    (so nearer blobs move more: parallax), over a sky/ground gradient; front-to-back alpha compositing."""
    g = torch.Generator().manual_seed(int(seed))
    centers = (torch.rand(blobs, 3, generator=g) * 2 - 1) * torch.tensor([1.0, 0.6, 1.0])
    colors = torch.rand(blobs, 3, generator=g)
    radii = 0.08 + 0.22 * torch.rand(blobs, generator=g)
    phase = float(torch.rand((), generator=g)) * 2 * math.pi
    sky, ground = torch.rand(3, generator=g), torch.rand(3, generator=g)
    ys = (torch.arange(size) + 0.5) / size
    grad = (ys[:, None] * ground[None] + (1 - ys[:, None]) * sky[None])  # (H, 3)
    pix = (torch.arange(size) + 0.5) / size * 2 - 1
    py, px = torch.meshgrid(pix, pix, indexing="ij")
    # all frames at once (few large ops: cheap even on a loaded CPU)
    ang = phase + math.radians(orbit_degrees) * (torch.arange(frames) / max(frames - 1, 1) - 0.5)
    eye = torch.stack([3.0 * torch.sin(ang), torch.full_like(ang, -0.4), -3.0 * torch.cos(ang)], -1)  # (T, 3)
    fwd = -eye / eye.norm(dim=-1, keepdim=True)
    right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]).expand_as(fwd), fwd)
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.linalg.cross(fwd, right)
    rel = centers[None] - eye[:, None]  # (T, K, 3)
    z = (rel * fwd[:, None]).sum(-1)
    u = (rel * right[:, None]).sum(-1) / z * 1.5
    v = (rel * down[:, None]).sum(-1) / z * 1.5
    order = torch.argsort(z, dim=1)  # near to far: front-to-back compositing
    u, v, z = (torch.gather(t, 1, order)[..., None, None] for t in (u, v, z))
    r = radii[order][..., None, None] / z * 1.5
    dx, dy = px - u, py - v  # (T, K, H, W)
    alpha = 0.9 * torch.exp(-(dx * dx + dy * dy) / (2 * r * r))
    light = 0.7 + 0.15 * torch.clamp(1 - (dx + dy) / (2 * r), 0, 2)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha], 1), 1)  # (T, K+1, H, W)
    weight = (trans[:, :-1] * alpha * light)[..., None]  # (T, K, H, W, 1)
    img = (weight * colors[order][:, :, None, None, :]).sum(1) + trans[:, -1, ..., None] * grad[:, None, :]
    return img.clamp(0, 1).permute(0, 3, 1, 2).contiguous()


class SyntheticClips(Dataset):
    """Synthetic clips with the same item layout as :class:`FolderClips` (no files): item i renders scene
    ``seed * 100003 + i % scenes`` with ``frames`` frames and picks ``views`` of them like the folder reader."""

    def __init__(self, samples: int, *, views: int = 9, window: int | None = None, scenes: int = 8,
                 vae_size: int = 64, model_size: int = 56, seed: int = 0) -> None:
        self.samples, self.views, self.scenes = int(samples), int(views), int(scenes)
        self.window = int(window or views + 4)
        if self.window < self.views:
            raise ValueError(f"SyntheticClips: window ({self.window}) must be >= views ({self.views})")
        self.vae_size, self.model_size, self.seed = int(vae_size), int(model_size), int(seed)

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.samples:
            raise IndexError(index)
        import torch.nn.functional as F

        rng = _item_rng(self.seed, index)
        scene_seed = self.seed * 100003 + index % self.scenes
        frames = synthetic_scene_frames(scene_seed, self.window, self.vae_size)
        idx = sample_frame_indices(self.window, self.views, self.window, rng)
        vae = frames[idx]
        model = vae if self.model_size == self.vae_size else F.interpolate(
            vae, size=(self.model_size, self.model_size), mode="bicubic", antialias=True, align_corners=False
        ).clamp_(0, 1)
        return {"vae": vae, "model": model, "scene": f"synthetic_{scene_seed}", "indices": idx}


def write_synthetic_scenes(root: str | os.PathLike, scenes: int = 2, frames: int = 16, size: int = 64, *,
                           layout: str = "flat", seed: int = 0, ext: str = ".png") -> list[Path]:
    """Write procedural scenes as image folders (tests, demos): ``layout="flat"`` gives ``root/scene_k/frame_j.png``,
    ``"dl3dv"`` gives ``root/1K/scene_k/images_4/frame_00001.png``. Returns the scene folders."""
    from PIL import Image

    from vist3a.io.atomic import atomic_path

    if layout not in ("flat", "dl3dv"):
        raise ValueError(f"layout must be 'flat' or 'dl3dv', got {layout!r}")
    root = Path(root)
    folders = []
    for k in range(scenes):
        scene = root / f"scene_{k:03d}" if layout == "flat" else root / "1K" / f"scene_{k:03d}"
        img_dir = scene if layout == "flat" else scene / "images_4"
        img_dir.mkdir(parents=True, exist_ok=True)
        video = synthetic_scene_frames(seed * 1000 + k, frames, size)
        for j, frame in enumerate(video):
            arr = (frame.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
            name = f"frame_{j + 1:05d}{ext}" if layout == "dl3dv" else f"frame_{j}{ext}"
            with atomic_path(img_dir / name) as tmp:
                Image.fromarray(arr).save(tmp, format="PNG" if ext == ".png" else "JPEG")
        folders.append(scene)
    return folders
