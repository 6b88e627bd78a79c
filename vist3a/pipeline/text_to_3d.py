"""Text -> 3D: Wan 2.1 (+ the VIST3A LoRA) samples a multi-view video latent; the stitched decoder turns it into
Gaussians, cameras and a pointmap.

::

    prompt --template--> WanPipeline(output_type="latent")   (1, 16, T_lat, H/8, W/8) model-space latent
      -> z * latents_std + latents_mean                       raw latent (what the VAE and the decoder eat)
      -> Wan VAE decode (AnySplat decoders, which read RGB)   (1, T, 3, H, W) in [0, 1] -> resize to H/16*14
      -> StitchedDecoder.predict(raw, frames)                 Gaussians, Cameras, depth -> SceneOutput

The pipeline orchestrates only: the math lives in diffusers, :mod:`vist3a.stitching` and :mod:`vist3a.models`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..checks import check_device, check_model_sources, check_seed
from .decoders import load_stitched_decoder
from .fast import (
    FAST,
    FastOptions,
    apply_fast_options,
    decoder_autocast,
    fast_steps,
    sample_latent,
)
from .output import SceneOutput, frames_size, run_decoder
from .settings import (
    DEFAULT_LORA_REPO,
    DEFAULT_WAN,
    GenerationSettings,
    apply_template,
    check_prompt,
)
from .sources import decoder_sources, lora_source, text_to_3d_sources
from .wan import (
    decode_frames,
    default_lora_subfolder,
    load_vist3a_lora,
    load_wan_pipeline,
    make_scheduler,
    resize_frames,
    to_raw_latent,
)

__all__ = ["TextTo3DPipeline"]

logger = logging.getLogger(__name__)

_UNSET = object()


def _generator(seed: int | None) -> tuple[torch.Generator, int]:
    """A CPU generator (same noise on every device) and the seed used (drawn and logged when None)."""
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        logger.info("seed %d (pass seed=%d to reproduce this run)", seed, seed)
    return torch.Generator("cpu").manual_seed(int(seed)), int(seed)


class TextTo3DPipeline:
    """Text -> :class:`SceneOutput` with a diffusers ``WanPipeline`` and a stitched decoder.

    Args:
        wan: a diffusers ``WanPipeline`` (transformer with the VIST3A LoRA applied or merged).
        decoder: a :class:`~vist3a.stitching.StitchedDecoder` (AnySplat -> Gaussians; VGGT -> pointmaps).
        settings: defaults for every call (the published ones unless given).
        untrained: set by :meth:`tiny`; every call logs that the output shows the plumbing only.
    """

    def __init__(self, wan, decoder, settings: GenerationSettings | None = None, untrained: bool = False) -> None:
        self.wan = wan
        self.decoder = decoder.eval()
        self.settings = settings or GenerationSettings()
        self.untrained = bool(untrained)
        self._offload_device: torch.device | None = None
        #: optional ``prompt -> message | None`` (``--preset micro``: words outside the model's vocabulary)
        self.prompt_note = None

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, wan: str | Path = DEFAULT_WAN, decoder: str | Path | None = None,
                        lora: str | Path | None = "auto", base: str | Path | None = None,
                        dtype: torch.dtype = torch.float16, decoder_dtype: torch.dtype | None = None,
                        settings: GenerationSettings | None = None, check_sources: bool = True
                        ) -> TextTo3DPipeline:
        """Load the published models (hub ids through the huggingface_hub cache, or local paths).

        Before the first model loads, every model is checked (:func:`vist3a.checks.check_model_sources`): all that
        are missing are reported in one ``MissingModelsError`` with their ``hf download`` commands
        (``check_sources=False`` skips that when the caller already ran it).

        Args:
            wan: diffusers Wan 2.1 T2V pipeline (hub id or folder).
            decoder: stitched decoder (see :func:`~vist3a.pipeline.load_stitched_decoder`; None = published).
            lora: PEFT adapter folder or ``HJGO/VIST3A/<subfolder>``; ``"auto"`` picks the 1.3B / 14B adapter from
                ``wan``; None or ``"none"`` runs the base Wan model (not VIST3A: its videos rarely orbit).
            base: base AnySplat for the published decoder (default ``lhjiang/anysplat``).
            dtype: Wan dtype (published: float16); decoder_dtype: decoder dtype (default float32).
        """
        settings = settings or GenerationSettings()
        settings.check()
        if check_sources:
            check_model_sources(text_to_3d_sources(wan, decoder, lora, base), "TextTo3DPipeline.from_pretrained")
        pipe = load_wan_pipeline(wan, dtype=dtype, flow_shift=settings.flow_shift)
        if lora is not None and str(lora).lower() != "none":
            source = f"{DEFAULT_LORA_REPO}/{default_lora_subfolder(wan)}" if lora == "auto" else lora
            pipe.transformer = load_vist3a_lora(pipe.transformer, source)
        else:
            logger.warning("no VIST3A LoRA: sampling with the base Wan transformer (its videos are not trained to "
                           "orbit the scene; 3D quality will suffer)")
        dec = load_stitched_decoder(decoder, base=base, dtype=decoder_dtype, check=False)
        return cls(pipe, dec, settings)

    @classmethod
    def tiny(cls, seed: int = 0, decoder_kind: str = "anysplat", decoder: str | Path | None = None,
             lora: str | Path | None = None) -> TextTo3DPipeline:
        """``--preset tiny``: tiny random models, 64x64 video, 9 frames, 4 steps; CPU, offline, seconds.

        ``decoder`` / ``lora``: a decoder folder and a PEFT adapter folder trained on the tiny models (e.g. by
        ``training/train_stitched_decoder.py`` / ``training/align_drtune.py`` with ``--preset tiny`` and the same
        ``seed``) replace the random decoder / are applied to the tiny transformer."""
        from .presets import TINY_SETTINGS, tiny_decoder, tiny_wan_pipeline

        sources = [lora_source(lora)] + (decoder_sources(decoder) if decoder is not None else [])
        check_model_sources(sources, "TextTo3DPipeline.tiny")
        wan = tiny_wan_pipeline(seed)
        if lora is not None:
            wan.transformer = load_vist3a_lora(wan.transformer, lora)
        dec = tiny_decoder(seed, decoder_kind) if decoder is None else load_stitched_decoder(decoder, check=False)
        return cls(wan, dec, TINY_SETTINGS, untrained=True)

    @classmethod
    def micro(cls, lora: bool = True, model3d: str = "anysplat") -> TextTo3DPipeline:
        """``--preset micro``: the shipped micro models trained on the micro world (micro Wan + its DRTune LoRA +
        the micro stitched decoder of ``model3d``, ``"anysplat"`` or ``"mvdust3r"``; :mod:`vist3a.pipeline.presets`):
        9 frames of 64x64, 20 steps; CPU, offline, seconds. Prompts are checked against the micro world's vocabulary
        (unknown words are logged). The DRTune LoRA was aligned with the AnySplat decoder."""
        from .presets import (
            MICRO_SETTINGS,
            micro_decoder,
            micro_prompt_note,
            micro_wan_pipeline,
        )

        decoder = micro_decoder(model3d)  # checks model3d before the Wan loads
        pipe = cls(micro_wan_pipeline(lora=lora), decoder, MICRO_SETTINGS)
        pipe.prompt_note = micro_prompt_note
        return pipe

    # ------------------------------------------------------------------------------------------ placement
    def to(self, device: str | torch.device) -> TextTo3DPipeline:
        """Put every model on ``device`` (needs memory for all of them at once; see the README's table)."""
        check_device(str(device), "device")
        self._offload_device = None
        self.wan.to(device)
        self.decoder.to(device)
        return self

    def enable_model_cpu_offload(self, device: str | torch.device = "cuda") -> TextTo3DPipeline:
        """diffusers' model CPU offload for the Wan parts (one model on the GPU at a time) and the same policy by
        hand for the stitched decoder. Needs ``accelerate``."""
        check_device(str(device), "device")
        try:
            self.wan.enable_model_cpu_offload(device=device)
        except ImportError as err:
            raise ValueError(f"model CPU offload needs the accelerate package ({err}); `pip install accelerate` or "
                             "run without offload") from err
        self.decoder.to("cpu")
        self._offload_device = torch.device(device)
        return self

    def enable_sequential_cpu_offload(self, device: str | torch.device = "cuda") -> TextTo3DPipeline:
        """diffusers' sequential (per-layer) offload: least VRAM, much slower."""
        check_device(str(device), "device")
        try:
            self.wan.enable_sequential_cpu_offload(device=device)
        except ImportError as err:
            raise ValueError(f"sequential CPU offload needs the accelerate package ({err})") from err
        self.decoder.to("cpu")
        self._offload_device = torch.device(device)
        return self

    def enable_vae_tiling(self) -> TextTo3DPipeline:
        """Decode the video in spatial tiles (less VRAM at 512 px and above; diffusers' AutoencoderKLWan)."""
        self.wan.vae.enable_tiling()
        return self

    def enable_vae_slicing(self) -> TextTo3DPipeline:
        self.wan.vae.enable_slicing()
        return self

    @property
    def device(self) -> torch.device:
        """Where the models run (the GPU under CPU offload)."""
        return self._offload_device or self.wan._execution_device

    # ------------------------------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(self, prompt: str, *, negative_prompt: str | None = None, num_frames: int | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, flow_shift: float | None = None, seed: int | None = None,
                 prompt_template=_UNSET, return_frames: bool = True, progress: bool = True,
                 fast: bool | FastOptions | None = None) -> SceneOutput:
        """Generate one scene.

        Args:
            prompt: the scene description (non-empty); inserted into ``prompt_template`` (default: the published
                camera-orbit template; None uses the prompt as it is).
            negative_prompt: default the published one; ``""`` for none.
            num_frames (4k+1), height / width (multiples of 16), num_inference_steps, guidance_scale, flow_shift:
                None = the pipeline's settings (published: 13, 512, 512, 50, 7.5, 5.0).
            seed: the initial noise comes from a CPU generator with this seed (same noise on every device);
                None draws one and stores it in ``output.info["seed"]``.
            return_frames: keep the decoded video frames in the output (AnySplat decodes them anyway).
            progress: tqdm progress bar over the denoising steps.
            fast: True = the fast path (:data:`vist3a.pipeline.fast.FAST`: batched CFG, First Block Cache, 0.6x the
                steps, decoder in bf16 autocast on CUDA), or a :class:`~vist3a.pipeline.fast.FastOptions`; its
                measured quality cost vs the default is in ``bench/bench_fast_path.py``. None / False: the
                published path through diffusers' ``WanPipeline``.
        Returns a :class:`SceneOutput` (CPU tensors).
        """
        check_prompt(prompt)
        check_seed(seed)
        s = self.settings.replace(negative_prompt=negative_prompt, num_frames=num_frames, height=height, width=width,
                                  num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                  flow_shift=flow_shift)
        if prompt_template is not _UNSET:
            s = s.replace(prompt_template=prompt_template or "")
        s.check()
        text = apply_template(prompt, s.prompt_template)
        note = self.prompt_note(prompt) if self.prompt_note is not None else None
        if note:
            logger.warning("%s", note)
        if self.untrained:
            from .presets import TINY_WARNING

            logger.warning(TINY_WARNING)
        if getattr(self.wan.scheduler.config, "flow_shift", None) != s.flow_shift:
            self.wan.scheduler = make_scheduler(s.flow_shift)
        options = FAST if fast is True else (fast or None)
        if options is not None:
            if not isinstance(options, FastOptions):
                raise TypeError(f"fast must be True, False, None or a FastOptions, got {type(fast).__name__}")
            options.check()
            apply_fast_options(self.wan.transformer, options)
        steps = fast_steps(options, s.num_inference_steps)
        generator, seed = _generator(seed)
        self.wan.set_progress_bar_config(disable=not progress, desc="denoising")
        logger.info("sampling %d frames of %dx%d, %d steps, CFG %.2f, seed %d%s", s.num_frames, s.height, s.width,
                    steps, s.guidance_scale, seed, "" if options is None else f" (fast path: {options})")
        if options is None:
            latent = self.wan(prompt=text, negative_prompt=s.negative_prompt or None, height=s.height,
                              width=s.width, num_frames=s.num_frames, num_inference_steps=steps,
                              guidance_scale=s.guidance_scale, generator=generator, output_type="latent",
                              max_sequence_length=s.max_sequence_length).frames
        else:
            latent = sample_latent(self.wan, text, s.negative_prompt or None, height=s.height, width=s.width,
                                   num_frames=s.num_frames, num_inference_steps=steps,
                                   guidance_scale=s.guidance_scale, generator=generator,
                                   max_sequence_length=s.max_sequence_length, options=options, progress=progress)
        vae = self.wan.vae
        raw = to_raw_latent(vae, latent.to(dtype=vae.dtype))
        size3d = frames_size(self.decoder, s.height, s.width)
        frames = None
        # MVDUSt3R colours its points and splats with the frames (optional for it, required for AnySplat)
        if self.decoder.needs_frames or return_frames or self.decoder.kind == "mvdust3r":
            logger.info("decoding %d frames with the Wan VAE", s.num_frames)
            frames = decode_frames(vae, raw, self.device)
            frames3d = resize_frames(frames, size3d)
        else:
            frames3d = torch.zeros(1, s.num_frames, 3, *size3d)
        logger.info("stitched %s decoder on %d frames of %dx%d", self.decoder.kind, s.num_frames, *size3d)
        with decoder_autocast(options, self.device):
            gaussians, cameras, pointmap, depth = run_decoder(self.decoder, raw.float(), frames3d,
                                                              self._offload_device)
        info = {"prompt": prompt, "text": text, "seed": seed, "num_frames": s.num_frames, "height": s.height,
                "width": s.width, "steps": steps, "guidance_scale": s.guidance_scale,
                "flow_shift": s.flow_shift, "untrained": self.untrained, "prompt_note": note,
                "fast": None if options is None else options.__dict__.copy()}
        return SceneOutput(gaussians, cameras, pointmap, frames[0].cpu() if (frames is not None and return_frames)
                           else None, depth, raw.float().cpu(), info)
