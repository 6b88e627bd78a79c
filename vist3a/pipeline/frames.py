"""Reading a user's clip: a folder of ordered frames (natural sort) or, where ``imageio-ffmpeg`` is installed, a
video file; resampling to 4k + 1 frames and resizing / centre-cropping. Frames are (T, 3, H, W) float32 in [0, 1]."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "crop_resize", "load_frames", "read_video", "resample_indices"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif", ".m4v")


def _natural_key(path: Path) -> list:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", path.name)]


def resample_indices(available: int, wanted: int) -> list[int]:
    """``wanted`` evenly spaced indices in [0, available) including the first and the last frame."""
    if available < 1:
        raise ValueError("the clip has no frames")
    if wanted == 1:
        return [0]
    return [round(i * (available - 1) / (wanted - 1)) for i in range(wanted)]


def crop_resize(frames: Tensor, height: int, width: int) -> Tensor:
    """(T, 3, h, w) -> (T, 3, height, width): scale so the frame covers the target (bilinear, antialiased), then
    centre-crop. Aspect ratio is kept; nothing is stretched."""
    _, _, h, w = frames.shape
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    if (nh, nw) != (h, w):
        frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", align_corners=False,
                               antialias=nh < h or nw < w).clamp_(0, 1)
    top, left = (nh - height) // 2, (nw - width) // 2
    return frames[:, :, top:top + height, left:left + width].contiguous()


def _read_images(paths: list[Path]) -> Tensor:
    import numpy as np
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                if im.width * im.height > 16384 * 16384:
                    raise ValueError(f"{im.width}x{im.height} pixels is far larger than a video frame")
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ValueError(f"cannot read image {p}: {exc}; replace or remove that frame") from None
        if out and arr.shape != out[0].shape:
            raise ValueError(f"frame {p.name} is {arr.shape[1]}x{arr.shape[0]} but the first frame is "
                             f"{out[0].shape[1]}x{out[0].shape[0]}; all frames of a clip must have one size")
        out.append(arr)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div_(255.0)


def read_video(path: str | os.PathLike, indices_for=None) -> Tensor:
    """All frames of a video file via ``imageio-ffmpeg`` (if installed) -> (T, 3, H, W) in [0, 1]."""
    try:
        import imageio_ffmpeg
    except ImportError as err:
        raise ValueError(f"reading video files needs the optional imageio-ffmpeg package, which is not installed; "
                         f"extract the frames first (e.g. `ffmpeg -i {Path(path).name} frames/%04d.png`) and pass "
                         "the folder") from err
    import numpy as np

    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        w, h = meta["size"]
        frames = [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3) for buf in reader]
    except (RuntimeError, OSError, StopIteration, KeyError, ValueError) as err:
        first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise ValueError(f"cannot read the video {path} ({first[:200]}); it is damaged or not a video: extract "
                         f"the frames with ffmpeg (`ffmpeg -i {Path(path).name} frames/%04d.png`) and pass the "
                         "folder") from None
    if not frames:
        raise ValueError(f"{path}: no frames could be decoded")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255.0)


def load_frames(source: str | os.PathLike, num_frames: int, height: int, width: int) -> Tensor:
    """A folder of ordered frames (natural sort: 2.png before 10.png) or a video file -> (num_frames, 3, height,
    width) in [0, 1]: evenly resampled in time (first and last kept), scaled to cover and centre-cropped."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                       key=_natural_key)
        if not files:
            raise ValueError(f"{path} holds no frames ({', '.join(IMAGE_SUFFIXES)})")
        if len(files) < num_frames:
            logger.warning("%s has %d frames; repeating frames to reach %d", path, len(files), num_frames)
        files = [files[i] for i in resample_indices(len(files), num_frames)]
        clip = _read_images(files)
    elif path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a regular file or folder (a FIFO, socket or device); pass a folder of "
                         "ordered frames or a video file")
    elif path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"{path.name}: expected a folder of frames or a video file ({', '.join(VIDEO_SUFFIXES)})")
        clip = read_video(path)
        clip = clip[resample_indices(clip.shape[0], num_frames)]
    else:
        raise FileNotFoundError(f"{path} does not exist (pass a folder of ordered frames or a video file)")
    logger.info("read %d frames of %dx%d from %s", clip.shape[0], clip.shape[3], clip.shape[2], path)
    return crop_resize(clip, height, width)
