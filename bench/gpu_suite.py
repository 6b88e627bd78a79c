"""One-shot GPU suite: speed and peak VRAM of text -> 3D where users feel it, in ONE command (<= 8 minutes on one
GPU). Full-size models with RANDOM weights, built locally (nothing is downloaded; timings do not depend on weight
values): Wan 2.1 T2V 1.3B transformer, UMT5-XXL text encoder, Wan 2.1 VAE, stitched AnySplat (released stitching
layer at enc_blocks_2), at the published settings (512x512, 13 frames, 50 UniPC steps, CFG 7.5).

Configurations (each timed per stage -- text encoding, denoising, VAE decode, stitched decode, Gaussian export -- and
end to end, with the peak VRAM of each stage):

* ``released`` -- the released pipeline's choices: everything Wan in fp16 called through diffusers' ``WanPipeline``
  (two transformer forwards per step, as the official script runs it), the decoder in fp32 (as the official loader
  casts it), Gaussians written as .ply;
* ``default``  -- this pack's default: ``TextTo3DPipeline.__call__`` (same dtypes) + ``save_gaussians``;
* ``fast``     -- ``TextTo3DPipeline(..., fast=True)`` (``vist3a generate --fast``: batched CFG, First Block Cache,
  30 steps, decoder under bf16 autocast); its latent / frame difference against ``default`` on the same seed is
  reported too.

Configurations run interleaved (``--repeats`` rounds, after one warm-up round); tables give min / median and the
ratios against ``released``. Then: gsplat (CUDA) vs this pack's PyTorch rasteriser on CUDA (1M Gaussians, 1024^2,
when gsplat is installed and its kernels build), the fast-path variants of ``bench/bench_fast_path.py`` at full
size (speed and quality vs the default on the same seeds), and two training steps with the pack's own step code:
one DRTune step (``training.align_drtune.DRTuneTrainer.train_step``, official recipe, at 512x512 and 13 frames or,
when that does not fit, the largest size of :data:`DRTUNE_LADDER` that does; the JSON / markdown say which) with
its seconds and peak memory, and one stitched-decoder finetuning step (``training.train_stitched_decoder.Trainer.
train_step``: teacher + VAE encode + stitched decoder + loss + backward + AdamW) with its clips/s and peak memory at
13 and 21 views.

Writes ``<out>/gpu_suite.json`` and ``<out>/gpu_suite.md`` and prints the tables.

    python bench/gpu_suite.py                       # CUDA, full size (the measurement)
    python bench/gpu_suite.py --tiny                # CPU, tiny models and sizes: checks that the suite runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fast_path import VARIANTS, compare, psnr, rel
from bench_fast_path import table as fast_table

from vist3a.io import save_gaussians
from vist3a.pipeline import (
    TextTo3DPipeline,
    apply_template,
    decode_frames,
    model_size,
    to_raw_latent,
)
from vist3a.pipeline.output import run_decoder
from vist3a.pipeline.wan import resize_frames

STAGES = ("text_encoding", "denoising", "vae_decode", "stitched_decode", "gaussian_export")
PROMPT = "a red sports car"


# ============================================================================================ models
def build_full_size(device: torch.device):
    """Wan 2.1 1.3B (fp16) + UMT5-XXL (fp16) + Wan VAE (fp16) + stitched AnySplat (fp32), random weights, on
    ``device``; the published settings (built as bench_pipeline.py builds them)."""
    from bench_pipeline import full_size_decoder, full_size_wan

    return TextTo3DPipeline(full_size_wan(device), full_size_decoder(device, torch.float32))


def build_tiny(device: torch.device):
    return TextTo3DPipeline.tiny(seed=0).to(device)


# ============================================================================================ measurement
class Stages:
    """Wraps the pipeline's models to time each stage (CUDA-synchronised) and record its peak memory."""

    def __init__(self, pipe: TextTo3DPipeline, device: torch.device):
        self.device = device
        self.events: list[tuple[str, float, float, float]] = []  # (stage, start, end, peak GB)
        self._patch(pipe.wan.text_encoder, "forward", "text_encoding")
        self._patch(pipe.wan.vae, "decode", "vae_decode")
        self._patch(pipe.decoder, "predict", "stitched_decode")

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _reset_peak(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _peak(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / 1024**3 if self.device.type == "cuda" else float("nan")

    def _patch(self, obj, attr: str, stage: str) -> None:
        inner = getattr(obj, attr)

        def wrapped(*args, **kwargs):
            self._sync()
            self._reset_peak()
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            self._sync()
            self.events.append((stage, t0, time.perf_counter(), self._peak()))
            return out

        setattr(obj, attr, wrapped)

    @contextlib.contextmanager
    def stage(self, name: str):
        self._sync()
        self._reset_peak()
        t0 = time.perf_counter()
        yield
        self._sync()
        self.events.append((name, t0, time.perf_counter(), self._peak()))

    def run(self, fn) -> dict:
        """Call ``fn`` and return {stage: seconds, stage_peak_gb...}; denoising = from the end of the last text
        encoding to the start of the VAE decode (transformer forwards + scheduler)."""
        self.events.clear()
        self._sync()
        self._reset_peak()
        t0 = time.perf_counter()
        fn()
        self._sync()
        total = time.perf_counter() - t0
        peak_total = self._peak()
        out = {"end_to_end": total, "peak_gb": peak_total}
        for s in STAGES:
            ev = [e for e in self.events if e[0] == s]
            out[s] = sum(e[2] - e[1] for e in ev)
            out[s + "_peak_gb"] = max((e[3] for e in ev), default=float("nan"))
        text_end = max(e[2] for e in self.events if e[0] == "text_encoding")
        vae_start = min(e[1] for e in self.events if e[0] == "vae_decode")
        out["denoising"] = vae_start - text_end
        out["denoising_peak_gb"] = float("nan")  # filled by the caller's denoise-only peak measurement
        return out


def released_run(pipe: TextTo3DPipeline, settings, seed: int, out_file: Path, stages: Stages):
    """The released script's order: WanPipeline(output_type="latent") in fp16, un-normalise, VAE decode, resize
    to 448, fp32 stitched decoder, .ply export."""
    wan, dec = pipe.wan, pipe.decoder
    text = apply_template(PROMPT, settings.prompt_template)
    latent = wan(prompt=text, negative_prompt=settings.negative_prompt, height=settings.height, width=settings.width,
                 num_frames=settings.num_frames, num_inference_steps=settings.num_inference_steps,
                 guidance_scale=settings.guidance_scale, generator=torch.Generator("cpu").manual_seed(seed),
                 output_type="latent", max_sequence_length=settings.max_sequence_length).frames
    raw = to_raw_latent(wan.vae, latent.to(wan.vae.dtype))
    frames = resize_frames(decode_frames(wan.vae, raw), model_size(settings.height, settings.width))
    gaussians = run_decoder(dec, raw.float(), frames)[0]
    with stages.stage("gaussian_export"):
        save_gaussians(out_file, gaussians)
    return latent


def pack_run(pipe: TextTo3DPipeline, settings, seed: int, out_file: Path, stages: Stages, fast: bool):
    scene = pipe(PROMPT, seed=seed, progress=False, fast=fast or None, num_frames=settings.num_frames,
                 height=settings.height, width=settings.width, num_inference_steps=settings.num_inference_steps,
                 guidance_scale=settings.guidance_scale)
    with stages.stage("gaussian_export"):
        save_gaussians(out_file, scene.gaussians)
    return scene


def denoise_peak(pipe: TextTo3DPipeline, settings, device, fast: bool) -> float:
    """Peak VRAM of the denoising loop alone (two steps are enough: the peak does not grow with steps)."""
    if device.type != "cuda":
        return float("nan")
    from vist3a.pipeline.fast import FAST, sample_latent

    text = apply_template(PROMPT, settings.prompt_template)
    emb = pipe.wan.encode_prompt(text, settings.negative_prompt, do_classifier_free_guidance=True,
                                 max_sequence_length=settings.max_sequence_length, device=device)
    del emb
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    # the text encoder's activations are gone; what remains resident is the models
    kw = {"height": settings.height, "width": settings.width, "num_frames": settings.num_frames,
          "num_inference_steps": 2, "guidance_scale": settings.guidance_scale,
          "generator": torch.Generator("cpu").manual_seed(0), "max_sequence_length": settings.max_sequence_length}
    if fast:
        sample_latent(pipe.wan, text, settings.negative_prompt, options=FAST, progress=False, **kw)
    else:
        pipe.wan(prompt=text, negative_prompt=settings.negative_prompt, output_type="latent", **kw)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 1024**3


def pipeline_section(pipe, settings, device, repeats: int, out_dir: Path, warm_up: bool = True) -> dict:
    stages = Stages(pipe, device)
    pipe.wan.set_progress_bar_config(disable=True)
    outputs = {}

    def keep(name, out):
        outputs[name] = out

    runs = {
        "released": lambda i: keep("released", released_run(pipe, settings, 0, out_dir / f"released_{i}.ply",
                                                            stages)),
        "default": lambda i: keep("default", pack_run(pipe, settings, 0, out_dir / f"default_{i}.ply", stages,
                                                      fast=False)),
        "fast": lambda i: keep("fast", pack_run(pipe, settings, 0, out_dir / f"fast_{i}.ply", stages, fast=True)),
    }
    if warm_up:  # kernels, allocator, lazy imports
        warm = settings.replace(num_inference_steps=2)
        released_run(pipe, warm, 0, out_dir / "warm.ply", stages)
        pack_run(pipe, warm, 0, out_dir / "warm.ply", stages, fast=True)
    results = {k: [] for k in runs}
    for i in range(repeats):
        for name, fn in runs.items():  # interleaved
            results[name].append(stages.run(lambda fn=fn, i=i: fn(i)))
            print(f"  round {i + 1}/{repeats} {name}: {results[name][-1]['end_to_end']:.2f} s", flush=True)
    peaks = {"released": denoise_peak(pipe, settings, device, False),
             "default": denoise_peak(pipe, settings, device, False),
             "fast": denoise_peak(pipe, settings, device, True)}
    for name, rs in results.items():
        for r in rs:
            r["denoising_peak_gb"] = peaks[name]
    # quality of the fast path against the default on the same seed (the last round's outputs)
    ref, fast = outputs["default"], outputs["fast"]
    quality = {"latent_rel": rel(fast.latent, ref.latent),
               "frames_psnr_db": psnr(fast.frames, ref.frames) if fast.frames is not None else None,
               "means_rel": rel(fast.gaussians.means, ref.gaussians.means)}
    # the pack's default samples what the released pipeline samples (same call, same seed)
    released_raw = to_raw_latent(pipe.wan.vae, outputs["released"].to(pipe.wan.vae.dtype)).float().cpu()
    quality["default_vs_released_latent_rel"] = rel(ref.latent, released_raw)
    return {"runs": results, "fast_quality_vs_default": quality}


def pipeline_table(section: dict) -> str:
    runs = section["runs"]
    cols = [*STAGES, "end_to_end"]
    lines = ["| config | " + " | ".join(f"{c} s (min / med)" for c in cols) + " | ratio vs released (min / med) | "
             "peak VRAM GB (denoise / VAE / decoder / overall) |",
             "| --- |" + " --- |" * (len(cols) + 2)]
    base = runs["released"]
    bmin = min(r["end_to_end"] for r in base)
    bmed = statistics.median(r["end_to_end"] for r in base)
    for name, rs in runs.items():
        cells = []
        for c in cols:
            v = [r[c] for r in rs]
            cells.append(f"{min(v):.3f} / {statistics.median(v):.3f}")
        e = [r["end_to_end"] for r in rs]
        last = rs[-1]
        peaks = " / ".join("n/a" if last[k] != last[k] else f"{last[k]:.2f}"
                           for k in ("denoising_peak_gb", "vae_decode_peak_gb", "stitched_decode_peak_gb", "peak_gb"))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {bmin / min(e):.2f}x / "
                     f"{bmed / statistics.median(e):.2f}x | {peaks} |")
    q = section["fast_quality_vs_default"]
    lines.append("")
    lines.append(f"fast vs default, same seed: latent rel. diff {q['latent_rel']:.3e}, frames PSNR "
                 f"{q['frames_psnr_db']:.1f} dB, Gaussian means rel. diff {q['means_rel']:.3e}; default vs released "
                 f"latent rel. diff {q['default_vs_released_latent_rel']:.1e}")
    return "\n".join(lines)


def rasteriser_section(device, tiny: bool, repeats: int) -> dict:
    """gsplat vs our PyTorch rasteriser on the same device (1M Gaussians at 1024^2 on CUDA; tiny: 2k at 64^2)."""
    from bench_render import random_scene

    from vist3a.cameras import Cameras
    from vist3a.render import render

    num, size = (2_000, 64) if tiny else (1_000_000, 1024)
    g = random_scene(num, 3, str(device))
    cams = Cameras.orbit(1, radius=3.0, width=size, height=size, device=device)
    backends = ["torch"]
    if device.type == "cuda":
        try:
            import gsplat  # noqa: F401

            render(random_scene(100, 3, str(device)), cams, backend="gsplat")
            backends.insert(0, "gsplat")
        except Exception as err:  # noqa: BLE001 -- not installed or its kernels do not build: measured without it
            print(f"  gsplat unavailable ({type(err).__name__}: {err}); our rasteriser only")
    times = {b: [] for b in backends}
    peaks = {}
    outs = {}
    for b in backends:
        outs[b] = render(g, cams, backend=b).rgb  # warm-up
    for _ in range(repeats):
        for b in backends:  # interleaved
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            render(g, cams, backend=b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                peaks[b] = torch.cuda.max_memory_allocated(device) / 1024**3
            times[b].append(time.perf_counter() - t0)
    res = {"num": num, "size": size, "times": times, "peak_gb": peaks}
    if "gsplat" in outs:
        res["max_abs_diff"] = float((outs["gsplat"] - outs["torch"]).abs().max())
    return res


def rasteriser_table(r: dict) -> str:
    lines = [f"{r['num']} Gaussians (SH 3), {r['size']}x{r['size']}, one view", "",
             "| backend | min s | median s | peak VRAM GB |", "| --- | --- | --- | --- |"]
    for b, t in r["times"].items():
        p = r["peak_gb"].get(b)
        lines.append(f"| {b} | {min(t):.4f} | {statistics.median(t):.4f} | {'n/a' if p is None else f'{p:.2f}'} |")
    if "gsplat" in r["times"]:
        t, g = r["times"]["torch"], r["times"]["gsplat"]
        lines.append(f"\nours / gsplat: {min(t) / min(g):.2f}x (min), {statistics.median(t) / statistics.median(g):.2f}x"
                     f" (median); max |difference| {r['max_abs_diff']:.2e}")
    return "\n".join(lines)


def offload_section(pipe, settings, device) -> dict:
    """Peak VRAM of the README's offload modes (a 2-step run: the peak does not grow with steps), each from a
    fresh CPU placement. CUDA only (diffusers' offload hooks move models between the CPU and the GPU)."""
    res = {}
    short = settings.replace(num_inference_steps=2)
    for mode, decoder_dtype in (("none", torch.float32), ("model", torch.float32), ("sequential", torch.float32),
                                ("sequential", torch.bfloat16)):
        name = mode if mode == "none" else f"{mode} (decoder {str(decoder_dtype).split('.')[-1]})"
        with contextlib.suppress(Exception):  # no hooks yet
            pipe.wan.remove_all_hooks()
        pipe.wan.to("cpu")
        pipe.decoder.to(device="cpu", dtype=decoder_dtype)
        pipe._offload_device = None
        torch.cuda.empty_cache()
        if mode == "none":
            pipe.to(device)
        elif mode == "model":
            pipe.enable_model_cpu_offload(device)
        else:
            pipe.enable_sequential_cpu_offload(device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        pipe(PROMPT, seed=0, progress=False, num_inference_steps=2, num_frames=short.num_frames,
             height=short.height, width=short.width)
        torch.cuda.synchronize(device)
        res[name] = {"peak_gb": torch.cuda.max_memory_allocated(device) / 1024**3,
                     "seconds_2_steps": time.perf_counter() - t0}
        print(f"  offload {name}: peak {res[name]['peak_gb']:.2f} GB", flush=True)
    return res


def offload_table(r: dict) -> str:
    lines = ["| offload mode | peak VRAM GB (whole run) | seconds (2 steps) |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v['peak_gb']:.2f} | {v['seconds_2_steps']:.1f} |" for k, v in r.items()]
    return "\n".join(lines)


# ============================================================================================ training steps
#: DRTune sizes tried in order until one step fits: (pixels, frames, gradient checkpointing); the first is published
DRTUNE_LADDER = ((512, 13, False), (512, 13, True), (384, 13, True), (256, 13, True), (256, 5, True))
DRTUNE_ROLLOUT_STEPS = 30  # T of the measured step (the plan draws T in 10..50; only K = 2 + the last keep a graph)
FINETUNE_VIEWS = (13, 21)  # the inference frame count and the largest count the finetuning draws


def _training(name: str):
    """``training.<name>`` of this repository (bench/ is run as a script, so the repository root may be missing)."""
    import importlib

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(f"training.{name}")


def _peak_gb(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else float("nan")


def _reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _free(device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def full_size_official_scorers(device: torch.device):
    """The released reward's two scorers at full size with RANDOM weights: PickScore = transformers ``CLIPModel``
    ViT-H/14 (vision 1280 x 32 layers, text 1024 x 24 layers, projection 1024) at 224 px, DFN5B = the same
    architecture at 378 px (through the transformers path of ``DfnClipScorer``); the character tokenizer of the
    other random models stands in for CLIP's BPE (77 tokens either way)."""
    from transformers import CLIPConfig, CLIPModel

    from vist3a.pipeline.presets import tiny_tokenizer

    rewards = _training("rewards")
    tok = tiny_tokenizer()
    text = {"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
            "num_attention_heads": 16, "max_position_embeddings": 77, "pad_token_id": 0, "bos_token_id": 1,
            "eos_token_id": 1}
    out = []
    for image_size in (224, 378):
        vision = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
                  "image_size": image_size, "patch_size": 14}
        with torch.device(device):
            out.append(CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=1024)))
    return rewards.PickScoreScorer(out[0], tok, 224), rewards.DfnClipScorer(out[1], tok, 378)


def drtune_trainer(device: torch.device, tiny: bool, size: int, frames: int, checkpointing: bool, rollout: int):
    """A ``training.align_drtune.DRTuneTrainer`` as ``python -m training.align_drtune`` builds it with its defaults
    (recipe ``official``: LoRA r 8 on the fp32 Wan transformer, gen batch 4, the official reward on every
    predicted camera) but T fixed to ``rollout``; tiny: ``--preset tiny``; else full-size random models
    (:func:`full_size_wan` in fp32, the stitched AnySplat in fp32, :func:`full_size_official_scorers`, synthetic
    clips for the flow-matching loss)."""
    ad = _training("align_drtune")
    runtime = _training("runtime")
    argv = ["--output", "unused", "--prompt", PROMPT, "--t-min", str(rollout), "--t-max", str(rollout),
            "--frames", str(frames), "--height", str(size), "--width", str(size)]
    if tiny:  # the smallest step that still runs every part: 1 data clip, 2 rendered views
        argv += ["--preset", "tiny", "--gen-batch-size", "1", "--views", "2"]
    if checkpointing:
        argv.append("--gradient-checkpointing")
    args = ad.build_parser().parse_args(argv)
    config = ad.config_from_args(args)
    ctx = runtime.DistContext(rank=0, world_size=1, local_rank=0, device=device, backend=None)
    if tiny:
        pipe, decoder, rewards, dataset = ad._build(args, config, ctx)
    else:
        from bench_pipeline import full_size_decoder, full_size_wan

        rw = _training("rewards")
        data = _training("data")
        pipe = full_size_wan(device)
        for part in (pipe.transformer, pipe.text_encoder, pipe.vae):
            part.to(torch.float32)  # the CLI's default --dtype float32
        decoder = full_size_decoder(device, torch.float32)
        rewards = rw.build_rewards(rw.parse_reward_spec(ad.OFFICIAL_REWARDS),
                                   official=full_size_official_scorers(device))
        dataset = data.SyntheticClips(64, views=frames, vae_size=size, model_size=size // 16 * 14, seed=0)
    return ad.DRTuneTrainer(pipe, rewards, [PROMPT], config, ctx, decoder=decoder, dataset=dataset)


def drtune_section(device: torch.device, tiny: bool) -> dict:
    """One DRTune step (``DRTuneTrainer.train_step``: rollout with T UniPC steps, K = 2 + the last with gradients,
    the official reward through VAE decode + stitched decoder + renders + both scorers, the flow-matching loss on 4
    clips, backward, clip, AdamW, EMA): seconds and peak memory. CUDA: sizes of :data:`DRTUNE_LADDER` in order
    until one fits (the out-of-memory ones are listed); one warm-up step, then the measured one. Tiny (CPU): 64 px,
    5 frames, T = 2, one data clip, 2 rendered views, the measured step only."""
    ladder = ((64, 5, False),) if tiny else DRTUNE_LADDER
    rollout = 2 if tiny else DRTUNE_ROLLOUT_STEPS
    failed = []
    for size, frames, ckpt in ladder:
        oom = False
        try:
            trainer = drtune_trainer(device, tiny, size, frames, ckpt, rollout)
            resident = torch.cuda.memory_allocated(device) / 1024**3 if device.type == "cuda" else float("nan")
            first = None
            if not tiny:
                _reset_peak(device)
                t0 = time.perf_counter()
                trainer.train_step()
                torch.cuda.synchronize(device)
                first = time.perf_counter() - t0
            _reset_peak(device)
            t0 = time.perf_counter()
            res = trainer.train_step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
        except torch.cuda.OutOfMemoryError:
            oom = True
        if oom:  # outside the except block: its traceback no longer holds the step's tensors
            trainer = None
            _free(device)
            failed.append({"size": size, "frames": frames, "gradient_checkpointing": ckpt})
            print(f"  DRTune {size}x{size}, {frames} frames, checkpointing {ckpt}: out of memory", flush=True)
            continue
        out = {"size": size, "frames": frames, "gradient_checkpointing": ckpt, "rollout_steps": rollout,
               "grad_steps": res.grad_steps, "seconds": seconds, "first_step_s": first, "peak_gb": _peak_gb(device),
               "resident_gb": resident, "published_size": (size, frames) == (512, 13), "tiny": tiny,
               "out_of_memory": failed,
               "loss": res.loss}
        del trainer
        _free(device)
        return out
    return {"error": "no size of the ladder fits", "out_of_memory": failed}


def finetune_trainer(device: torch.device, tiny: bool, views: int, checkpointing: bool, out_dir: Path):
    """A ``training.train_stitched_decoder.Trainer`` as the CLI builds it with its defaults (recipe ``official``:
    LoRA r 64 on the kept AnySplat, stitching layer trained, bf16 weights / autocast on CUDA with fp32 heads, batch
    1) for ``views`` frames of synthetic clips; tiny: ``--preset tiny``; else the full-size random AnySplat (the
    teacher and the stitched student cut at enc_blocks_2) and the random Wan 2.1 VAE, 512 -> 448 px."""
    from unittest import mock

    tsd = _training("train_stitched_decoder")
    runtime = _training("runtime")
    argv = ["--synthetic", "2", "--views", str(views), "--output", str(out_dir / "finetune_scratch"),
            "--steps", "1000", "--warmup", "0"]
    argv += ["--preset", "tiny"] if tiny else ["--model-path", "random-full-size", "--vae-path", "random-full-size"]
    if checkpointing:
        argv.append("--gradient-checkpointing")
    args = tsd.build_parser().parse_args(argv)
    tsd._check_args(args)
    ctx = runtime.DistContext(rank=0, world_size=1, local_rank=0, device=device, backend=None)
    if tiny:
        return tsd.Trainer(args, ctx)
    from diffusers import AutoencoderKLWan

    from vist3a.models import AnySplat
    from vist3a.stitching.vae import WanVAE

    def base(_args):
        with torch.device(device):
            return AnySplat()

    def vae(_args, dev):
        with torch.device(dev):
            model = AutoencoderKLWan().eval().requires_grad_(False)  # the published Wan 2.1 VAE config
        return WanVAE(model, sample=True, generator=torch.Generator(device=dev))

    with mock.patch.object(tsd, "_load_base", base), mock.patch.object(tsd, "_build_vae", vae):
        return tsd.Trainer(args, ctx)


def finetune_section(device: torch.device, tiny: bool, repeats: int, out_dir: Path) -> list[dict]:
    """One stitched-decoder finetuning step (``Trainer.train_step``: VAE encode, frozen teacher on the real frames,
    stitched student on the latents, the official loss, backward, clip, AdamW) per view count: min / median
    seconds over ``repeats`` steps after one warm-up step (data loading excluded: the batches are built first),
    clips/s = batch / median seconds, peak memory. On out-of-memory: again with gradient checkpointing."""
    rows = []
    for views in ((5,) if tiny else FINETUNE_VIEWS):
        for ckpt in (False, True):
            oom = False
            try:
                trainer = finetune_trainer(device, tiny, views, ckpt, out_dir)
                batches = [trainer.batches[i] for i in range(repeats + 1)]
                times = []
                for i, batch in enumerate(batches):
                    if i == 1:
                        _reset_peak(device)
                    t0 = time.perf_counter()
                    trainer.train_step(batch)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    if i >= 1:
                        times.append(time.perf_counter() - t0)
                batch_size = int(batches[0]["vae"].shape[0])
            except torch.cuda.OutOfMemoryError:
                oom = True
            trainer = batches = None
            _free(device)
            if oom:
                print(f"  finetune {views} views, checkpointing {ckpt}: out of memory", flush=True)
                if ckpt:
                    rows.append({"views": views, "error": "out of memory with gradient checkpointing"})
                continue
            med = statistics.median(times)
            rows.append({"views": views, "gradient_checkpointing": ckpt, "times": times, "batch": batch_size,
                         "clips_per_s": batch_size / med, "peak_gb": _peak_gb(device),
                         "vae_size": 64 if tiny else 512, "model_size": 56 if tiny else 448})
            break
    return rows


def training_table(drtune: dict | None, finetune: list[dict] | None) -> str:
    lines = ["| training step | size | seconds (min / med) | throughput | peak memory GB | notes |",
             "| --- | --- | --- | --- | --- | --- |"]
    if drtune is not None:
        if "error" in drtune:
            lines.append(f"| DRTune step | - | - | - | - | {drtune['error']} |")
        else:
            d = drtune
            oom = "; out of memory at " + ", ".join(f"{o['size']}px/{o['frames']}f"
                                                     f"{' ckpt' if o['gradient_checkpointing'] else ''}"
                                                     for o in d["out_of_memory"]) if d["out_of_memory"] else ""
            peak = "n/a" if d["peak_gb"] != d["peak_gb"] else f"{d['peak_gb']:.2f} (models {d['resident_gb']:.2f})"
            lines.append(f"| DRTune step | {d['size']}x{d['size']}, {d['frames']} frames"
                         f"{' (tiny)' if d['tiny'] else ' (published)' if d['published_size'] else ' (largest that fits)'}"
                         " | "
                         f"{d['seconds']:.2f} | - | {peak} | official recipe, T = {d['rollout_steps']} rollout "
                         f"steps, grad at {d['grad_steps']}, gradient checkpointing "
                         f"{'on' if d['gradient_checkpointing'] else 'off'}{oom} |")
    for r in finetune or ():
        if "error" in r:
            lines.append(f"| stitched-decoder finetune step | {r['views']} views | - | - | - | {r['error']} |")
            continue
        t = r["times"]
        peak = "n/a" if r["peak_gb"] != r["peak_gb"] else f"{r['peak_gb']:.2f}"
        lines.append(f"| stitched-decoder finetune step | {r['views']} views, {r['vae_size']} -> {r['model_size']} "
                     f"px, batch {r['batch']} | {min(t):.3f} / {statistics.median(t):.3f} | "
                     f"{r['clips_per_s']:.2f} clips/s | {peak} | official recipe, gradient checkpointing "
                     f"{'on' if r['gradient_checkpointing'] else 'off'} |")
    return "\n".join(lines)


# ============================================================================================ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (CPU check that the suite runs)")
    parser.add_argument("--device", default=None, help="default: cuda when present (required without --tiny)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 2; tiny 1)")
    parser.add_argument("--out", default="bench/out/gpu_suite", help="folder for gpu_suite.json / .md and scratch")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["pipeline", "rasteriser", "fast_variants", "offload", "drtune", "finetune"])
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not args.tiny and device.type != "cuda":
        print("gpu_suite: the full-size suite needs a CUDA GPU (found none); run `python bench/gpu_suite.py --tiny` "
              "for the CPU check", file=sys.stderr)
        return 2
    repeats = args.repeats or (1 if args.tiny else 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "tiny": args.tiny, "repeats": repeats}
    md = [(f"# gpu_suite ({'tiny, CPU check' if args.tiny else 'full size'}) on {report['device']}, torch "
           f"{torch.__version__}"), ""]
    print(f"building {'tiny' if args.tiny else 'full-size'} models on {device} ...", flush=True)
    t0 = time.perf_counter()
    pipe = build_tiny(device) if args.tiny else build_full_size(device)
    settings = pipe.settings  # the published settings (full size)
    if args.tiny:  # the smallest run that still exercises every stage: 5 frames, 2 steps (fast: 1)
        settings = settings.replace(num_frames=5, num_inference_steps=2)
    report["build_s"] = time.perf_counter() - t0
    report["settings"] = {"frames": settings.num_frames, "size": settings.height, "steps": settings.num_inference_steps,
                          "cfg": settings.guidance_scale}
    if "pipeline" not in args.skip:
        print("pipeline: released / default / fast ...", flush=True)
        report["pipeline"] = pipeline_section(pipe, settings, device, repeats, out, warm_up=not args.tiny)
        md += [(f"## Text -> 3D, {settings.num_frames} frames {settings.height}x{settings.width}, "
                f"{settings.num_inference_steps} steps (fast: {round(settings.num_inference_steps * 0.6)}), "
                f"CFG {settings.guidance_scale}"), "", pipeline_table(report["pipeline"]), ""]
    if "fast_variants" not in args.skip:
        print("fast-path variants ...", flush=True)
        res = compare(pipe.wan, settings, PROMPT, dict(VARIANTS), seeds=1, repeats=repeats, device=device)
        report["fast_variants"] = res
        md += [fast_table(res, "## Fast-path variants (Wan sampling only; speed-up and difference vs default)"), ""]
    if "offload" not in args.skip and device.type == "cuda":
        print("offload modes ...", flush=True)
        try:
            report["offload"] = offload_section(pipe, settings, device)
            md += ["## Offload modes (the README's VRAM table)", "", offload_table(report["offload"]), ""]
        except Exception as err:  # noqa: BLE001 -- e.g. accelerate missing: the rest of the suite still reports
            report["offload"] = {"error": f"{type(err).__name__}: {err}"}
            md += [f"offload modes not measured: {type(err).__name__}: {err}", ""]
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if "rasteriser" not in args.skip:
        print("rasteriser: gsplat vs ours ...", flush=True)
        report["rasteriser"] = rasteriser_section(device, args.tiny, repeats if args.tiny else max(repeats, 3))
        md += ["## Rasteriser", "", rasteriser_table(report["rasteriser"]), ""]
    if "drtune" not in args.skip:
        print("training: one DRTune step ...", flush=True)
        report["drtune_step"] = drtune_section(device, args.tiny)
    if "finetune" not in args.skip:
        print("training: stitched-decoder finetuning steps ...", flush=True)
        report["finetune_step"] = finetune_section(device, args.tiny, repeats if args.tiny else max(repeats, 3), out)
    if "drtune_step" in report or "finetune_step" in report:
        md += ["## Training steps", "", training_table(report.get("drtune_step"), report.get("finetune_step")), ""]
    report["total_s"] = time.perf_counter() - t_start
    md.append(f"suite wall time {report['total_s']:.0f} s (model build {report['build_s']:.0f} s)")
    (out / "gpu_suite.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "gpu_suite.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    for f in out.glob("*.ply"):
        f.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
