"""Posed evaluation sequences (RealEstate10K-style) for :mod:`training.eval_nvs`: reader, view selection, camera
alignment, and a synthetic writer for tests.

Folder layout (one folder per sequence; any other files are ignored)::

    ROOT/
      evaluation_index.json          optional: {"<sequence>": {"context": [i, ...], "target": [j, ...]} | null, ...}
      <sequence>/
        images/00000.png ...         frames (.png/.jpg/.jpeg), natural sort order
        cameras.json                 {"intrinsics": "pixels" | "normalized",          (default "pixels")
                                      "frames": [{"image": "images/00000.png",        (relative to the sequence)
                                                  "c2w": [[4 x 4]],                   camera-to-world, OpenCV axes
                                                  "fx": ..., "fy": ..., "cx": ..., "cy": ...}, ...]}

Frame ``i`` of a sequence is ``frames[i]`` of ``cameras.json`` (its order, not the file names). Intrinsics are in
pixels of that frame's image, or normalised (fx, cx divided by the width; fy, cy by the height) with
``"intrinsics": "normalized"`` (the RealEstate10K text files store normalised intrinsics). ``c2w`` is OpenCV
(x right, y down, z forward), RealEstate10K's convention after inverting its world-to-camera matrices.

The index file (pixelSplat / AnySplat style: ``null`` skips a sequence, missing sequences are skipped when an index
file is given) picks the context and target frame ids; without one, :func:`default_views` picks ``context`` frames
evenly over the sequence and ``target`` frames evenly among the remaining frames between the first and the last
context frame.

Images are loaded like :func:`training.data.load_clip`: shorter side resized to the video size, centre crop, the
crop resized to the 3D-model size; :func:`crop_resize_intrinsics` applies the same crop / resize to the intrinsics.

The official VIST3A protocol (``eval_nvs --protocol official``) reads the released evaluation layout instead:

* the index map ``re10k_indexmap.json``: ``{"<sequence>": [id, ...]}`` (12 ids; :func:`read_index_map`, which also
  accepts the ``{"context": [...], "target": [...]}`` form above as ``context + target``);
* the RealEstate10K test export the official ``Re10KNVSDataset`` reads: ``ROOT/<sequence>/annotations.json``, a list
  of ``{"idx", "filepath" (relative to ROOT), "intrinsics" (3x3), "extrinsics" (4x4)}``; an id is a position in that
  list (:func:`official_frame_paths`; a folder of our layout is read in frame order instead). Cameras are not used:
  the official protocol predicts the target cameras;
* the optional sequence list ``re10k_test.txt`` (one name per line);
* :func:`official_resize`: the released ``rescale_image_w_crop`` (Lanczos to 512 on the shorter side + centre crop,
  then Lanczos to 448), INCLUDING its swap of width and height: it reads ``H, W = image.size`` (PIL gives (width,
  height)), so a non-square frame is resized anisotropically (RealEstate10K's 640x360 becomes 512 wide x 910 high)
  before the 512 crop. ``aspect=True`` keeps the aspect ratio instead (a documented deviation, not the default).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vist3a.cameras import Cameras

from .data import IMAGE_EXTENSIONS, load_clip

__all__ = [
    "ANNOTATIONS_FILE",
    "CAMERAS_FILE",
    "INDEX_FILE",
    "PosedSequence",
    "align_similarity",
    "apply_similarity",
    "crop_resize_intrinsics",
    "default_views",
    "find_sequences",
    "load_official_views",
    "load_views",
    "official_frame_paths",
    "official_resize",
    "pad_to_4k1",
    "read_index",
    "read_index_map",
    "read_sequence",
    "write_synthetic_sequences",
]

logger = logging.getLogger(__name__)

CAMERAS_FILE = "cameras.json"
INDEX_FILE = "evaluation_index.json"
ANNOTATIONS_FILE = "annotations.json"  # the official RealEstate10K test export


@dataclass
class PosedSequence:
    """One sequence: ``images`` (N paths), ``c2w`` (N, 4, 4) float64 OpenCV camera-to-world, ``K`` (N, 3, 3) float64
    pixel intrinsics of each original image, ``sizes`` (N, 2) original (width, height)."""

    name: str
    folder: Path
    images: list[Path]
    c2w: Tensor
    K: Tensor
    sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.images)


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def read_sequence(folder: str | os.PathLike) -> PosedSequence:
    """Read one sequence folder (layout in the module docstring). Raises ValueError naming the problem."""
    from PIL import Image

    folder = Path(folder)
    cam_file = folder / CAMERAS_FILE
    if not cam_file.is_file():
        raise ValueError(f"sequence {folder}: {CAMERAS_FILE} is missing; each sequence folder needs images/ and "
                         f"{CAMERAS_FILE} (see training/eval_data.py)")
    try:
        meta = json.loads(cam_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"sequence {folder}: cannot parse {cam_file}: {exc}") from exc
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"sequence {folder}: {cam_file} must be an object with a non-empty 'frames' list")
    unit = meta.get("intrinsics", "pixels")
    if unit not in ("pixels", "normalized"):
        raise ValueError(f"sequence {folder}: 'intrinsics' must be 'pixels' or 'normalized', got {unit!r}")
    images, c2ws, ks, sizes = [], [], [], []
    for i, fr in enumerate(frames):
        where = f"sequence {folder}: frame {i} of {CAMERAS_FILE}"
        if not isinstance(fr, dict) or "image" not in fr or "c2w" not in fr:
            raise ValueError(f"{where}: needs 'image', 'c2w', 'fx', 'fy', 'cx', 'cy'")
        path = folder / fr["image"]
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"{where}: image {path} does not exist or is not a .png/.jpg")
        try:
            c2w = torch.tensor(fr["c2w"], dtype=torch.float64)
            fx, fy, cx, cy = (float(fr[k]) for k in ("fx", "fy", "cx", "cy"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: bad or missing camera value ({exc}); c2w must be 4x4 numbers and fx, fy, "
                             "cx, cy numbers") from exc
        if c2w.shape != (4, 4) or not torch.isfinite(c2w).all():
            raise ValueError(f"{where}: c2w must be a finite 4x4 matrix, got shape {tuple(c2w.shape)}")
        with Image.open(path) as im:
            w, h = im.size
        if unit == "normalized":
            fx, cx, fy, cy = fx * w, cx * w, fy * h, cy * h
        if fx <= 0 or fy <= 0:
            raise ValueError(f"{where}: focal lengths must be positive, got fx={fx}, fy={fy}")
        images.append(path)
        c2ws.append(c2w)
        ks.append(torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=torch.float64))
        sizes.append((w, h))
    c2w = torch.stack(c2ws)
    Cameras(c2w, torch.stack(ks), 1, 1)  # validates rigidity / proper rotations with a clear message
    return PosedSequence(folder.name, folder, images, c2w, torch.stack(ks), sizes)


def find_sequences(root: str | os.PathLike) -> list[Path]:
    """Sequence folders (those holding ``cameras.json``) directly below ``root``, natural order; ``root`` itself
    when it is one sequence."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data root {root} is not a folder")
    if (root / CAMERAS_FILE).is_file():
        return [root]
    found = sorted((p for p in root.iterdir() if p.is_dir() and (p / CAMERAS_FILE).is_file()),
                   key=lambda p: _natural_key(p.name))
    if not found:
        raise ValueError(f"no sequences under {root}: expected ROOT/<sequence>/{CAMERAS_FILE} + images/ "
                         "(see training/eval_data.py for the layout)")
    return found


def read_index(path: str | os.PathLike) -> dict[str, dict[str, list[int]] | None]:
    """The evaluation index ``{sequence: {"context": [...], "target": [...]} | None}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the evaluation index {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(  # noqa: TRY004 (bad file contents, not a bad argument type)
            f"evaluation index {path} must map sequence names to {{'context': [...], 'target': [...]}}")
    out: dict[str, dict[str, list[int]] | None] = {}
    for name, entry in data.items():
        if entry is None:
            out[name] = None
            continue
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), list) for k in ("context", "target")):
            raise ValueError(f"evaluation index {path}: entry {name!r} needs 'context' and 'target' lists")
        out[name] = {k: [int(i) for i in entry[k]] for k in ("context", "target")}
    return out


def read_index_map(path: str | os.PathLike) -> dict[str, list[int]]:
    """The official index map ``{sequence: [id, ...]}`` (``re10k_indexmap.json``), in file order; entries of the
    ``{"context": [...], "target": [...]}`` form become ``context + target``; ``null`` entries are skipped."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the index map {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(  # noqa: TRY004 (bad file contents, not a bad argument type)
            f"index map {path} must map sequence names to lists of frame ids (re10k_indexmap.json)")
    out: dict[str, list[int]] = {}
    for name, entry in data.items():
        if entry is None:
            continue
        if isinstance(entry, dict) and all(isinstance(entry.get(k), list) for k in ("context", "target")):
            entry = [*entry["context"], *entry["target"]]
        if not isinstance(entry, list) or not all(isinstance(i, int) for i in entry):
            raise ValueError(f"index map {path}: entry {name!r} must be a list of frame ids")
        out[name] = [int(i) for i in entry]
    return out


def official_frame_paths(root: str | os.PathLike, sequence: str) -> list[Path]:
    """Frame files of ``sequence`` in id order: ``annotations.json`` (official export; ``filepath`` relative to
    ``root``) when present, else the frames of our layout (``cameras.json`` order, see :func:`read_sequence`)."""
    root = Path(root)
    folder = root / sequence
    anno = folder / ANNOTATIONS_FILE
    if anno.is_file():
        try:
            entries = json.loads(anno.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {anno}: {exc}") from exc
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "filepath" in e for e in entries):
            raise ValueError(f"{anno}: expected a list of {{'idx', 'filepath', 'intrinsics', 'extrinsics'}} entries")
        return [root / e["filepath"] for e in entries]
    if folder.is_dir():
        return list(read_sequence(folder).images)
    raise FileNotFoundError(f"sequence {sequence!r}: neither {anno} nor a sequence folder {folder} exists")


def official_resize(image, vae_size: int = 512, model_size: int = 448, aspect: bool = False) -> tuple[Tensor, Tensor]:
    """A PIL image -> (video-size frame (3, S, S), 3D-size frame (3, s, s)) in [0, 1] as the released
    ``rescale_image_w_crop`` (module docstring): Lanczos resize, centre crop to ``vae_size``, Lanczos resize of the
    crop to ``model_size``; ``aspect=False`` keeps its width/height swap."""
    import numpy as np
    from PIL import Image

    lanczos = Image.Resampling.LANCZOS
    image = image.convert("RGB")
    first, second = image.size  # (width, height); the released code names them (H, W)
    scale = vae_size / min(first, second)
    if aspect:
        new_w, new_h = round(first * scale), round(second * scale)
    else:
        new_h, new_w = round(first * scale), round(second * scale)
    big = image.resize((new_w, new_h), resample=lanczos)
    x0, y0 = max((new_w - vae_size) // 2, 0), max((new_h - vae_size) // 2, 0)
    crop = big.crop((x0, y0, x0 + vae_size, y0 + vae_size))
    scale2 = model_size / min(crop.size)
    small = crop.resize((round(crop.size[1] * scale2), round(crop.size[0] * scale2)), resample=lanczos)

    def to_tensor(im) -> Tensor:  # torchvision's ToTensor: uint8 / 255 in float32
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)

    return to_tensor(crop), to_tensor(small)


def load_official_views(paths: Sequence[Path], vae_size: int = 512, model_size: int = 448, aspect: bool = False
                        ) -> tuple[Tensor, Tensor]:
    """Frames -> (video frames (V, 3, S, S), 3D frames (V, 3, s, s)) via :func:`official_resize`."""
    from PIL import Image

    vids, models = [], []
    for p in paths:
        with Image.open(p) as im:
            v, m = official_resize(im, vae_size, model_size, aspect)
        vids.append(v)
        models.append(m)
    return torch.stack(vids), torch.stack(models)


def default_views(num_frames: int, context: int = 8, target: int = 4) -> tuple[list[int], list[int]]:
    """Evenly spaced context frames over the sequence, and evenly spaced targets among the non-context frames
    strictly between the first and last context frame (interpolation, as in RealEstate10K evaluations)."""
    if num_frames < context + target:
        raise ValueError(f"a sequence of {num_frames} frames cannot give {context} context + {target} target views")
    ctx = sorted({round(i * (num_frames - 1) / (context - 1)) for i in range(context)}) if context > 1 else [0]
    inner = [i for i in range(ctx[0] + 1, ctx[-1]) if i not in ctx]
    if len(inner) < target:
        raise ValueError(f"a sequence of {num_frames} frames leaves only {len(inner)} frames between its "
                         f"{context} context views for {target} targets")
    tgt = [inner[round(j * (len(inner) - 1) / max(target - 1, 1))] for j in range(target)] if target > 1 else \
        [inner[len(inner) // 2]]
    return ctx, tgt


def pad_to_4k1(indices: Sequence[int], temporal_factor: int = 4) -> list[int]:
    """Pad a frame list to the next ``4k + 1`` length by repeating its last entry (8 -> 9, 12 -> 13); unchanged if
    the length already is ``4k + 1``."""
    n = len(indices)
    if n == 0:
        raise ValueError("pad_to_4k1: no frames")
    want = math.ceil((n - 1) / temporal_factor) * temporal_factor + 1
    return list(indices) + [indices[-1]] * (want - n)


def crop_resize_intrinsics(K: Tensor, width: int, height: int, vae_size: int, model_size: int) -> Tensor:
    """Pixel intrinsics (..., 3, 3) of a ``width`` x ``height`` image -> those of the square crop that
    :func:`training.data.load_clip` makes (shorter side to ``vae_size``, centre crop, then resize to
    ``model_size``), expressed at ``model_size`` pixels."""
    scale = vae_size / min(width, height)
    nw, nh = max(vae_size, round(width * scale)), max(vae_size, round(height * scale))
    left, top = (nw - vae_size) // 2, (nh - vae_size) // 2
    sx, sy, m = nw / width, nh / height, model_size / vae_size
    out = K.clone()
    out[..., 0, 0] = K[..., 0, 0] * sx * m
    out[..., 1, 1] = K[..., 1, 1] * sy * m
    out[..., 0, 2] = (K[..., 0, 2] * sx - left) * m
    out[..., 1, 2] = (K[..., 1, 2] * sy - top) * m
    return out


def load_views(seq: PosedSequence, indices: Sequence[int], vae_size: int, model_size: int
               ) -> tuple[Tensor, Tensor, Cameras]:
    """Frames ``indices`` -> (video frames (V, 3, vae, vae), model frames (V, 3, m, m), GT :class:`Cameras` at the
    model size, float64)."""
    bad = [i for i in indices if not 0 <= i < len(seq)]
    if bad:
        raise ValueError(f"sequence {seq.name}: frame ids {bad} out of range 0..{len(seq) - 1}")
    vae, model = load_clip([seq.images[i] for i in indices], vae_size, model_size)
    ks = torch.stack([crop_resize_intrinsics(seq.K[i], *seq.sizes[i], vae_size, model_size) for i in indices])
    return vae, model, Cameras(seq.c2w[list(indices)], ks, model_size, model_size)


# ============================================================================================ alignment
def _project_so3(m: Tensor) -> Tensor:
    u, _, vh = torch.linalg.svd(m)
    d = torch.ones(3, dtype=m.dtype, device=m.device)
    d[-1] = torch.sign(torch.linalg.det(u @ vh))
    return u @ torch.diag(d) @ vh


def align_similarity(src_c2w: Tensor, dst_c2w: Tensor, eps: float = 1e-12) -> tuple[float, Tensor, Tensor]:
    """Similarity ``x_dst = s R x_src + t`` that maps cameras ``src_c2w`` (V, 4, 4) onto ``dst_c2w`` (V, 4, 4).

    Rotation: the chordal-L2 mean of the per-camera rotations ``R_dst_i R_src_i^T`` (projected onto SO(3)), so it is
    defined even for collinear camera centres (common on RealEstate10K). Scale and translation: least squares on
    the camera centres given R: ``s = sum <R(c_src - mean), c_dst - mean> / sum |c_src - mean|^2`` (s = 1 when the
    source centres coincide), ``t = mean_dst - s R mean_src``. Exact for a similarity-transformed copy.
    Returns (s, R (3, 3), t (3,)) in float64.
    """
    a, b = src_c2w.double(), dst_c2w.double()
    r = _project_so3((b[:, :3, :3] @ a[:, :3, :3].transpose(1, 2)).sum(0))
    ca, cb = a[:, :3, 3], b[:, :3, 3]
    da, db = ca - ca.mean(0), cb - cb.mean(0)
    var = da.pow(2).sum()
    if float(var) <= eps:
        s = 1.0
    else:
        s = float(((da @ r.T) * db).sum() / var)
        if s <= 0:
            logger.warning("similarity alignment gave a non-positive scale (%.3g); using |s|", s)
            s = abs(s) or 1.0
    t = cb.mean(0) - s * (r @ ca.mean(0))
    return s, r, t


def apply_similarity(c2w: Tensor, s: float, r: Tensor, t: Tensor) -> Tensor:
    """Cameras (V, 4, 4) moved by ``x -> s R x + t``: rotation ``R R_i``, centre ``s R c_i + t`` (the scale acts on
    the scene, not on the rigid camera)."""
    c = c2w.double()
    out = torch.zeros_like(c)
    out[:, :3, :3] = r @ c[:, :3, :3]
    out[:, :3, 3] = s * c[:, :3, 3] @ r.T + t
    out[:, 3, 3] = 1
    return out.to(c2w.dtype)


# ============================================================================================ synthetic
def _write_text(path: Path, text: str) -> None:
    from vist3a.io.atomic import atomic_write

    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_synthetic_sequences(root: str | os.PathLike, sequences: int = 2, frames: int = 16, size: int = 64, *,
                              width: int | None = None, seed: int = 0, normalized: bool = False,
                              index: dict | None = None) -> list[Path]:
    """Write RealEstate10K-style sequences with known cameras (tests, smoke runs): a camera orbiting coloured blobs
    (rendered with our rasteriser), ``size`` x ``width`` (default square) images. Returns the sequence folders."""
    from PIL import Image

    from vist3a.cameras import look_at
    from vist3a.gaussians import Gaussians
    from vist3a.io.atomic import atomic_path
    from vist3a.render import render

    root = Path(root)
    width = width or size
    out = []
    for k in range(sequences):
        g = torch.Generator().manual_seed(seed * 1000 + k)
        n = 300
        means = (torch.rand(n, 3, generator=g) * 2 - 1) * torch.tensor([1.5, 1.0, 1.5])
        gauss = Gaussians(means=means, scales=torch.full((n, 3), 0.12), rotations=torch.tensor([[1.0, 0, 0, 0]]
                                                                                               ).repeat(n, 1),
                          opacities=torch.full((n,), 0.8), sh=((torch.rand(n, 1, 3, generator=g) - 0.5) / 0.2821))
        ang = torch.linspace(-0.5, 0.5, frames, dtype=torch.float64)
        eye = torch.stack([3.5 * torch.sin(ang), torch.full_like(ang, -0.3), -3.5 * torch.cos(ang)], -1)
        c2w = look_at(eye, torch.zeros(3, dtype=torch.float64), torch.tensor([0, -1.0, 0], dtype=torch.float64))
        f = 0.9 * max(width, size)
        K = torch.tensor([[f, 0, width / 2], [0, f, size / 2], [0, 0, 1]], dtype=torch.float64).expand(frames, 3, 3)
        rgb = render(gauss, Cameras(c2w.float(), K.float(), width, size), background=torch.tensor([0.2, 0.3, 0.4])
                     ).rgb
        folder = root / f"seq_{k:03d}"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        entries = []
        for j in range(frames):
            arr = (rgb[j].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            name = f"images/{j:05d}.png"
            with atomic_path(folder / name) as tmp:
                Image.fromarray(arr).save(tmp, format="PNG")
            fx, fy, cx, cy = (float(K[j, 0, 0]), float(K[j, 1, 1]), float(K[j, 0, 2]), float(K[j, 1, 2]))
            if normalized:
                fx, cx, fy, cy = fx / width, cx / width, fy / size, cy / size
            entries.append({"image": name, "c2w": c2w[j].tolist(), "fx": fx, "fy": fy, "cx": cx, "cy": cy})
        _write_text(folder / CAMERAS_FILE, json.dumps({"intrinsics": "normalized" if normalized else "pixels",
                                                      "frames": entries}, indent=1))
        out.append(folder)
    if index is not None:
        _write_text(root / INDEX_FILE, json.dumps(index, indent=1))
    return out
