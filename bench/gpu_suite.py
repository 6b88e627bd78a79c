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
when gsplat is installed and its kernels build), and the fast-path variants of ``bench/bench_fast_path.py`` at full
size (speed and quality vs the default on the same seeds).

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


# ============================================================================================ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (CPU check that the suite runs)")
    parser.add_argument("--device", default=None, help="default: cuda when present (required without --tiny)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 2; tiny 1)")
    parser.add_argument("--out", default="bench/out/gpu_suite", help="folder for gpu_suite.json / .md and scratch")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["pipeline", "rasteriser", "fast_variants", "offload"])
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
    md += [("Not measured by this suite yet: one DRTune step's peak memory and one finetuning step's "
            "throughput."), ""]
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
