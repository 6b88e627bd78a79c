"""Text -> 3D end to end: VIST3A (stitched decoder) against the sequential baseline, in one run.

* VIST3A:   Wan sampling -> raw latent -> Wan VAE decode -> frames to 448 -> stitched AnySplat (latent + frames)
* baseline: Wan sampling -> raw latent -> Wan VAE decode -> frames to 448 -> plain AnySplat on the RGB frames

Both share the sampled latent (the Wan sampling time is measured once and added to both). Reported: seconds per
stage, end-to-end seconds and peak GPU memory per path, and the ratios between the two.

CUDA (when present): full-size models with RANDOM weights of the published architectures (Wan 2.1 T2V 1.3B
transformer, Wan VAE, UMT5-XXL text encoder, AnySplat) at the published settings (512x512, 13 frames, 50 steps,
CFG 7.5, fp16 Wan, decoder in --decoder-dtype). Timings do not depend on the weight values.
CPU: the tiny preset only (plumbing check); the real measurement needs a GPU.

    python bench/bench_pipeline.py [--steps 50] [--frames 13] [--size 512] [--decoder-dtype bf16]
"""

from __future__ import annotations

import argparse
import time

import torch

from vist3a.pipeline import TextTo3DPipeline, decode_frames, model_size, to_raw_latent
from vist3a.pipeline.wan import resize_frames


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def full_size_wan(device: torch.device):
    """The published Wan 2.1 T2V 1.3B parts with RANDOM weights, built on ``device`` (transformer, UMT5-XXL text
    encoder and Wan VAE in fp16; seed 0) as a diffusers ``WanPipeline``. The character tokenizer stands in for
    UMT5's sentencepiece one (not downloadable here); the text encoder still runs at the published 512 tokens
    (padded), so its cost is the real one."""
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from vist3a.pipeline.presets import tiny_tokenizer
    from vist3a.pipeline.wan import make_scheduler

    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
            text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024).to(torch.float16).eval()
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240,
                                                   num_layers=24, num_heads=64, feed_forward_proj="gated-gelu")
                                        ).to(torch.float16).eval()
        vae = AutoencoderKLWan().to(torch.float16).eval()  # the published Wan 2.1 VAE config
    return WanPipeline(tokenizer=tiny_tokenizer(), text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=make_scheduler())


def full_size_decoder(device: torch.device, decoder_dtype: torch.dtype):
    """The published stitched AnySplat (cut at enc_blocks_2, the released stitching layer), RANDOM weights."""
    from vist3a.models import AnySplat
    from vist3a.stitching import RELEASED_CONFIG, StitchedDecoder, StitchingLayer

    with torch.device(device):
        decoder = StitchedDecoder(AnySplat(), "enc_blocks_2", StitchingLayer(RELEASED_CONFIG))
    return decoder.to(decoder_dtype).eval()


def full_size(device: torch.device, decoder_dtype: torch.dtype):
    """Full-size random-weight pipeline (Wan 1.3B, default initialisers, built on ``device``) + an uncut AnySplat
    for the baseline."""
    from vist3a.models import AnySplat

    wan = full_size_wan(device)
    decoder = full_size_decoder(device, decoder_dtype)
    with torch.device(device):
        plain = AnySplat().to(decoder_dtype).eval()
    torch.cuda.empty_cache()
    return TextTo3DPipeline(wan, decoder), plain


def tiny(device: torch.device):
    from vist3a.models import AnySplat, AnySplatConfig

    torch.manual_seed(0)
    return TextTo3DPipeline.tiny(seed=0).to(device), AnySplat(AnySplatConfig.tiny()).to(device).eval()


def run(pipe: TextTo3DPipeline, plain, args, device: torch.device) -> None:
    s = pipe.settings.replace(num_frames=args.frames, height=args.size, width=args.size,
                              num_inference_steps=args.steps)
    s.check()
    size3d = model_size(s.height, s.width)
    dtype = next(plain.parameters()).dtype
    peak = {}

    def reset():
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    def peak_gb():
        if device.type != "cuda":
            return "n/a (CPU)"
        return f"{torch.cuda.max_memory_allocated(device) / 1024**3:.2f} GB"

    reset()
    _sync(device)
    t0 = time.perf_counter()
    latent = pipe.wan(prompt="a red sports car", negative_prompt=s.negative_prompt, height=s.height, width=s.width,
                      num_frames=s.num_frames, num_inference_steps=s.num_inference_steps,
                      guidance_scale=s.guidance_scale, generator=torch.Generator("cpu").manual_seed(0),
                      output_type="latent", max_sequence_length=s.max_sequence_length).frames
    _sync(device)
    t_sample, peak["sampling"] = time.perf_counter() - t0, peak_gb()
    raw = to_raw_latent(pipe.wan.vae, latent.to(pipe.wan.vae.dtype))

    def decode_stage():
        frames = decode_frames(pipe.wan.vae, raw)
        return resize_frames(frames, size3d).to(device=device, dtype=dtype)

    times = {}
    with torch.no_grad():
        for name in ("vist3a", "baseline", "vist3a_2", "baseline_2"):  # second round: warm kernels
            reset()
            _sync(device)
            t0 = time.perf_counter()
            frames3d = decode_stage()
            _sync(device)
            t_dec = time.perf_counter() - t0
            if name.startswith("vist3a"):
                pipe.decoder.predict(raw.to(dtype), frames3d)
            else:
                plain.predict(frames3d)
            _sync(device)
            times[name] = (t_dec, time.perf_counter() - t0 - t_dec)
            peak[name] = peak_gb()
    print(f"device {device}, {s.num_frames} frames {s.height}x{s.width} -> {size3d[0]}x{size3d[1]}, "
          f"{s.num_inference_steps} steps, CFG {s.guidance_scale}")
    print(f"  Wan sampling (shared):           {t_sample:8.2f} s   peak {peak['sampling']}")
    for name in ("vist3a", "baseline"):
        dec, model = times[name + "_2"]
        total = t_sample + dec + model
        print(f"  {name:9s} VAE decode {dec:6.2f} s, 3D model {model:6.2f} s, end to end {total:8.2f} s, "
              f"peak (decode + 3D) {peak[name + '_2']}")
    v, b = (sum(times[n + "_2"]) for n in ("vist3a", "baseline"))
    print(f"  ratio baseline / vist3a: decode + 3D {b / v:.3f}x, end to end "
          f"{(t_sample + b) / (t_sample + v):.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--decoder-dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.decoder_dtype]
        pipe, plain = full_size(device, dtype)
    else:
        print("CPU: running the tiny preset only (untrained random models, plumbing check). The real measurement "
              "(full-size models at 512x512, 13 frames, 50 steps) needs a GPU: run this script on a CUDA machine.")
        pipe, plain = tiny(device)
    pipe.wan.set_progress_bar_config(disable=True)
    run(pipe, plain, args, device)


if __name__ == "__main__":
    main()
