"""``python -m training.micro ship``: put a run's micro models into the package (``vist3a/weights/micro``).

Writes, each model in float16 (loaded back as float32):

* ``vae/``      the micro video VAE (diffusers folder: config.json + diffusion_pytorch_model.safetensors);
* ``anysplat/`` the micro AnySplat (config.json + model.safetensors);
* ``decoder/``  the best layer's finetuned stitched decoder in the ``weights: "lora"`` variant of our decoder format
  (LoRA factors, LoRA-layer biases, DINO tokens and stitching layer on top of ``../anysplat``, the shipped AnySplat,
  whose SHA-256 it records), rebuilt from the finetuning run's last checkpoint;
* ``transformer/``, ``text_encoder/``, ``tokenizer/`` the micro text-to-video model (part 2; when the run has
  ``t2v/pipeline``): diffusers ``WanTransformer3DModel`` and transformers ``UMT5EncoderModel`` folders, the word-level
  tokenizer; ``vocabulary.json`` what the world's captions can say, by kind (``micro_prompt_note`` reads it);
* ``scorer/``   the micro CLIP (the reward model of the align stage; a transformers ``CLIPModel`` folder) and
  ``judge/`` the ground-truth judge (object count, colours, shapes from a render; the report's and the tests'
  measure of text adherence);
* ``lora/``     the DRTune-aligned EMA LoRA of the transformer (PEFT folder, as the published ``vist3a_*_lora_ema``;
  when the run has ``align/lora_ema`` from a finished align stage);
* ``mvdust3r/`` and ``decoder_mvdust3r/`` the micro MVDUSt3R and its best stitched decoder (LoRA on
  ``../mvdust3r``), when the run has the ``mvdust3r`` and ``stitch-mvdust3r`` stages;
* ``README.md`` the model cards (data, command, seed, steps, wall time on the machine that trained them, metrics
  from the run's report).

The LoRA is applied to the float16-rounded shipped AnySplat; tests/test_micro_shipped.py checks that the shipped
decoder still reaches the reported novel-view PSNR.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from vist3a.io.atomic import atomic_write

__all__ = ["default_destination", "micro_vocabulary_by_kind", "model_cards", "mvdust3r_cards", "ship",
           "ship_mvdust3r", "ship_text_to_video", "t2v_cards"]

logger = logging.getLogger("vist3a.micro")


def default_destination() -> Path:
    import vist3a

    return Path(vist3a.__file__).resolve().parent / "weights" / "micro"


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def _staging(dest: Path, name: str) -> Path:
    return Path(tempfile.mkdtemp(dir=dest, prefix=f".{name}.", suffix=".tmp"))


def ship(run: str | Path, to: str | Path | None = None) -> Path:
    """Copy the micro models of ``run`` into ``to`` (default the package's weights folder); see the module
    docstring. Every folder is staged beside its destination and renamed into place."""
    from diffusers import AutoencoderKLWan

    from vist3a.models import from_pretrained
    from vist3a.models.loading import save_pretrained

    from ..runtime import latest_checkpoint
    from .cli import ranking

    run = Path(run)
    dest = Path(to) if to else default_destination()
    dest.mkdir(parents=True, exist_ok=True)
    report = run / "report" / "results.json"
    if not report.is_file():
        raise FileNotFoundError(f"{report} is missing: run `python -m training.micro report --out {run}` first (the "
                                "model cards quote its numbers)")
    best = ranking(run / "search")[0]["layer"]
    ft = run / "finetune" / best
    if latest_checkpoint(ft / "checkpoints") is None:
        raise FileNotFoundError(f"{ft}/checkpoints has no checkpoint; finish the finetune stage first")

    tmp = _staging(dest, "vae")
    AutoencoderKLWan.from_pretrained(str(run / "vae" / "vae")).to(torch.float16).save_pretrained(
        tmp, safe_serialization=True)
    _replace_dir(tmp, dest / "vae")

    tmp = _staging(dest, "anysplat")
    save_pretrained(from_pretrained(run / "model3d" / "anysplat").half(), tmp)
    _replace_dir(tmp, dest / "anysplat")
    finetune_steps = _ship_decoder(dest, "anysplat", "decoder", run / "search", ft, best,
                                   "vist3a micro AnySplat (vist3a/weights/micro/anysplat)")
    t2v = ship_text_to_video(run, dest)
    mvd = ship_mvdust3r(run, dest)
    results = json.loads(report.read_text())
    with atomic_write(dest / "README.md", "w") as fh:
        fh.write(model_cards(run, results, best, finetune_steps) + (t2v_cards(run, results) if t2v else "")
                 + (mvdust3r_cards(run, results, *mvd) if mvd else ""))
    logger.info("shipped the micro models of %s to %s", run, dest)
    return dest


def _ship_decoder(dest: Path, base_part: str, part: str, search: Path, ft: Path, layer: str, base_id: str) -> int:
    """Rebuild a finetuning run's decoder from its last checkpoint on the SHIPPED (float16-rounded) base model
    ``dest/base_part`` and write it as the ``weights: "lora"`` variant into ``dest/part``. Returns its step count."""
    from vist3a.models import from_pretrained
    from vist3a.stitching import StitchedDecoder
    from vist3a.stitching.checkpoint import save_decoder
    from vist3a.stitching.lora import add_lora

    from ..runtime import latest_checkpoint, load_training_state
    from ..train_stitched_decoder import _lora_targets, load_stitching_init

    ckpt = latest_checkpoint(ft / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"{ft}/checkpoints has no checkpoint; finish the finetuning first")
    train_cfg = json.loads((ft / "train_config.json").read_text())
    base = from_pretrained(dest / base_part).float()
    stitching, cut = load_stitching_init(search / f"stitching_layer_{layer}.safetensors", 16)
    student = StitchedDecoder(copy.deepcopy(base), cut, stitching)
    add_lora(student, r=int(train_cfg["lora_rank"]), alpha=float(train_cfg["lora_alpha"]),
             target_modules=_lora_targets(student))
    state = load_training_state(ckpt)
    params = {n: p for n, p in student.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state.tensors))
    if missing:
        raise ValueError(f"{ckpt} lacks trained tensors {missing[:4]}: it is not this decoder's run")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state.tensors[name])
    student.base_id = base_id
    tmp = _staging(dest, part)
    save_decoder(student.eval(), tmp, dtype=torch.float16, video_size=64, base_source=f"../{base_part}")
    _replace_dir(tmp, dest / part)
    return int(state.step)


def ship_mvdust3r(run: Path, dest: Path) -> tuple[str, int] | None:
    """``mvdust3r/`` (the micro MVDUSt3R, float16) and ``decoder_mvdust3r/`` (its best stitched decoder as LoRA on
    ``../mvdust3r``) when the run has them; returns (best layer, finetuning steps) or None."""
    from vist3a.models import from_pretrained
    from vist3a.models.loading import save_pretrained

    from ..runtime import latest_checkpoint
    from .cli import ranking

    root = run / "mvdust3r"
    if not (root / "search" / "ranking.json").is_file():
        logger.warning("%s has no stitched micro MVDUSt3R: not shipping it", run)
        return None
    best = ranking(root / "search")[0]["layer"]
    if latest_checkpoint(root / "finetune" / best / "checkpoints") is None:
        logger.warning("%s: the micro MVDUSt3R's best layer %s is not finetuned: not shipping it", run, best)
        return None
    tmp = _staging(dest, "mvdust3r")
    save_pretrained(from_pretrained(root / "mvdust3r").half(), tmp)
    _replace_dir(tmp, dest / "mvdust3r")
    steps = _ship_decoder(dest, "mvdust3r", "decoder_mvdust3r", root / "search", root / "finetune" / best, best,
                          "vist3a micro MVDUSt3R (vist3a/weights/micro/mvdust3r)")
    return best, steps


def mvdust3r_cards(run: Path, res: dict, best: str, finetune_steps: int) -> str:
    """The model cards of ``mvdust3r/`` and ``decoder_mvdust3r/`` (numbers from the report's MVDUSt3R section)."""
    steps, seconds = _steps(run / "mvdust3r" / "metrics.jsonl")
    _, ft_time = _steps(run / "mvdust3r" / "finetune" / best / "metrics.jsonl")
    m = res.get("mvdust3r")
    if not m:
        raise ValueError("the report has no MVDUSt3R section: run `python -m training.micro report --out "
                         f"{run} --part mvdust3r` before shipping")
    n, pe = m["nvs"], m["point_error"]

    def nv(r: dict) -> str:
        return f"PSNR {r['psnr']:.2f} dB / SSIM {r['ssim']:.3f}"

    return f"""
## mvdust3r/ - micro MVDUSt3R (the second 3D model)

This pack's `vist3a.models.MVDUSt3R` (MV-DUSt3R, one reference view): CroCo encoder width 128 x 6 blocks, decoder
width 128 x 4 blocks, patch 16 on 64x64 frames (4x4 tokens), one learnt vector per view position of the ordered
9-frame clip added to the decoder tokens (`view_embeddings: 9`, not in the released models: without it the
non-reference views collapsed to one mean pointmap, see `docs/micro_world.md`), pointmap head with a 16-channel skip
branch, Gaussian head (one Gaussian per pixel, colours from the input frames), scale clip (1e-3, 0.05) mean distances (released:
(1e-4, 4e-3), sized for 224 px), {m['params_m']:.2f}M parameters. Trained {steps} steps from scratch
(`python -m training.micro mvdust3r`; one scene of 9 views per step; DUSt3R's confidence-aware pointmap regression in
view 0's frame against the ground truth, and from step 300 the photometric L1 + SSIM of its Gaussians rendered at the
true cameras of 1 input and 1 held-out view; AdamW 3e-4, cosine), {_fmt_min(seconds)}. On {m['scenes']} held-out
scenes at 64 px: novel-view synthesis **{nv(n['model'])}** (cameras estimated from its pointmap), normalised point
error **{pe['model']:.3f}**.

## decoder_mvdust3r/ - micro stitched MVDUSt3R (`--preset micro --micro-model mvdust3r`, ComfyUI `micro-mvdust3r`)

The micro MVDUSt3R cut at **{best}** (best of its 6 encoder blocks in the closed-form search) and fed from the micro
VAE's latents by one Conv3d stitching layer (`conv3d_k5x3x3_o128_s1x2x2_p2x1x1`: the 8x8 latent gives its 4x4 token
grid), finetuned {finetune_steps} steps with LoRA (r 16, alpha 8) against the micro MVDUSt3R's outputs on the real
frames (`python -m training.micro stitch-mvdust3r`), {_fmt_min(ft_time)}. Stored as LoRA on `../mvdust3r`. Gives
Gaussians and a pointmap. Held-out, from latents: **{nv(n['stitched'])}** (colours from the input frames),
{nv(n['stitched_decoded'])} (colours from the VAE-decoded frames), point error {pe['stitched']:.3f}.
"""


def micro_vocabulary_by_kind() -> dict[str, list[str]]:
    """What the world's captions can say, by kind; ``words`` is every word (``vocabulary.json``)."""
    from . import world as W

    return {"shapes": list(W.SHAPES), "colours": list(W.COLOURS), "sizes": list(W.SIZES), "grounds": list(W.GROUNDS),
            "skies": list(W.SKIES), "words": W.vocabulary()}


def ship_text_to_video(run: Path, dest: Path) -> bool:
    """Ship the micro Wan (transformer, text encoder, tokenizer; float16), ``vocabulary.json`` and, when the align
    stage finished, its EMA LoRA. False (nothing written) when the run has no ``t2v/pipeline``."""
    from diffusers import WanTransformer3DModel
    from transformers import UMT5EncoderModel

    pipe = run / "t2v" / "pipeline"
    if not (pipe / "model_index.json").is_file():
        logger.warning("%s has no micro text-to-video model: shipping the decoder only", run)
        return False
    tmp = _staging(dest, "transformer")
    WanTransformer3DModel.from_pretrained(str(pipe / "transformer")).to(torch.float16).save_pretrained(
        tmp, safe_serialization=True)
    _replace_dir(tmp, dest / "transformer")
    tmp = _staging(dest, "text_encoder")
    UMT5EncoderModel.from_pretrained(str(pipe / "text_encoder")).to(torch.float16).save_pretrained(
        tmp, safe_serialization=True)
    _replace_dir(tmp, dest / "text_encoder")
    tmp = _staging(dest, "tokenizer")
    for f in (pipe / "tokenizer").iterdir():
        shutil.copy2(f, tmp / f.name)
    _replace_dir(tmp, dest / "tokenizer")
    with atomic_write(dest / "vocabulary.json", "w") as fh:
        json.dump(micro_vocabulary_by_kind(), fh, indent=1)
    from safetensors.torch import load_file, save_file
    from transformers import CLIPModel

    clip = run / "scorer" / "clip"
    if (clip / "config.json").is_file():
        tmp = _staging(dest, "scorer")
        for f in clip.iterdir():  # tokenizer and image processor files
            if f.is_file() and f.suffix != ".safetensors":
                shutil.copy2(f, tmp / f.name)
        CLIPModel.from_pretrained(str(clip)).to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        _replace_dir(tmp, dest / "scorer")
    else:
        logger.warning("%s is missing: not shipping the micro CLIP", clip)
    judge = run / "judge" / "judge.safetensors"
    if judge.is_file():
        tmp = _staging(dest, "judge")
        save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(judge).items()},
                  str(tmp / "judge.safetensors"))
        _replace_dir(tmp, dest / "judge")
    else:
        logger.warning("%s is missing: not shipping the judge", judge)
    lora = run / "align" / "lora_ema"
    if (lora / "adapter_model.safetensors").is_file() and (run / "align" / "done").is_file():
        tmp = _staging(dest, "lora")
        for f in lora.iterdir():
            shutil.copy2(f, tmp / f.name)
        _replace_dir(tmp, dest / "lora")
    else:
        logger.warning("%s has no finished align stage: the micro Wan ships without its DRTune LoRA", run)
        shutil.rmtree(dest / "lora", ignore_errors=True)
    return True


def _steps(path: Path) -> tuple[int | None, float | None]:
    if not path.is_file():
        return None, None
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return (lines[-1]["step"], lines[-1].get("time")) if lines else (None, None)


def _fmt_min(s) -> str:
    return "unknown" if not s else f"{s / 60:.0f} min"


def model_cards(run: Path, res: dict, best: str, finetune_steps: int) -> str:
    """The README.md of the shipped folder (three model cards)."""
    vae_steps, vae_time = _steps(run / "vae" / "metrics.jsonl")
    m3_steps, m3_time = _steps(run / "model3d" / "metrics.jsonl")
    _, ft_time = _steps(run / "finetune" / best / "metrics.jsonl")
    nvs = res["nvs"]
    lp = " / LPIPS {:.3f}".format
    world = res.get("times", {}).get("world", {})

    def nv(r: dict) -> str:
        return f"PSNR {r['psnr']:.2f} dB / SSIM {r['ssim']:.3f}" + (lp(r["lpips"]) if "lpips" in r else "")

    return f"""# Micro-world models (shipped with vist3a)

Small models trained on the **micro world** (`training/micro/`): seeded scenes of 1-3 coloured primitives (sphere,
cube, cone, cylinder, torus; 8 colours; 2 sizes) on a textured ground under a sky, rendered with `vist3a.render`
as 9-frame 64x64 clips from a camera orbiting at constant distance. 4000 training scenes, 200 held-out test scenes
(the metrics below are measured on the first {res['scenes']}), 100 "novel" scenes with colour x shape pairs never trained on. World generation: {_fmt_min(
world.get("wall_s"))} wall time. Everything was trained on a 2-core CPU (no GPU), seed 0, by

```
python -m training.micro all --out runs/micro     # resumable; then
python -m training.micro ship --out runs/micro    # writes this folder
```

Weights are stored in float16 and loaded as float32. They know the micro world only; on other images they produce
nonsense. Licence: that of this package.

## vae/ - micro video VAE

diffusers `AutoencoderKLWan` (base width 16, dim_mult [1, 2, 2, 2], 1 res block, 16 latent channels; 8x spatial,
4x temporal compression: 9 x 64 x 64 -> 16 x 3 x 8 x 8), {res['params']['vae'] / 1e6:.2f}M parameters. Trained
{vae_steps} steps (batch 4 clips, L1 + MSE + 1e-4 KL, AdamW 5e-4, cosine), {_fmt_min(vae_time)}.
`latents_mean` / `latents_std` in its config are measured on 256 training clips.
Held-out reconstruction PSNR: **{res['vae']['psnr']:.2f} dB** ({res['vae']['clips']} clips, posterior mean).

## anysplat/ - micro AnySplat (the "pretrained 3D model")

This pack's `vist3a.models.AnySplat`, width 128, 6 DINO blocks + 6 frame/global pairs, 56x56 frames (4x4 tokens),
SH degree 1, one camera/register token entry per frame (`frame_tokens: 9`; the published AnySplat has 2 entries,
first frame and the rest, and with 2 the micro camera head collapsed to the mean orbit pose: see
`docs/micro_world.md`), {res['params']['anysplat'] / 1e6:.2f}M parameters. Trained {m3_steps} steps from scratch (one
scene of 9 views per step; camera + depth losses against the ground truth from the first step, photometric L1 + SSIM
of its Gaussians rendered at 1 context and 1 held-out target view per step after a 400-step warm-up; AdamW 3e-4,
cosine), {_fmt_min(m3_time)}. Novel-view synthesis on the held-out scenes (9 context views, 4 novel views each, context-
aligned ground-truth poses): **{nv(nvs['anysplat'])}**.

## decoder/ - micro stitched decoder (`--preset micro`)

The micro AnySplat cut at **{best}** (the layer the closed-form search ranked best) and fed from the micro VAE's
latents by one Conv3d stitching layer (`conv3d_k5x3x3_o128_s1x2x2_p2x1x1`, initialised in closed form), then
finetuned {finetune_steps} steps with LoRA (r 16, alpha 8) against the micro AnySplat's own outputs on the real
frames (no labels; `training.train_stitched_decoder`), {_fmt_min(ft_time)}. Stored as LoRA on `../anysplat`
(`weights: "lora"` in decoder_config.json; the base's SHA-256 is checked on load).
Held-out novel-view synthesis from latents: **{nv(nvs['stitched'])}** (heads reading the input frames), {
nv(nvs['stitched_decoded'])} (heads reading the VAE-decoded frames).

The full report, with the layer ranking, initialisation and noise-robustness measurements: `docs/micro_world.md`.
"""


def t2v_cards(run: Path, res: dict) -> str:
    """Model cards of the micro text-to-video model and its DRTune LoRA (appended to README.md)."""
    t2v_steps, t2v_time = _steps(run / "t2v" / "metrics.jsonl")
    align_steps, align_time = _steps(run / "align" / "metrics.jsonl")
    t = res.get("t2v")

    def row(when: str) -> str:
        r = t[when]["test"]["stitched"]
        n = t[when]["novel"]["stitched"]
        return (f"{when} DRTune: object count right {100 * r['count']:.0f} % / colour F1 {r['colour_f1']:.2f} / "
                f"shape F1 {r['shape_f1']:.2f} on held-out prompts; {100 * n['count']:.0f} % / "
                f"{n['colour_f1']:.2f} / {n['shape_f1']:.2f} on prompts with unseen colour x shape pairs")

    measured = (f"Judged against the world's ground truth (not by the reward model), stitched decoder, "
                f"{t['before']['test']['prompts']} + {t['before']['novel']['prompts']} prompts, one seed each:\n"
                f"- {row('before')};\n- {row('after')}.\n") if t else "Not measured yet (no report part 2).\n"
    return f"""
## transformer/, text_encoder/, tokenizer/ - micro text-to-video model (`vist3a generate --preset micro`)

diffusers `WanTransformer3DModel` (6 layers, width 256) and a small transformers `UMT5EncoderModel`, with a
word-level tokenizer over the world's vocabulary (`vocabulary.json`; built locally, nothing downloaded), trained
together from scratch by flow matching on the micro VAE's latent means of the 4000 training clips, captions in
the published camera-orbit prompt template, 10 % empty captions for classifier-free guidance; {t2v_steps} steps,
{_fmt_min(t2v_time)}. Sampled through diffusers' `WanPipeline` with the VIST3A UniPC scheduler, 20 steps, CFG 5,
empty negative prompt.

## lora/ - DRTune-aligned EMA LoRA of the micro transformer

`training.align_drtune` (the paper's recipe) on the micro models: rewards = the micro CLIP (`training/micro/scorer.py`)
on decoded frames and on renders of the stitched decoder's Gaussians, plus 3D consistency; {align_steps} steps,
{_fmt_min(align_time)}. PEFT folder like the published `vist3a_*_lora_ema` (loads with `--lora` and in ComfyUI).

{measured}"""
