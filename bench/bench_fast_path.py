"""The fast text-to-3D path against the default, on the same seeds: speed of the Wan sampling (min / median over
interleaved repeats) and the quality difference of every speed-up.

Variants (vist3a/pipeline/fast.py):

* ``default``    -- diffusers ``WanPipeline`` as the pack runs it (two transformer forwards per step);
* ``batch_cfg``  -- cond + uncond in one forward (exact up to rounding);
* ``fbc``        -- + diffusers' First Block Cache (threshold 0.05);
* ``steps_x0.6`` -- batched CFG, 0.6x the UniPC steps (50 -> 30 at the published settings);
* ``fast``       -- the ``--fast`` preset (all of the above);
* ``bf16_wan``   -- (quality only on CPU) the transformer in bfloat16 instead of the reference dtype.

Quality vs ``default`` on the same seed: relative L2 difference of the sampled latent and PSNR of the Wan-VAE-decoded
frames (dB; higher = closer). The decoder's bf16 autocast is measured on the stitched decoder output (relative
difference of the Gaussian means and of the depth).

Models: ``--preset micro`` (trained on the micro world: meaningful differences; needs the shipped micro weights) or
``--preset tiny`` (random weights: the numbers show how the speed-ups perturb the sampling, not image quality).
The GPU-size run (Wan 1.3B at 512x512, 13 frames, 50 steps) is part of ``bench/gpu_suite.py``.

``--judge N`` (micro only) instead judges whole text -> 3D runs against the micro world's ground truth: for the
first N held-out prompts of each of ``--judge-splits`` (``training.micro.adherence.held_out_specs``: the ``test``
captions, and the ``novel`` ones whose colour x shape pairs were never trained on), the shipped micro pipeline
(micro Wan + its DRTune LoRA + the shipped micro stitched decoder) generates a scene with the default and with
``fast=True`` on the same seed (seed k for prompt k, plus ``--judge-seeds`` - 1 more per prompt; default and fast
interleaved per prompt). Each scene is rendered at its own predicted cameras of views 0, 4, 8 (56 px) and read by
the shipped ground-truth judge (``vist3a/weights/micro/judge``): object count correct, colour-set F1, shape-set F1,
all exact; 3D consistency = PSNR between those renders and the scene's decoded frames
(``training.micro.adherence.judge_scene``). Reported: the means for default and fast, fast - default with the
standard error of the paired per-prompt differences, the frames PSNR of fast against default, and the time of each.

    python bench/bench_fast_path.py [--preset tiny|micro] [--repeats 3] [--seeds 2] [--steps N]
    python bench/bench_fast_path.py --preset micro --judge 12 [--judge-splits test novel] [--judge-seeds 1]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from vist3a.pipeline import apply_template, decode_frames, to_raw_latent
from vist3a.pipeline.fast import FAST, FastOptions, fast_steps, sample_latent

VARIANTS = {
    "default": None,
    "batch_cfg": FastOptions(batch_cfg=True, cache="none", decoder_bf16=False),
    "fbc": FastOptions(batch_cfg=True, cache="first_block", decoder_bf16=False),
    "steps_x0.6": FastOptions(batch_cfg=True, cache="none", steps_scale=0.6, decoder_bf16=False),
    "fast": FAST,
}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def sample(wan, text, settings, seed, options):
    """One sampling with ``options`` (None: the default WanPipeline call). Returns the model-space latent."""
    gen = torch.Generator("cpu").manual_seed(seed)
    kw = {"height": settings.height, "width": settings.width, "num_frames": settings.num_frames,
          "guidance_scale": settings.guidance_scale, "max_sequence_length": settings.max_sequence_length}
    neg = settings.negative_prompt or None
    if options is None:
        return wan(prompt=text, negative_prompt=neg, num_inference_steps=settings.num_inference_steps,
                   output_type="latent", generator=gen, **kw).frames.float()
    return sample_latent(wan, text, neg, num_inference_steps=fast_steps(options, settings.num_inference_steps),
                         generator=gen, options=options, progress=False, **kw)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def compare(wan, settings, prompt: str, variants: dict, seeds: int = 2, repeats: int = 3, device="cpu",
            decode: bool = True) -> dict:
    """Time every variant over ``repeats`` interleaved rounds (seed 0) and measure its quality against
    ``default`` on ``seeds`` seeds. Returns {variant: {"times": [...], "latent_rel": [...], "psnr": [...]}}."""
    text = apply_template(prompt, settings.prompt_template)
    res = {name: {"times": [], "latent_rel": [], "psnr": []} for name in variants}
    for name, opt in variants.items():  # warm-up (compile, kernels), not timed
        if opt is not None and (opt.compile or opt.attention_backend):
            from vist3a.pipeline.fast import apply_fast_options

            apply_fast_options(wan.transformer, opt)
        sample(wan, text, settings.replace(num_inference_steps=2), 0, opt)
    for _ in range(repeats):
        for name, opt in variants.items():  # interleaved: load drifts hit every variant alike
            _sync(device)
            t0 = time.perf_counter()
            sample(wan, text, settings, 0, opt)
            _sync(device)
            res[name]["times"].append(time.perf_counter() - t0)
    for seed in range(seeds):
        ref = sample(wan, text, settings, seed, None)
        ref_frames = decode_frames(wan.vae, to_raw_latent(wan.vae, ref.to(wan.vae.dtype))) if decode else None
        for name, opt in variants.items():
            lat = ref if opt is None else sample(wan, text, settings, seed, opt)
            res[name]["latent_rel"].append(rel(lat, ref))
            if decode:
                frames = decode_frames(wan.vae, to_raw_latent(wan.vae, lat.to(wan.vae.dtype)))
                res[name]["psnr"].append(psnr(frames, ref_frames))
    return res


def table(res: dict, title: str = "") -> str:
    """A markdown table: min / median seconds, speed-up vs default (min and median), quality vs default."""
    base = res["default"]["times"]
    header = ("| variant | min s | median s | speed-up (min) | speed-up (median) | latent rel. diff (max over seeds) "
              "| frames PSNR vs default (min, dB) |")
    lines = [title, "", header, "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in res.items():
        t = r["times"]
        p = min(r["psnr"]) if r["psnr"] else float("nan")
        lines.append(f"| {name} | {min(t):.3f} | {statistics.median(t):.3f} | {min(base) / min(t):.2f}x | "
                     f"{statistics.median(base) / statistics.median(t):.2f}x | {max(r['latent_rel']):.2e} | "
                     f"{'identical' if p == float('inf') else f'{p:.1f}'} |")
    return "\n".join(lines)


def decoder_bf16_quality(decoder, settings, seed: int = 0, device="cpu") -> dict:
    """The stitched decoder in bf16 autocast vs as loaded, on a random latent and frames of the run's size."""
    from vist3a.pipeline import model_size

    g = torch.Generator().manual_seed(seed)
    t_lat = (settings.num_frames - 1) // 4 + 1
    latent = torch.randn(1, 16, t_lat, settings.height // 8, settings.width // 8, generator=g).to(device)
    frames = torch.rand(1, settings.num_frames, 3, *model_size(settings.height, settings.width), generator=g)
    frames = frames.to(device)
    dev = torch.device(device)
    with torch.no_grad():
        ref = decoder.predict(latent, frames)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            low = decoder.predict(latent, frames)
    out = {"depth_rel": rel(low.depth, ref.depth)}
    if getattr(ref, "gaussians", None) is not None:
        out["means_rel"] = rel(low.gaussians[0].means, ref.gaussians[0].means)
    return out


JUDGE_KEYS = ("count", "colour_f1", "shape_f1", "exact", "consistency_psnr")


def judge_fast_path(pipe, judge, specs, seeds: int = 1) -> dict:
    """Judge the default and the fast path on ``specs`` (prompt k gets seeds ``k * seeds ... k * seeds + seeds - 1``,
    the same for both). Returns {"default" / "fast": [per-run judge_scene dicts + "seconds"], "frames_psnr": [fast
    vs default frames, dB per run]}."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's training package
    from training.micro.adherence import judge_scene
    from training.micro.shards import to_model_size

    out = {"default": [], "fast": [], "frames_psnr": []}
    for fast in (False, True):  # warm-up (lazy imports, allocator, the cache hooks), not counted
        pipe(specs[0].caption, seed=0, progress=False, fast=fast)
    for k, spec in enumerate(specs):
        for j in range(seeds):
            seed = k * seeds + j
            scenes = {}
            for name, fast in (("default", False), ("fast", True)):  # interleaved per prompt
                t0 = time.perf_counter()
                scene = pipe(spec.caption, seed=seed, progress=False, fast=fast)
                seconds = time.perf_counter() - t0
                row = judge_scene(judge, scene.gaussians, scene.cameras, to_model_size(scene.frames, 56), spec)
                out[name].append(row | {"seconds": seconds})
                scenes[name] = scene
            out["frames_psnr"].append(psnr(scenes["fast"].frames, scenes["default"].frames))
    return out


def judge_table(res: dict, title: str) -> str:
    """Markdown: mean judged scores of default and fast, and fast - default +- the standard error of the paired
    per-run differences."""
    lines = [title, "", "| metric | default | fast | fast - default (+- s.e.) |", "| --- | --- | --- | --- |"]
    d, f = res["default"], res["fast"]
    n = len(d)
    for key in (*JUDGE_KEYS, "seconds"):
        a, b = [r[key] for r in d], [r[key] for r in f]
        diffs = [y - x for x, y in zip(a, b)]
        se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else float("nan")
        unit = " (s)" if key == "seconds" else (" (dB)" if key == "consistency_psnr" else "")
        lines.append(f"| {key}{unit} | {statistics.mean(a):.3f} | {statistics.mean(b):.3f} | "
                     f"{statistics.mean(diffs):+.3f} +- {se:.3f} |")
    p = res["frames_psnr"]
    lines.append("")
    lines.append(f"{n} runs; frames of fast vs default on the same seed: PSNR min {min(p):.1f} / median "
                 f"{statistics.median(p):.1f} dB; speed-up of the whole text -> 3D run (median s): "
                 f"{statistics.median(r['seconds'] for r in d) / statistics.median(r['seconds'] for r in f):.2f}x")
    return "\n".join(lines)


def run_judge(args) -> None:
    from vist3a.pipeline import TextTo3DPipeline

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from training.micro.adherence import held_out_specs
    from training.micro.judge import load_judge

    pipe = TextTo3DPipeline.micro()
    pipe.wan.set_progress_bar_config(disable=True)
    weights = Path(__file__).resolve().parents[1] / "vist3a" / "weights" / "micro" / "judge" / "judge.safetensors"
    judge = load_judge(weights)
    specs = [s for split in args.judge_splits for s in held_out_specs(split, args.judge)]
    res = judge_fast_path(pipe, judge, specs, seeds=args.judge_seeds)
    steps = pipe.settings.num_inference_steps
    print(judge_table(res, (f"Fast path judged on the micro world's ground truth: {args.judge} held-out prompts per "
                            f"split ({', '.join(args.judge_splits)}) x {args.judge_seeds} seed(s), micro preset "
                            f"(LoRA on), default {steps} steps vs --fast "
                            f"{fast_steps(FAST, steps)} steps, "
                            f"{torch.get_num_threads()} thread(s)")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=["tiny", "micro"], default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, help="denoising steps (default: the preset's; tiny 4 is too few to "
                                                  "show the cache, so tiny defaults to 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--judge", type=int, default=0, metavar="N",
                        help="micro only: judge default vs fast on N held-out prompts per split (module docstring)")
    parser.add_argument("--judge-splits", nargs="+", choices=["test", "novel"], default=["test", "novel"])
    parser.add_argument("--judge-seeds", type=int, default=1, help="seeds per prompt for --judge (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.judge:
        if args.preset != "micro":
            parser.error("--judge needs --preset micro (the judge and the ground truth are the micro world's)")
        run_judge(args)
        return
    from vist3a.pipeline import TextTo3DPipeline

    if args.preset == "micro":
        pipe = TextTo3DPipeline.micro()
        prompt = "a small red cube to the left of a large blue sphere on grass under a blue sky"
        settings = pipe.settings
    else:
        pipe = TextTo3DPipeline.tiny()
        prompt = "a red sports car"
        settings = pipe.settings.replace(num_inference_steps=20)
        print("tiny preset: RANDOM weights; the differences show how much each speed-up perturbs the sampling, not "
              "image quality (use --preset micro for trained models)")
    if args.steps:
        settings = settings.replace(num_inference_steps=args.steps)
    pipe.wan.set_progress_bar_config(disable=True)
    variants = dict(VARIANTS)
    res = compare(pipe.wan, settings, prompt, variants, seeds=args.seeds, repeats=args.repeats)
    # bf16 transformer (quality only: bf16 matmuls are slow on most CPUs; speed on GPU: gpu_suite.py)
    wan = pipe.wan
    refs = [sample(wan, apply_template(prompt, settings.prompt_template), settings, s, None)
            for s in range(args.seeds)]
    wan.transformer.to(torch.bfloat16)
    try:
        lows = [sample(wan, apply_template(prompt, settings.prompt_template), settings, s, None)
                for s in range(args.seeds)]
    finally:
        wan.transformer.to(torch.float32)
    print(table(res, f"Wan sampling, preset {args.preset}, {settings.num_frames} frames {settings.height}x"
                     f"{settings.width}, {settings.num_inference_steps} steps, CFG {settings.guidance_scale}, "
                     f"{args.repeats} interleaved repeats, {torch.get_num_threads()} thread(s)"))
    print(f"\nbf16 Wan transformer vs fp32 (quality only): latent rel. diff max "
          f"{max(rel(a, b) for a, b in zip(lows, refs)):.2e}")
    dq = decoder_bf16_quality(pipe.decoder, settings)
    print("stitched decoder in bf16 autocast vs fp32: " + ", ".join(f"{k} {v:.2e}" for k, v in dq.items()))


if __name__ == "__main__":
    main()
