"""Text-to-3D on the micro world, measured against its ground truth: for held-out prompts (the test split's captions
and the novel split's, whose colour x shape pairs were never trained on), generate a scene with the micro Wan
before and after DRTune, decode it two ways and judge the results.

Per prompt and seed, one latent is sampled and then

* **stitched** (the VIST3A path): the micro stitched decoder on the latent -> Gaussians + cameras;
* **decode + AnySplat** (the un-stitched baseline): the micro VAE decodes the latent, the micro AnySplat reconstructs
  the decoded frames.

Each scene is rendered at its own predicted cameras of views 0, 4 and 8 (56 px) and judged by the ground-truth judge
(:mod:`training.micro.judge`: object count, colour set, shape set vs the prompt's). 3D consistency: PSNR between the
decoded frames and the renders at those views (how well the 3D scene reproduces the video it came from).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from ..eval_nvs import render_views
from ..metrics import psnr
from .judge import readings, score_readings
from .shards import to_model_size
from .world import SceneSpec, sample_scene

__all__ = ["JUDGE_VIEWS", "evaluate_prompts", "held_out_specs", "judge_ground_truth", "judge_scene"]

logger = logging.getLogger("vist3a.micro")

JUDGE_VIEWS = (0, 4, 8)


def judge_scene(judge, gaussians, cameras, frames56, spec: SceneSpec) -> dict[str, float]:
    """Judge one generated scene against its prompt's spec: render ``gaussians`` at ``cameras`` (V >= 9 predicted
    cameras) of views :data:`JUDGE_VIEWS` at 56 px, read them with the judge -> {count (0/1), colour_f1, shape_f1,
    exact (0/1), consistency_psnr (dB between those renders and ``frames56`` (T, 3, 56, 56) in [0, 1])}."""
    cams = cameras[torch.tensor(JUDGE_VIEWS)]
    renders = render_views(gaussians.to(dtype=torch.float32), cams.to("cpu", torch.float32))
    out = score_readings(readings(judge, renders), spec)
    out["consistency_psnr"] = float(psnr(renders, frames56[list(JUDGE_VIEWS)]).mean())
    return out


@torch.no_grad()
def evaluate_prompts(pipe, model3d, judge, specs: Sequence[SceneSpec], *, seed: int = 0, steps: int | None = None,
                     progress: bool = False, desc: str = "prompts") -> dict[str, Any]:
    """Mean judge scores and consistency over ``specs`` (their captions are the prompts) for the stitched path and
    the decode + AnySplat baseline; ``pipe`` is a :class:`vist3a.pipeline.TextTo3DPipeline`."""
    from tqdm import tqdm

    rows = {"stitched": [], "decode_reconstruct": []}
    for k, spec in enumerate(tqdm(specs, desc=desc, unit="prompt", disable=not progress, leave=False)):
        scene = pipe(spec.caption, seed=seed + k, num_inference_steps=steps, progress=False)
        frames56 = to_model_size(scene.frames, 56)
        rows["stitched"].append(judge_scene(judge, scene.gaussians, scene.cameras, frames56, spec))
        base = model3d.predict(frames56[None])
        rows["decode_reconstruct"].append(judge_scene(judge, base.gaussians[0], base.cameras[0], frames56, spec))
    out: dict[str, Any] = {"prompts": len(specs)}
    for method, vals in rows.items():
        out[method] = {key: sum(v[key] for v in vals) / max(len(vals), 1) for key in vals[0]} if vals else {}
    return out


@torch.no_grad()
def judge_ground_truth(judge, scenes, limit: int = 200) -> dict[str, float]:
    """The judge's own accuracy on ground-truth renders of held-out scenes (views 0, 4, 8 at 56 px)."""
    vals = []
    for i in range(min(limit, len(scenes))):
        item = scenes[i]
        imgs = to_model_size(item["frames"][list(JUDGE_VIEWS)], 56)
        vals.append(score_readings(readings(judge, imgs), item["spec"]))
    return {key: sum(v[key] for v in vals) / len(vals) for key in vals[0]} | {"scenes": len(vals)}


def held_out_specs(split: str, n: int, seed: int = 0) -> list[SceneSpec]:
    """The first ``n`` scene specs of a held-out split (``test`` or ``novel``)."""
    if split not in ("test", "novel"):
        raise ValueError(f"held_out_specs: split must be test or novel, got {split!r}")
    return [sample_scene(split, i, seed) for i in range(n)]
