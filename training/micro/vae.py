"""The micro video VAE: diffusers' ``AutoencoderKLWan`` at a small width, trained on the micro world's clips.

Same architecture family, latent layout and conventions as Wan 2.1's VAE (16 latent channels, 8x spatial and 4x
temporal compression, causal 3D convs; a 9-frame 64x64 clip -> a (16, 3, 8, 8) latent), so every piece of this pack
that takes "a Wan VAE" takes it: the layer search, the stitched finetuning, the pipelines.

Training: L1 + MSE reconstruction of whole clips (input [-1, 1]) from a posterior sample, plus a small KL term
(per-element mean, weight ``kl_weight``); AdamW (lr 1e-3), warmup + cosine, grad-norm clip 1. After training, the per-channel mean / std of the
raw latents over training clips are written into the config's ``latents_mean`` / ``latents_std`` (what
``WanPipeline`` uses to normalise latents for the transformer), and the model is saved with ``save_pretrained``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .loop import step_rng, train_loop
from .shards import MicroScenes

__all__ = ["VAETrainConfig", "build_micro_vae", "evaluate_vae", "latent_statistics", "train_vae"]

logger = logging.getLogger("vist3a.micro")

#: the micro Wan VAE's constructor arguments (diffusers AutoencoderKLWan)
MICRO_VAE_CONFIG = {"base_dim": 16, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1, "attn_scales": [],
                    "temperal_downsample": [False, True, True], "dropout": 0.0}


@dataclass
class VAETrainConfig:
    steps: int = 3000
    batch: int = 4
    lr: float = 1e-3
    warmup: int = 200
    kl_weight: float = 1e-4
    seed: int = 0
    frames: int = 9

    def to_dict(self) -> dict:
        return asdict(self)


def build_micro_vae(seed: int = 0):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(**MICRO_VAE_CONFIG)


def _batch(scenes: MicroScenes, rng, batch: int, frames: int, flip: bool = True) -> Tensor:
    clips = []
    for _ in range(batch):
        x = scenes[rng.randrange(len(scenes))]["frames"][:frames]
        if flip and rng.random() < 0.5:
            x = x.flip(-1)
        clips.append(x)
    return torch.stack(clips).permute(0, 2, 1, 3, 4) * 2 - 1  # (B, 3, T, H, W) in [-1, 1]


def train_vae(world: str | Path, out: str | Path, cfg: VAETrainConfig, *, progress: bool = True,
              stop_after: int | None = None) -> int:
    """Train (or resume) into ``out``; export ``out/vae`` (diffusers folder) when all steps are done. Returns the
    exit code (0, or 130 / 143 when stopped by a signal)."""
    from ..runtime import cosine_with_warmup

    out = Path(out)
    scenes = MicroScenes(world, "train")
    vae = build_micro_vae(cfg.seed).train()
    params = {n: p for n, p in vae.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = cosine_with_warmup(opt, cfg.warmup, cfg.steps, 0.05)
    gen = torch.Generator()

    def step_fn(step: int) -> dict:
        rng = step_rng(cfg.seed, step, "vae")
        x = _batch(scenes, rng, cfg.batch, cfg.frames)
        gen.manual_seed(rng.getrandbits(62))
        post = vae.encode(x).latent_dist
        z = post.sample(generator=gen)
        rec = vae.decode(z).sample
        l1 = (rec - x).abs().mean()
        mse = F.mse_loss(rec, x)
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        loss = l1 + mse + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        sched.step()
        psnr = -10 * math.log10(max(mse.item() / 4.0, 1e-12))  # images in [-1, 1]: range 2
        return {"loss": loss.item(), "l1": l1.item(), "kl": kl.item(), "psnr": psnr, "grad_norm": gn.item()}

    res = train_loop(out, params=params, optimizer=opt, scheduler=sched, step_fn=step_fn, steps=cfg.steps,
                     config=cfg.to_dict(), desc="micro VAE", progress=progress, stop_after=stop_after)
    if res.step >= cfg.steps:
        vae.eval()
        mean, std = latent_statistics(vae, scenes, n=256, frames=cfg.frames)
        vae.register_to_config(latents_mean=[round(float(v), 6) for v in mean],
                               latents_std=[round(float(v), 6) for v in std])
        _save_diffusers(vae, out / "vae")
        logger.info("micro VAE exported to %s", out / "vae")
    return res.code


def _save_diffusers(model, folder: Path) -> None:
    """``save_pretrained`` into a temporary sibling, then rename into place (never a half-written folder)."""
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@torch.no_grad()
def latent_statistics(vae, scenes: MicroScenes, n: int = 256, frames: int = 9) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (16,) of the raw latent means over ``n`` clips (evenly spread over ``scenes``)."""
    zs = []
    idx = [round(i * (len(scenes) - 1) / max(n - 1, 1)) for i in range(min(n, len(scenes)))]
    for k in range(0, len(idx), 8):
        x = torch.stack([scenes[i]["frames"][:frames] for i in idx[k:k + 8]]).permute(0, 2, 1, 3, 4) * 2 - 1
        zs.append(vae.encode(x).latent_dist.mean)
    z = torch.cat(zs).transpose(0, 1).reshape(vae.config.z_dim, -1)
    return z.mean(1), z.std(1)


@torch.no_grad()
def evaluate_vae(vae, scenes: MicroScenes, frames: int = 9, limit: int | None = None) -> dict:
    """Reconstruction PSNR (dB, images in [0, 1], per clip then mean) of the posterior mean on ``scenes``."""
    psnrs = []
    n = len(scenes) if limit is None else min(limit, len(scenes))
    for k in range(0, n, 8):
        x = torch.stack([scenes[i]["frames"][:frames] for i in range(k, min(k + 8, n))]).permute(0, 2, 1, 3, 4)
        rec = vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample.clamp(-1, 1) * 0.5 + 0.5
        mse = (rec - x).pow(2).flatten(1).mean(1)
        psnrs += (-10 * torch.log10(mse.clamp_min(1e-12))).tolist()
    return {"psnr": sum(psnrs) / len(psnrs), "clips": len(psnrs), "frames": frames}
