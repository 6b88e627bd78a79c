"""The micro world on disk: scenes rendered once into safetensors shards, and the readers every stage uses.

Layout of a world folder (``python -m training.micro world --out runs/micro/world``)::

    world.json                      manifest: format, seed, sizes, scene counts per split, shards
    timing.json                     render seconds per shard and the wall time spent generating
    <split>/shard_NNNNN.safetensors scenes [N * shard_size, (N + 1) * shard_size) of the split

A shard holds, for its S scenes (F = CLIP_FRAMES orbit frames, then T = TARGET_VIEWS novel views)::

    frames (S, F + T, 64, 64, 3) uint8    sRGB-ish renders (the video VAE's input, square)
    depth  (S, F + T, 56, 56) float16     camera-space depth at the 3D model's size
    c2w    (S, F + T, 4, 4) float32       OpenCV camera-to-world, world z up
    K      (S, 3, 3) float32              pixel intrinsics at 64 x 64 (all views share them)

and in its metadata ``specs``: a JSON list of the scenes' :class:`~training.micro.world.SceneSpec` (captions
follow from them). Every shard is written atomically, so an interrupted generation resumes where it stopped
(finished shards are kept and checked, not redone). Nothing is unpickled when reading.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from vist3a import Cameras
from vist3a.io.atomic import atomic_path, atomic_write

from . import world as W

__all__ = ["FORMAT", "MicroClips", "MicroScenes", "WorldManifest", "generate_world", "is_world", "read_manifest"]

logger = logging.getLogger("vist3a.micro")

FORMAT = "vist3a.micro_world/1"
MANIFEST = "world.json"
TIMING = "timing.json"  # seconds per shard (one worker) and the total wall time of the runs that rendered them


@dataclass
class WorldManifest:
    root: Path
    seed: int
    counts: dict[str, int]
    shard_size: int
    video_size: int
    model_size: int
    clip_frames: int
    target_views: int

    def shard_path(self, split: str, k: int) -> Path:
        return self.root / split / f"shard_{k:05d}.safetensors"

    def num_shards(self, split: str) -> int:
        return math.ceil(self.counts[split] / self.shard_size)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "seed": self.seed, "counts": self.counts, "shard_size": self.shard_size,
                "video_size": self.video_size, "model_size": self.model_size, "clip_frames": self.clip_frames,
                "target_views": self.target_views, "heldout_combos": [list(c) for c in W.HELDOUT_COMBOS],
                "vocabulary": W.vocabulary()}


def is_world(path: str | os.PathLike) -> bool:
    """True when ``path`` is a micro-world folder (holds a ``world.json`` of this format)."""
    p = Path(path) / MANIFEST
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def read_manifest(root: str | os.PathLike) -> WorldManifest:
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not a micro world (no {MANIFEST}); make one with "
                                f"`python -m training.micro world --out {root}`")
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: format {doc.get('format')!r}, expected {FORMAT!r}")
    return WorldManifest(root, int(doc["seed"]), {k: int(v) for k, v in doc["counts"].items()},
                         int(doc["shard_size"]), int(doc["video_size"]), int(doc["model_size"]),
                         int(doc["clip_frames"]), int(doc["target_views"]))


# ============================================================================================ writing
def _render_shard(args: tuple) -> tuple[str, int, float]:
    """Worker: render one shard and write it atomically; returns (split, shard, seconds)."""
    import time

    from safetensors.torch import save_file

    manifest, split, k, threads = args
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    lo = k * manifest.shard_size
    hi = min(lo + manifest.shard_size, manifest.counts[split])
    frames, depth, c2w, ks, specs = [], [], [], [], []
    for i in range(lo, hi):
        spec = W.sample_scene(split, i, manifest.seed)
        out = W.render_scene(spec, size=manifest.video_size, depth_size=manifest.model_size)
        frames.append(out["frames"])
        depth.append(out["depth"].to(torch.float16))
        c2w.append(out["c2w"])
        ks.append(out["K"])
        specs.append(spec.to_json())
    tensors = {"frames": torch.stack(frames), "depth": torch.stack(depth), "c2w": torch.stack(c2w).float(),
               "K": torch.stack(ks).float()}
    path = manifest.shard_path(split, k)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"format": FORMAT, "split": split, "first": str(lo),
                                          "specs": json.dumps(specs)})
    return split, k, time.perf_counter() - t0


def _shard_ok(path: Path, expected: int) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.get_slice("frames").get_shape()[0] == expected
    except Exception:  # noqa: BLE001 - any unreadable shard is redone
        return False


def generate_world(out: str | os.PathLike, counts: dict[str, int], *, seed: int = 0, shard_size: int = 100,
                   workers: int = 2, progress: bool = True) -> WorldManifest:
    """Render the world into ``out`` (layout in the module docstring); resumable: complete shards are kept.

    ``workers`` processes render shards in parallel, one torch thread each. Refuses to mix worlds: an existing
    manifest with other settings is an error naming the difference.
    """
    from tqdm import tqdm

    out = Path(out)
    bad = {k: v for k, v in counts.items() if k not in W.SPLITS or v < 0}
    if bad:
        raise ValueError(f"micro world: bad scene counts {bad}; splits are {W.SPLITS}, counts >= 0")
    manifest = WorldManifest(out, int(seed), dict(counts), int(shard_size), W.VIDEO_SIZE, W.MODEL_SIZE,
                             W.CLIP_FRAMES, W.TARGET_VIEWS)
    if (out / MANIFEST).is_file():
        old = read_manifest(out)
        if old.to_dict() != manifest.to_dict():
            raise ValueError(f"{out} already holds a different micro world ({MANIFEST}: seed {old.seed}, counts "
                             f"{old.counts}, shard size {old.shard_size}); choose another --out or the same options")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / MANIFEST, "w") as fh:
        json.dump(manifest.to_dict(), fh, indent=2)
        fh.write("\n")
    todo = []
    for split, n in counts.items():
        for k in range(manifest.num_shards(split)):
            expected = min(shard_size, n - k * shard_size)
            path = manifest.shard_path(split, k)
            if not (path.is_file() and _shard_ok(path, expected)):
                todo.append((manifest, split, k, 1))
    total = sum(counts.values())
    done = total - sum(min(shard_size, counts[s] - k * shard_size) for _, s, k, _ in todo)
    logger.info("micro world: %d scenes in %s (%d already there), %d shards to render with %d worker(s)", total,
                out, done, len(todo), workers)
    timing_path = out / TIMING
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"shards": {}, "wall": 0.0}
    mark = [time.perf_counter()]

    def record(split: str, k: int, seconds: float) -> None:
        now = time.perf_counter()
        timing["shards"][f"{split}/{k}"] = round(seconds, 2)
        timing["wall"] = round(timing.get("wall", 0.0) + now - mark[0], 2)
        mark[0] = now
        timing["workers"] = workers
        with atomic_write(timing_path, "w") as fh:
            json.dump(timing, fh, indent=1)
        bar.update(min(shard_size, counts[split] - k * shard_size))

    with tqdm(total=total, initial=done, desc="world", unit="scene", disable=not progress) as bar:
        if workers <= 1:
            for job in todo:
                record(*_render_shard(job))
        else:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                for res in pool.imap_unordered(_render_shard, todo):
                    record(*res)
    return manifest


# ============================================================================================ reading
class _ShardCache:
    """Keeps the most recently used shards' tensors in memory (a shard of 100 scenes is about 25 MB)."""

    def __init__(self, manifest: WorldManifest, split: str, keep: int = 4) -> None:
        self.manifest, self.split, self.keep = manifest, split, keep
        self._cache: dict[int, tuple[dict[str, Tensor], list[str]]] = {}

    def get(self, k: int) -> tuple[dict[str, Tensor], list[str]]:
        if k not in self._cache:
            from safetensors import safe_open

            path = self.manifest.shard_path(self.split, k)
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing; finish the world with `python -m training.micro world "
                                        f"--out {self.manifest.root}` (it resumes)")
            with safe_open(str(path), framework="pt") as fh:
                tensors = {name: fh.get_tensor(name) for name in ("frames", "depth", "c2w", "K")}
                specs = json.loads((fh.metadata() or {})["specs"])
            if len(self._cache) >= self.keep:
                self._cache.pop(next(iter(self._cache)))
            self._cache[k] = (tensors, specs)
        return self._cache[k]

    def __getstate__(self):  # DataLoader workers start with an empty cache
        return {"manifest": self.manifest, "split": self.split, "keep": self.keep, "_cache": {}}


class MicroScenes(Dataset):
    """Scenes of one split. Item i::

        {"frames": (F + T, 3, 64, 64) float32 in [0, 1], "depth": (F + T, 56, 56) float32,
         "c2w": (F + T, 4, 4), "K": (3, 3) at 64 px, "spec": SceneSpec, "caption": str, "index": i,
         "clip_frames": F}

    F = clip frames (the orbit), T = novel target views. :meth:`cameras` builds :class:`vist3a.Cameras`.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", limit: int | None = None) -> None:
        self.manifest = read_manifest(root)
        if split not in self.manifest.counts:
            raise ValueError(f"micro world {root}: no split {split!r} (has {sorted(self.manifest.counts)})")
        self.split = split
        n = self.manifest.counts[split]
        self.n = n if limit is None else min(n, int(limit))
        self._shards = _ShardCache(self.manifest, split)

    def __len__(self) -> int:
        return self.n

    @property
    def clip_frames(self) -> int:
        return self.manifest.clip_frames

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        k, j = divmod(i, self.manifest.shard_size)
        tensors, specs = self._shards.get(k)
        spec = W.SceneSpec.from_json(specs[j])
        return {"frames": tensors["frames"][j].permute(0, 3, 1, 2).float().div(255.0),
                "depth": tensors["depth"][j].float(), "c2w": tensors["c2w"][j], "K": tensors["K"][j],
                "spec": spec, "caption": spec.caption, "index": i, "clip_frames": self.manifest.clip_frames}

    @staticmethod
    def cameras(item: dict, views: Sequence[int] | slice | None = None, size: int | None = None) -> Cameras:
        """The item's cameras (all views, or ``views``), at ``size`` px (default the stored 64)."""
        c2w = item["c2w"] if views is None else item["c2w"][views]
        s0 = W.VIDEO_SIZE
        cams = Cameras(c2w, item["K"].expand(c2w.shape[0], 3, 3).contiguous(), s0, s0)
        return cams if size is None or size == s0 else cams.resized(size, size)


def to_model_size(frames: Tensor, size: int) -> Tensor:
    """(..., 3, 64, 64) -> (..., 3, size, size): bicubic with antialiasing, clamped to [0, 1] (the resize
    :class:`training.data.SyntheticClips` and the stitched pipelines use)."""
    import torch.nn.functional as F

    if frames.shape[-1] == size:
        return frames
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = F.interpolate(flat, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
    return out.reshape(*frames.shape[:-2], size, size)


class MicroClips(Dataset):
    """The clip layout of :mod:`training.data` (``{"vae": (T, 3, 64, 64), "model": (T, 3, 56, 56), "scene",
    "indices", "caption"}``) over a micro world's orbit frames, so the layer search and the stitched finetuning read a world
    folder like any ``--data`` folder. ``views`` must equal the world's clip length (the whole orbit)."""

    def __init__(self, root: str | os.PathLike, split: str = "train", samples: int | None = None, *, views: int = 9,
                 vae_size: int = 64, model_size: int = 56, seed: int = 0) -> None:
        self.scenes = MicroScenes(root, split)
        m = self.scenes.manifest
        if views != m.clip_frames:
            raise ValueError(f"micro world {root}: clips have {m.clip_frames} frames; use --views {m.clip_frames}")
        if vae_size != m.video_size:
            raise ValueError(f"micro world {root}: frames are {m.video_size} px; use --vae-size {m.video_size}")
        self.samples = len(self.scenes) if samples is None else int(samples)
        self.model_size, self.seed, self.views = int(model_size), int(seed), int(views)
        import random

        order = list(range(len(self.scenes)))
        random.Random(f"vist3a-micro-clips:{seed}:{split}").shuffle(order)
        self._order = order

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.samples:
            raise IndexError(index)
        item = self.scenes[self._order[index % len(self.scenes)]]
        vae = item["frames"][: self.views]
        return {"vae": vae, "model": to_model_size(vae, self.model_size), "scene": f"{self.scenes.split}/"
                f"{item['index']}", "indices": list(range(self.views)), "caption": item["caption"]}
