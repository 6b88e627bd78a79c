"""The fast text-to-3D path: the same models and solver as the default path, with speed-ups whose quality cost is
measured against the default on the same seeds (``bench/bench_fast_path.py``; GPU size: ``bench/gpu_suite.py``).

Speed-ups (each one a field of :class:`FastOptions`):

* ``batch_cfg`` -- the conditional and unconditional predictions in ONE transformer forward (batch of 2) instead of
  diffusers ``WanPipeline``'s two forwards per step. Same math: differences are float rounding only (fp32 on CPU:
  below 1e-5 of the latent's scale, ``tests/test_fast_path.py``).
* ``cache`` -- diffusers' First Block Cache (``FirstBlockCacheConfig``): a step whose first-block residual changed
  less than ``cache_threshold`` (relative) since the last fully computed step reuses the other blocks' residual.
  Approximate: this is where the quality cost is.
* ``steps`` -- fewer UniPC steps (the same solver, schedule and flow shift), e.g. 30 instead of the published 50.
* ``decoder_bf16`` -- the stitched decoder under ``torch.autocast(bfloat16)`` on CUDA (weights stay as loaded).
* ``attention_backend`` -- a diffusers attention backend for the Wan transformer (``"flash"``, ``"sage"``,
  ``"_native_cudnn"``...; whatever the installed diffusers and kernels offer), None = diffusers' default.
* ``compile`` -- ``torch.compile`` of the Wan transformer's blocks (first call pays the compilation).

:data:`FAST` is the preset behind ``vist3a generate --fast`` and ``TextTo3DPipeline(..., fast=True)``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, replace

import torch

__all__ = ["FAST", "FastOptions", "apply_fast_options", "decoder_autocast", "fast_steps", "sample_latent"]

logger = logging.getLogger(__name__)

CACHES = ("none", "first_block")


@dataclass(frozen=True)
class FastOptions:
    """Which speed-ups the fast path uses (see the module docstring). ``steps_scale`` multiplies the step count
    (rounded, at least 1) unless ``steps`` fixes it."""

    batch_cfg: bool = True
    cache: str = "first_block"
    cache_threshold: float = 0.05
    steps: int | None = None
    steps_scale: float = 1.0
    decoder_bf16: bool = True
    attention_backend: str | None = None
    compile: bool = False

    def replace(self, **changes) -> FastOptions:
        return replace(self, **changes)

    def check(self) -> FastOptions:
        if self.cache not in CACHES:
            raise ValueError(f"fast cache {self.cache!r}: choose one of {', '.join(CACHES)}")
        if not (isinstance(self.cache_threshold, (int, float)) and math.isfinite(self.cache_threshold)
                and self.cache_threshold > 0):
            raise ValueError(f"fast cache_threshold {self.cache_threshold!r}: must be a finite number > 0 "
                             "(diffusers' default 0.05)")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise ValueError(f"fast steps {self.steps!r}: must be a whole number >= 1")
        if not (isinstance(self.steps_scale, (int, float)) and math.isfinite(self.steps_scale)
                and 0 < self.steps_scale <= 1):
            raise ValueError(f"fast steps_scale {self.steps_scale!r}: must be in (0, 1]")
        return self


#: ``--fast``: batched CFG, First Block Cache at diffusers' default threshold, 0.6x the steps (50 -> 30, as
#: ComfyUI's own Wan template), the decoder in bf16 autocast on CUDA. Quality vs the default: bench_fast_path.py.
FAST = FastOptions(batch_cfg=True, cache="first_block", cache_threshold=0.05, steps_scale=0.6, decoder_bf16=True)


def fast_steps(options: FastOptions | None, steps: int) -> int:
    """The step count the fast path uses for a requested ``steps``."""
    if options is None:
        return int(steps)
    if options.steps is not None:
        return int(options.steps)
    return max(1, round(steps * options.steps_scale))


def apply_fast_options(transformer, options: FastOptions):
    """Persistent speed-ups on a Wan transformer (attention backend, torch.compile). Returns the transformer.

    Raises ValueError naming the available choices when the backend is unknown or unusable here."""
    if options.attention_backend:
        try:
            transformer.set_attention_backend(options.attention_backend)
        except (ValueError, RuntimeError, ImportError) as err:
            from diffusers.models.attention_dispatch import AttentionBackendName

            names = ", ".join(b.value for b in AttentionBackendName if not b.value.startswith("_"))
            raise ValueError(f"fast attention_backend {options.attention_backend!r} is not usable here "
                             f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); diffusers knows "
                             f"{names} (most need extra kernels and a GPU); use None for the default") from None
        logger.info("Wan attention backend: %s", options.attention_backend)
    if options.compile and not getattr(transformer, "_vist3a_compiled", False):
        for block in transformer.blocks:
            block.compile()
        transformer._vist3a_compiled = True
        logger.info("torch.compile on the Wan transformer blocks (the first call compiles)")
    return transformer


@contextlib.contextmanager
def _cache(transformer, options: FastOptions | None):
    if options is None or options.cache == "none":
        yield
        return
    from diffusers.hooks import FirstBlockCacheConfig

    if transformer.is_cache_enabled:
        transformer.disable_cache()
    transformer.enable_cache(FirstBlockCacheConfig(threshold=float(options.cache_threshold)))
    try:
        yield
    finally:
        transformer.disable_cache()


def decoder_autocast(options: FastOptions | None, device: torch.device | str):
    """A ``torch.autocast(bfloat16)`` context for the stitched decoder when the options ask for it on CUDA."""
    device = torch.device(device)
    if options is not None and options.decoder_bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def sample_latent(wan, prompt: str, negative_prompt: str | None, *, height: int, width: int, num_frames: int,
                  num_inference_steps: int, guidance_scale: float, generator: torch.Generator,
                  max_sequence_length: int = 512, options: FastOptions | None = None, callback=None,
                  progress: bool = True) -> torch.Tensor:
    """``WanPipeline(output_type="latent")``'s sampling loop with the fast options: returns the model-space latent
    (1, 16, T_lat, H/8, W/8) float32.

    ``num_inference_steps`` is used as given (apply :func:`fast_steps` first). ``callback(step, total)`` is called
    after every step (progress, interruption). With ``options=None`` or every option off, the result equals
    ``wan(...)``'s (the same encode, noise, timesteps and scheduler steps)."""
    options = (options or FastOptions(batch_cfg=False, cache="none", decoder_bf16=False)).check()
    device = wan._execution_device
    cfg = float(guidance_scale) > 1.0
    pos, neg = wan.encode_prompt(prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=cfg,
                                 num_videos_per_prompt=1, max_sequence_length=max_sequence_length, device=device)
    transformer = wan.transformer
    dtype = transformer.dtype
    pos = pos.to(dtype)
    neg = neg.to(dtype) if neg is not None else None
    scheduler = wan.scheduler
    scheduler.set_timesteps(int(num_inference_steps), device=device)
    timesteps = scheduler.timesteps
    latents = wan.prepare_latents(1, transformer.config.in_channels, height, width, num_frames, torch.float32, device,
                                  generator, None)
    scheduler.set_begin_index(0)
    both = torch.cat([pos, neg]) if (cfg and options.batch_cfg) else None
    total = len(timesteps)
    bar = wan.progress_bar(total=total) if progress else contextlib.nullcontext()
    with _cache(transformer, options if options.cache != "none" else None), bar:
        for i, t in enumerate(timesteps):
            x = latents.to(dtype)
            ctx = {"step_index": i, "sigma": float(scheduler.sigmas[i]), "num_inference_steps": total}
            if both is not None:
                with transformer.cache_context("cond_uncond", **_ctx_kwargs(transformer, ctx)):
                    out = transformer(hidden_states=torch.cat([x, x]), timestep=t.expand(2),
                                      encoder_hidden_states=both, return_dict=False)[0]
                cond, uncond = out.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            else:
                with transformer.cache_context("cond", **_ctx_kwargs(transformer, ctx)):
                    noise = transformer(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=pos,
                                        return_dict=False)[0]
                if cfg:
                    with transformer.cache_context("uncond", **_ctx_kwargs(transformer, ctx)):
                        uncond = transformer(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=neg,
                                             return_dict=False)[0]
                    noise = uncond + guidance_scale * (noise - uncond)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
            if progress:
                bar.update()
            if callback is not None:
                callback(i, total)
    wan.maybe_free_model_hooks()
    return latents.float()


def _ctx_kwargs(transformer, ctx: dict) -> dict:
    """diffusers >= 0.36 passes step information to cache_context; older versions take the name only."""
    import inspect

    params = inspect.signature(transformer.cache_context).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return ctx
    return {k: v for k, v in ctx.items() if k in params}
