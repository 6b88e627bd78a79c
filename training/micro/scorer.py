"""The micro reward model ("micro CLIP"): a transformers ``CLIPModel`` at a small size (ViT patch 8 on 64x64
images, a 4-layer text transformer over the micro tokenizer, width 128) trained contrastively on the micro world's
renders and captions. Saved as a CLIP folder (model, tokenizer, image processor), so
``training.rewards.ClipScorer.from_pretrained(<folder>)`` uses it exactly like a real CLIP (``--clip <folder>``).

Training pairs: a random view (one of the 9 orbit frames or the 4 novel views) of a training scene with the scene's
caption; each image is degraded at random like the images the reward sees (down to 56 px and back as the renders of
the stitched decoder are, mild blur, noise), then the symmetric InfoNCE loss over the batch with a learnt
temperature (CLIP's). Evaluation: text->image and image->text top-1 retrieval among held-out test scenes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .loop import step_rng, train_loop
from .shards import MicroScenes

__all__ = ["ScorerTrainConfig", "build_micro_clip", "evaluate_scorer", "train_scorer"]

logger = logging.getLogger("vist3a.micro")

IMAGE_SIZE = 64
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def build_micro_clip(seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    from .t2v import micro_tokenizer

    tok = micro_tokenizer()
    torch.manual_seed(seed)
    text = {"vocab_size": len(tok), "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
            "num_attention_heads": 4, "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 1,
            "eos_token_id": 1}
    vision = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
              "image_size": IMAGE_SIZE, "patch_size": 8}
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=128)), tok


@dataclass
class ScorerTrainConfig:
    steps: int = 2000
    batch: int = 64
    lr: float = 5e-4
    warmup: int = 100
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _degrade(img: Tensor, rng) -> Tensor:
    """(3, 64, 64) in [0, 1] -> a randomly degraded copy (56-px round trip, blur, noise)."""
    x = img[None]
    if rng.random() < 0.5:
        x = F.interpolate(F.interpolate(x, size=(56, 56), mode="bicubic", antialias=True), size=(64, 64),
                          mode="bilinear")
    if rng.random() < 0.3:
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    if rng.random() < 0.3:
        g = torch.Generator().manual_seed(rng.getrandbits(62))
        x = x + 0.03 * torch.randn(x.shape, generator=g)
    return x[0].clamp(0, 1)


def _pixels(images: Tensor) -> Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images - mean) / std


def _tokens(tok, captions: list[str]) -> dict:
    return tok(captions, padding="max_length", truncation=True, max_length=64, return_tensors="pt")


def train_scorer(world: str | Path, out: str | Path, cfg: ScorerTrainConfig, *, progress: bool = True,
                 stop_after: int | None = None) -> int:
    """Train (or resume) the micro CLIP into ``out``; export ``out/clip`` (CLIPModel + tokenizer + image
    processor) when done. Returns the exit code."""
    from ..runtime import cosine_with_warmup

    out = Path(out)
    scenes = MicroScenes(world, "train")
    model, tok = build_micro_clip(cfg.seed)
    model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=0.05, betas=(0.9, 0.98))
    sched = cosine_with_warmup(opt, cfg.warmup, cfg.steps, 0.05)

    def step_fn(step: int) -> dict:
        rng = step_rng(cfg.seed, step, "scorer")
        idx = rng.sample(range(len(scenes)), cfg.batch)
        items = [scenes[i] for i in idx]
        imgs = torch.stack([_degrade(it["frames"][rng.randrange(it["frames"].shape[0])], rng) for it in items])
        t = _tokens(tok, [it["caption"] for it in items])
        out_ = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], pixel_values=_pixels(imgs))
        labels = torch.arange(len(items))
        loss = 0.5 * (F.cross_entropy(out_.logits_per_image, labels) + F.cross_entropy(out_.logits_per_text, labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
            acc = (out_.logits_per_image.argmax(1) == labels).float().mean().item()
        return {"loss": loss.item(), "acc": acc, "grad_norm": gn.item()}

    res = train_loop(out, params=params, optimizer=opt, scheduler=sched, step_fn=step_fn, steps=cfg.steps,
                     config=cfg.to_dict(), desc="micro CLIP", progress=progress, stop_after=stop_after)
    if res.step >= cfg.steps:
        save_clip(model.eval(), tok, out / "clip")
    return res.code


def save_clip(model, tok, folder: Path) -> None:
    """A transformers CLIP folder: model, tokenizer, image processor (size 64, this module's normalisation)."""
    import shutil
    import tempfile

    from transformers import CLIPImageProcessor

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                           image_mean=list(MEAN), image_std=list(STD), do_convert_rgb=True).save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("micro CLIP exported to %s", folder)


@torch.no_grad()
def evaluate_scorer(scorer, scenes: MicroScenes, limit: int = 100, view: int = 0) -> dict:
    """Top-1 retrieval accuracy among ``limit`` held-out scenes with a :class:`training.rewards.ClipScorer`:
    text -> image and image -> text (chance: 1 / limit)."""
    n = min(limit, len(scenes))
    items = [scenes[i] for i in range(n)]
    imgs = torch.stack([it["frames"][view] for it in items])
    caps = [it["caption"] for it in items]
    img = F.normalize(scorer._encode_image(_scorer_pixels(scorer, imgs)).float(), dim=-1)
    txt = F.normalize(scorer.text_features(caps), dim=-1)
    sim = img @ txt.T
    labels = torch.arange(n)
    return {"text_to_image": (sim.argmax(0) == labels).float().mean().item(),
            "image_to_text": (sim.argmax(1) == labels).float().mean().item(), "scenes": n}


def _scorer_pixels(scorer, images: Tensor) -> Tensor:
    from ..rewards import _prepare_images

    return _prepare_images(images, scorer.image_size, scorer.mean, scorer.std)
