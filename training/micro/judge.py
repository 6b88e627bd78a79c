"""A ground-truth judge for generated micro scenes: a small CNN trained on the world's ground-truth renders to read
off, from one image, the object count (1-3) and which of the 8 colours and 5 shapes are present.

It is trained on ground-truth labels (the scene specs), never on the reward model's scores, so it can judge text
adherence independently of the DRTune reward: a generated scene is rendered from its predicted cameras and the
judge's readings are compared with the prompt's objects. Its own reliability is measured on the held-out test
scenes' ground-truth renders and reported next to every adherence number. Colours and shapes are judged as sets
(which colours / shapes appear), so held-out colour x shape pairs are judged from attributes it has seen in other
pairs; the binding of a colour to a shape is not judged.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .loop import step_rng, train_loop
from .shards import MicroScenes
from .world import COLOURS, SHAPES

__all__ = ["Judge", "JudgeTrainConfig", "judge_labels", "load_judge", "readings", "score_readings", "train_judge"]

logger = logging.getLogger("vist3a.micro")

COLOUR_NAMES = tuple(COLOURS)


class Judge(nn.Module):
    """(B, 3, 64, 64) in [0, 1] -> logits: count (B, 3), colours (B, 8), shapes (B, 5)."""

    def __init__(self, width: int = 48) -> None:
        super().__init__()
        c = width
        self.body = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, c, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.GELU(), nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 4 * c, 3, padding=1), nn.GELU(), nn.Conv2d(4 * c, 4 * c, 3, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * c, 3 + len(COLOURS) + len(SHAPES))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = F.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False) if images.shape[-1] != 64 \
            else images
        out = self.head(self.body(x * 2 - 1))
        return {"count": out[:, :3], "colours": out[:, 3:3 + len(COLOURS)], "shapes": out[:, 3 + len(COLOURS):]}


def judge_labels(spec) -> dict[str, Tensor]:
    """Ground truth of a :class:`~training.micro.world.SceneSpec`: count index (0..2), colour and shape sets."""
    colours = torch.zeros(len(COLOURS))
    shapes = torch.zeros(len(SHAPES))
    for o in spec.objects:
        colours[COLOUR_NAMES.index(o.colour)] = 1
        shapes[SHAPES.index(o.shape)] = 1
    return {"count": torch.tensor(len(spec.objects) - 1), "colours": colours, "shapes": shapes}


@dataclass
class JudgeTrainConfig:
    steps: int = 800
    batch: int = 32
    lr: float = 2e-3
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _augment(img: Tensor, rng) -> Tensor:
    from .scorer import _degrade

    return _degrade(img, rng)


def train_judge(world: str | Path, out: str | Path, cfg: JudgeTrainConfig, *, progress: bool = True,
                stop_after: int | None = None) -> int:
    """Train (or resume) the judge on ground-truth renders of the training split; export ``out/judge.safetensors``."""
    from safetensors.torch import save_file

    from vist3a.io.atomic import atomic_path

    from ..runtime import cosine_with_warmup

    out = Path(out)
    scenes = MicroScenes(world, "train")
    torch.manual_seed(cfg.seed)
    model = Judge().train()
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=1e-4)
    sched = cosine_with_warmup(opt, 50, cfg.steps, 0.02)

    def step_fn(step: int) -> dict:
        rng = step_rng(cfg.seed, step, "judge")
        items = [scenes[rng.randrange(len(scenes))] for _ in range(cfg.batch)]
        imgs = torch.stack([_augment(it["frames"][rng.randrange(it["frames"].shape[0])], rng) for it in items])
        labels = [judge_labels(it["spec"]) for it in items]
        pred = model(imgs)
        loss = (F.cross_entropy(pred["count"], torch.stack([lb["count"] for lb in labels]))
                + F.binary_cross_entropy_with_logits(pred["colours"], torch.stack([lb["colours"] for lb in labels]))
                + F.binary_cross_entropy_with_logits(pred["shapes"], torch.stack([lb["shapes"] for lb in labels])))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": loss.item()}

    res = train_loop(out, params=params, optimizer=opt, scheduler=sched, step_fn=step_fn, steps=cfg.steps,
                     config=cfg.to_dict(), desc="judge", progress=progress, stop_after=stop_after)
    if res.step >= cfg.steps:
        with atomic_path(out / "judge.safetensors") as tmp:
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp)
    return res.code


def load_judge(path: str | Path) -> Judge:
    from safetensors.torch import load_file

    model = Judge()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


@torch.no_grad()
def readings(judge: Judge, images: Tensor) -> dict[str, Tensor]:
    """Average the judge's probabilities over views: images (V, 3, H, W) -> count probs (3,), colour and shape
    probabilities."""
    pred = judge(images.float())
    return {"count": pred["count"].softmax(-1).mean(0), "colours": pred["colours"].sigmoid().mean(0),
            "shapes": pred["shapes"].sigmoid().mean(0)}


def score_readings(r: dict[str, Tensor], spec) -> dict[str, float]:
    """Agreement of one scene's readings with what its prompt asks for: count correct (0/1), colour-set and
    shape-set F1 (threshold 0.5), all-attributes exact (0/1)."""
    gt = judge_labels(spec)

    def f1(p: Tensor, g: Tensor) -> float:
        pb = p > 0.5
        tp = float((pb & (g > 0.5)).sum())
        fp, fn = float((pb & (g < 0.5)).sum()), float((~pb & (g > 0.5)).sum())
        return 2 * tp / max(2 * tp + fp + fn, 1e-9)

    count_ok = float(int(r["count"].argmax()) == int(gt["count"]))
    cf, sf = f1(r["colours"], gt["colours"]), f1(r["shapes"], gt["shapes"])
    return {"count": count_ok, "colour_f1": cf, "shape_f1": sf,
            "exact": float(count_ok == 1.0 and cf == 1.0 and sf == 1.0)}
