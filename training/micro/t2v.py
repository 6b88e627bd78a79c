"""The micro text-to-video model: diffusers' ``WanTransformer3DModel`` at a small width with a small
``UMT5EncoderModel`` and a word-level tokenizer built from the micro world's vocabulary, trained by flow matching on
the micro VAE's latents of the world's clips.

It is a real ``WanPipeline`` (same scheduler family: UniPC with flow sigmas, shift 5; same latent normalisation:
``(z - latents_mean) / latents_std`` from the micro VAE's config; same text path: ``encode_prompt`` on the
published camera-orbit template), so sampling it exercises the code the full-size models use.

Training (:func:`train_t2v`):

1. :func:`cache_latents` encodes every training clip once with the micro VAE (the posterior mean, the latent the
   VAE's ``latents_mean`` / ``latents_std`` statistics describe; one safetensors file per world shard, resumable);
2. per step, a batch of clips: the cached latents, normalised; captions wrapped in
   :data:`vist3a.pipeline.settings.PROMPT_TEMPLATE`, replaced by the empty prompt with probability ``uncond_p``
   (classifier-free guidance, sampled with the empty negative prompt); text encoded through the pipeline's own
   ``encode_prompt`` with gradients (the text encoder is trained jointly); the rectified-flow loss of
   :func:`training.align_drtune.flow_matching_loss` (Wan's shifted sigma schedule, target ``eps - x0``).
3. export ``<out>/pipeline``: a diffusers ``WanPipeline`` folder (transformer, text_encoder, tokenizer, scheduler and
   the micro VAE), loadable with ``WanPipeline.from_pretrained``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from vist3a.io.atomic import atomic_path

from .loop import step_rng, train_loop
from .shards import MicroScenes, read_manifest

__all__ = ["MICRO_T2V_CONFIG", "T2VTrainConfig", "build_micro_wan", "cache_latents", "micro_tokenizer",
           "train_t2v"]

logger = logging.getLogger("vist3a.micro")

#: the micro Wan transformer: 6 blocks of width 256 (8 heads x 32), 3x4x4 = 48 tokens for a 9 x 64 x 64 clip
MICRO_T2V_CONFIG = {"patch_size": (1, 2, 2), "num_attention_heads": 8, "attention_head_dim": 32, "in_channels": 16,
                    "out_channels": 16, "text_dim": 128, "freq_dim": 256, "ffn_dim": 768, "num_layers": 6,
                    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 32}
TEXT_LENGTH = 64  # tokens: the template + the longest caption is about 50


def micro_tokenizer():
    """The word-level tokenizer over the micro world's vocabulary and the prompt template's words."""
    from vist3a.pipeline.presets import word_tokenizer
    from vist3a.pipeline.settings import PROMPT_TEMPLATE

    from .world import vocabulary

    return word_tokenizer([PROMPT_TEMPLATE.replace("{prompt}", "a"), *vocabulary()])


def build_micro_wan(vae, seed: int = 0, flow_shift: float = 5.0):
    """A ``WanPipeline`` of a fresh micro transformer + text encoder around the trained micro ``vae``."""
    from diffusers import WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from vist3a.pipeline.wan import make_scheduler

    tok = micro_tokenizer()
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**MICRO_T2V_CONFIG)
    text = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=128, d_kv=32, d_ff=256, num_layers=2,
                                       num_heads=4, relative_attention_num_buckets=16, dropout_rate=0.0,
                                       pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    return WanPipeline(tokenizer=tok, text_encoder=text, transformer=transformer, vae=vae,
                       scheduler=make_scheduler(flow_shift))


@dataclass
class T2VTrainConfig:
    steps: int = 6000
    batch: int = 16
    lr: float = 3e-4
    warmup: int = 300
    uncond_p: float = 0.1
    flow_shift: float = 5.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# ============================================================================================ latent cache
@torch.no_grad()
def cache_latents(world: str | Path, vae, out: str | Path, split: str = "train", progress: bool = True) -> Path:
    """Encode every clip of ``split`` (posterior mean, float16) into ``out/<split>_NNNNN`` files, one per world
    shard; finished files are kept (resumable)."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = read_manifest(world)
    scenes = MicroScenes(world, split)
    f = m.clip_frames
    with tqdm(total=len(scenes), desc=f"latents ({split})", unit="clip", disable=not progress) as bar:
        for k in range(m.num_shards(split)):
            path = out / f"{split}_{k:05d}.safetensors"
            lo, hi = k * m.shard_size, min((k + 1) * m.shard_size, len(scenes))
            if path.is_file():
                bar.update(hi - lo)
                continue
            means, captions = [], []
            for i in range(lo, hi, 8):
                items = [scenes[j] for j in range(i, min(i + 8, hi))]
                x = torch.stack([it["frames"][:f] for it in items]).permute(0, 2, 1, 3, 4) * 2 - 1
                means.append(vae.encode(x).latent_dist.mean.half())
                captions += [it["caption"] for it in items]
                bar.update(len(items))
            with atomic_path(path) as tmp:
                save_file({"mean": torch.cat(means)}, tmp,
                          metadata={"captions": json.dumps(captions), "first": str(lo)})
    return out


def load_latents(folder: str | Path, split: str = "train") -> tuple[Tensor, list[str]]:
    """(latent means (N, 16, T, h, w) float32, captions) of every cached clip of ``split``, in scene order."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob(f"{split}_*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no cached latents in {folder}; they are made by the t2v stage")
    means, caps = [], []
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            means.append(fh.get_tensor("mean").float())
            caps += json.loads(fh.metadata()["captions"])
    return torch.cat(means), caps


# ============================================================================================ training
def encode_prompts(pipe, prompts: list[str], max_length: int = TEXT_LENGTH) -> Tensor:
    """Text embeddings (B, L, 128) exactly as ``WanPipeline`` computes them at inference (with gradients)."""
    return pipe._get_t5_prompt_embeds(prompt=prompts, max_sequence_length=max_length, device=torch.device("cpu"),
                                      dtype=torch.float32)


def train_t2v(world: str | Path, vae_dir: str | Path, out: str | Path, cfg: T2VTrainConfig, *,
              progress: bool = True, stop_after: int | None = None) -> int:
    """Cache latents, train (or resume) the micro transformer + text encoder, export ``out/pipeline``."""
    from diffusers import AutoencoderKLWan

    from vist3a.pipeline.settings import PROMPT_TEMPLATE, apply_template

    from ..align_drtune import flow_matching_loss
    from ..runtime import cosine_with_warmup

    out = Path(out)
    vae = AutoencoderKLWan.from_pretrained(str(vae_dir)).eval().requires_grad_(False)
    cache_latents(world, vae, out / "latents", progress=progress)
    mean, captions = load_latents(out / "latents")
    zmean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    zstd = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    pipe = build_micro_wan(vae, cfg.seed, cfg.flow_shift)
    pipe.transformer.train()
    pipe.text_encoder.train()
    params = {f"transformer.{n}": p for n, p in pipe.transformer.named_parameters()}
    params.update({f"text_encoder.{n}": p for n, p in pipe.text_encoder.named_parameters()})
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.99))
    sched = cosine_with_warmup(opt, cfg.warmup, cfg.steps, 0.05)
    gen = torch.Generator()

    def step_fn(step: int) -> dict:
        rng = step_rng(cfg.seed, step, "t2v")
        idx = [rng.randrange(len(captions)) for _ in range(cfg.batch)]
        gen.manual_seed(rng.getrandbits(62))
        x0 = (mean[idx] - zmean) / zstd
        prompts = [apply_template(captions[i], PROMPT_TEMPLATE) if rng.random() >= cfg.uncond_p else ""
                   for i in idx]
        text = encode_prompts(pipe, prompts)  # "" encodes like the sampler's empty negative prompt
        loss = flow_matching_loss(pipe.transformer, x0, text, gen, cfg.flow_shift)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        sched.step()
        return {"loss": loss.item(), "grad_norm": gn.item()}

    res = train_loop(out, params=params, optimizer=opt, scheduler=sched, step_fn=step_fn, steps=cfg.steps,
                     config=cfg.to_dict(), desc="micro Wan", progress=progress, stop_after=stop_after)
    if res.step >= cfg.steps:
        from .vae import _save_diffusers

        pipe.transformer.eval()
        pipe.text_encoder.eval()
        _save_diffusers(pipe, out / "pipeline")
        logger.info("micro Wan pipeline exported to %s", out / "pipeline")
    return res.code
