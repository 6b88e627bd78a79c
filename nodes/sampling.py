"""Sampler nodes: WanVIST3ASampler (ComfyUI's own Wan 2.1 MODEL + CONDITIONING + the VIST3A LoRA, published
settings) and VIST3APromptTemplate (the published camera-orbit prompt convention)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from . import _comfy, _errors
from .decoding import CATEGORY, _tip

logger = logging.getLogger("vist3a.nodes")

LORA_13B = "HJGO/VIST3A/vist3a_1.3b_lora_ema"
LORA_14B = "HJGO/VIST3A/vist3a_14b_lora_ema"
NO_LORA = "none (base Wan)"
PRESETS = ["comfy", "micro", "tiny"]


def _local_adapters() -> list[str]:
    import folder_paths

    try:
        _comfy.model_folder()
        roots = folder_paths.get_folder_paths(_comfy.MODEL_FOLDER)
    except Exception:
        logger.exception("VIST3A: could not list models/vist3a")
        return []
    found = set()
    for root in map(Path, roots):
        if root.is_dir():
            for cfg in root.rglob("adapter_config.json"):
                if cfg.parent != root:
                    found.add(cfg.parent.relative_to(root).as_posix())
    return sorted(found)


def _adapter_folder(node: str, lora: str) -> Path:
    if lora in (LORA_13B, LORA_14B):
        from huggingface_hub import hf_hub_download

        folder = _comfy.model_folder() / "HJGO_VIST3A"
        sub = lora.rsplit("/", 1)[1]
        local = folder / sub
        if (local / "adapter_config.json").is_file() and (local / "adapter_model.safetensors").is_file():
            return local
        try:
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                hf_hub_download("HJGO/VIST3A", name, subfolder=sub, local_dir=str(folder))
        except Exception as err:
            raise ValueError(f"{node}: could not download {lora} into {folder} ({err}); put the PEFT adapter folder "
                             f"({sub}/adapter_config.json + adapter_model.safetensors) there by hand") from err
        return local
    path = _comfy.resolve_local(lora)
    if path is None or not (path / "adapter_config.json").is_file():
        raise ValueError(f"{node}: LoRA {lora!r} is not a PEFT adapter folder in models/vist3a/; pick a listed one")
    return path


def check_lora_available(lora: str | None) -> None:
    """The LoRA choice exists in models/vist3a/ (sound files) or can be downloaded now; one clear error otherwise."""
    from vist3a.checks import check_model_sources
    from vist3a.errors import MissingModelsError
    from vist3a.pipeline.sources import lora_source

    if lora is None or lora == NO_LORA:
        return
    if lora in (LORA_13B, LORA_14B):
        folder = _comfy.model_folder() / "HJGO_VIST3A"
        sub = lora.rsplit("/", 1)[1]
        files = [f"{sub}/adapter_config.json", f"{sub}/adapter_model.safetensors"]
        reason = _errors.hub_files_missing("HJGO/VIST3A", files, folder)
        if reason:
            raise MissingModelsError(_errors.download_message(
                [(f"VIST3A LoRA {sub}", "HJGO/VIST3A", f'--include "{sub}/*"', folder, reason)]))
        if (folder / files[0]).is_file():
            check_model_sources([lora_source(folder / sub)])
        return
    path = _comfy.resolve_local(lora)
    if path is None or not (path / "adapter_config.json").is_file():
        raise ValueError(f"LoRA {lora!r} is not a PEFT adapter folder in models/vist3a/; pick a listed one")
    check_model_sources([lora_source(path)])


def check_sampler_inputs(seed=None, steps=None, cfg=None, frames=None, width=None, height=None, flow_shift=None,
                         lora_strength=None) -> None:
    """Finite numbers in range (ComfyUI's own min/max let NaN through); None = fed by a link, checked later."""
    from vist3a.checks import check_integer, check_number, check_seed

    _errors.check_video(frames, width, height)
    if seed is not None:
        check_seed(seed, "seed")
    if steps is not None:
        check_integer(steps, "steps", lo=1, hi=1000, hint="published: 50")
    if cfg is not None:
        check_number(cfg, "cfg", lo=0, hi=100, hint="published: 7.5")
    if flow_shift is not None:
        check_number(flow_shift, "flow_shift", lo=0, hi=100, lo_open=True, hint="published: 5.0")
    if lora_strength is not None:
        check_number(lora_strength, "lora_strength", lo=-4, hi=4, hint="published: 1.0")


def apply_lora(node, model, lora_state, strength):
    """A clone of ComfyUI's MODEL with the (ComfyUI-format) VIST3A LoRA patched in; every module must match."""
    m = model.clone()
    if lora_state is None:
        return m
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(m.model, {})
    patches = comfy.lora.load_lora(lora_state, key_map)
    expected = sum(k.endswith(".lora_A.weight") for k in lora_state)
    if len(patches) != expected:
        raise ValueError(f"{node}: only {len(patches)} of {expected} VIST3A LoRA modules match this MODEL; "
                         "connect a Wan 2.1 T2V model (1.3B LoRA for 1.3B, 14B LoRA for 14B)")
    m.add_patches(patches, float(strength))
    return m


def load_lora_state(node, lora):
    """A LoRA choice -> ComfyUI-format state dict (None for no LoRA)."""
    if lora == NO_LORA:
        return None
    from .wan_lora import load_peft_adapter, peft_to_comfy

    check_lora_available(lora)
    adapter, alpha = load_peft_adapter(_adapter_folder(node, lora))
    return peft_to_comfy(adapter, alpha)


def sample_comfy(node, model, positive, negative, lora_state, strength, seed, steps, cfg, frames, width, height,
                 shift):
    """ComfyUI's MODEL -> raw Wan latent (B=1) with the LoRA patched in and flow shift ``shift`` (UniPC)."""
    import comfy.model_management as mm
    import comfy.model_sampling
    import comfy.sample

    m = apply_lora(node, model, lora_state, strength)

    class _FlowSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass

    sampling = _FlowSampling(m.model.model_config)
    sampling.set_parameters(shift=float(shift), multiplier=1000)
    m.add_object_patch("model_sampling", sampling)
    latent = torch.zeros(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device=mm.intermediate_device())
    if hasattr(comfy.sample, "fix_empty_latent_channels"):
        latent = comfy.sample.fix_empty_latent_channels(m, latent)
    noise = comfy.sample.prepare_noise(latent, int(seed))
    bar = _comfy.progress_bar(steps)

    def callback(step, _x0, _x, total):
        _comfy.check_interrupt()
        bar.update_absolute(step + 1, total)

    samples = comfy.sample.sample(m, noise, int(steps), float(cfg), "uni_pc", "simple", positive, negative, latent,
                                  denoise=1.0, callback=callback, seed=int(seed))
    return samples


def sample_preset(node, preset, prompt, seed, steps, cfg, frames, width, height, shift, fast=False):
    """A built-in diffusers Wan (``vist3a.pipeline.presets``) -> raw latent: ``micro`` (the shipped micro Wan with
    its DRTune LoRA, trained on the micro world; empty negative prompt) or ``tiny`` (untrained; plumbing tests)."""
    from vist3a.pipeline import PROMPT_TEMPLATE, apply_template, to_raw_latent
    from vist3a.pipeline.presets import (
        TINY_WARNING,
        micro_prompt_note,
        micro_wan_pipeline,
        tiny_wan_pipeline,
    )

    if preset == "micro":
        try:
            pipe = micro_wan_pipeline()
        except FileNotFoundError as err:
            raise ValueError(f"{node}: {err}") from None
        note = micro_prompt_note(prompt or "")
        if note:
            logger.warning("%s: %s", node, note)
        text, length = apply_template(prompt or "a red cube on grass under a blue sky", PROMPT_TEMPLATE), 64
    else:
        logger.warning("%s: %s", node, TINY_WARNING)
        pipe = tiny_wan_pipeline(0, float(shift))
        text, length = apply_template(prompt or "a test scene", None), 64
    from vist3a.pipeline.wan import make_scheduler

    pipe.scheduler = make_scheduler(float(shift))
    pipe.set_progress_bar_config(disable=True)
    bar = _comfy.progress_bar(steps)

    def on_step(_pipe, i, _t, kwargs):
        _comfy.check_interrupt()
        bar.update_absolute(i + 1, steps)
        return kwargs

    gen = torch.Generator("cpu").manual_seed(int(seed))
    negative = "" if preset == "micro" else None
    if fast:
        from vist3a.pipeline.fast import FAST, sample_latent

        def on_fast_step(i, total):
            _comfy.check_interrupt()
            bar.update_absolute(i + 1, total)

        latent = sample_latent(pipe, text, negative, height=height, width=width, num_frames=frames,
                               num_inference_steps=int(steps), guidance_scale=float(cfg), generator=gen,
                               max_sequence_length=length, options=FAST.replace(steps_scale=1.0, decoder_bf16=False),
                               callback=on_fast_step, progress=False)
        return to_raw_latent(pipe.vae, latent.float()).float().cpu()
    latent = pipe(prompt=text, negative_prompt=negative, height=height, width=width,
                  num_frames=frames, num_inference_steps=int(steps), guidance_scale=float(cfg), generator=gen,
                  output_type="latent", max_sequence_length=length, callback_on_step_end=on_step).frames
    return to_raw_latent(pipe.vae, latent.float()).float().cpu()


class WanVIST3ASampler:
    DESCRIPTION = ("Samples a multi-view VIST3A video latent with ComfyUI's Wan 2.1 T2V model: applies the VIST3A "
                   "LoRA and the published settings (13 frames, 512x512, UniPC with flow shift 5, CFG 7.5, 50 steps). "
                   "Encode the prompt with the camera-orbit template (VIST3A Prompt Template node). Returns a "
                   "standard LATENT (raw Wan VAE space) for the VIST3A decode nodes or VAEDecode. preset 'micro' "
                   "ignores the model and uses the small Wan shipped with the pack, trained on the micro world "
                   "(coloured primitives on a textured ground; 64x64, 9 frames; pair it with the micro-anysplat "
                   "decoder); 'tiny' uses an untrained tiny Wan (tests only).")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("samples",)
    OUTPUT_TOOLTIPS = ("Video latent (1, 16, (frames-1)/4+1, height/8, width/8) in the Wan VAE's raw space.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lora": ([LORA_13B, LORA_14B, *_local_adapters(), NO_LORA],
                     _tip("VIST3A transformer LoRA (PEFT); downloaded into models/vist3a/ on first use. Use the 14B "
                          "one with Wan 2.1 14B.")),
            "lora_strength": ("FLOAT", _tip("LoRA strength (published: 1.0).", default=1.0, min=-4.0, max=4.0,
                                            step=0.05)),
            "seed": ("INT", _tip("Noise seed.", default=0, min=0, max=0xFFFFFFFFFFFFFFFF)),
            "steps": ("INT", _tip("Denoising steps (published: 50).", default=50, min=1, max=1000)),
            "cfg": ("FLOAT", _tip("Classifier-free guidance (published: 7.5).", default=7.5, min=0.0, max=100.0,
                                  step=0.1)),
            "frames": ("INT", _tip("Video frames, 4k+1 (published: 13).", default=13, min=5, max=257, step=4)),
            "width": ("INT", _tip("Video width, multiple of 16 (published: 512).", default=512, min=16, max=2048,
                                  step=16)),
            "height": ("INT", _tip("Video height, multiple of 16 (published: 512).", default=512, min=16, max=2048,
                                   step=16)),
            "flow_shift": ("FLOAT", _tip("Flow-matching shift of the UniPC schedule (published: 5.0).", default=5.0,
                                         min=0.0, max=100.0, step=0.1)),
            "preset": (PRESETS, _tip("comfy: use the connected MODEL / CONDITIONING. micro: the shipped micro-world "
                                     "Wan (CPU, seconds; use 64x64, 9 frames, 20 steps, CFG 5, and the "
                                     "micro-anysplat decoder). tiny: an untrained tiny Wan built in memory (CI / "
                                     "plumbing tests).")),
        }, "optional": {
            "model": ("MODEL", _tip("Wan 2.1 T2V model (UNETLoader wan2.1_t2v_1.3B); required for preset comfy.")),
            "positive": ("CONDITIONING", _tip("Prompt encoded with the camera-orbit template (CLIPTextEncode).")),
            "negative": ("CONDITIONING", _tip("Negative prompt (the published one: VIST3A Prompt Template).")),
            "tiny_prompt": ("STRING", _tip("Prompt for presets micro and tiny (their models have their own text "
                                           "encoders); micro knows the micro world's words, e.g. 'a small red cube "
                                           "to the left of a large blue sphere on grass under a blue sky'.",
                                           default="a red sports car")),
            "fast": ("BOOLEAN", _tip("Fast path for presets micro and tiny (the pack's own Wan sampling): CFG batched in "
                                     "one forward and diffusers' First Block Cache; steps stay as set. With preset "
                                     "comfy, ComfyUI's sampler already batches cond and uncond: lower steps (e.g. "
                                     "30) to go faster.", default=False)),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, lora=None, lora_strength=None, seed=None, steps=None, cfg=None, frames=None, width=None,
                        height=None, flow_shift=None, preset=None):
        def check():
            _errors.check_choice("preset", preset, PRESETS)
            check_sampler_inputs(seed, steps, cfg, frames, width, height, flow_shift, lora_strength)
            if lora is not None:
                _errors.check_choice("lora", lora, cls.INPUT_TYPES()["required"]["lora"][0])
                if preset != "tiny":
                    check_lora_available(lora)

        return _errors.validation("WanVIST3ASampler", check)

    def sample(self, lora, lora_strength, seed, steps, cfg, frames, width, height, flow_shift, preset="comfy",
               model=None, positive=None, negative=None, tiny_prompt="a red sports car", fast=False):
        node = "WanVIST3ASampler"
        check_sampler_inputs(seed, steps, cfg, frames, width, height, flow_shift, lora_strength)
        _comfy.check_interrupt()
        if preset in ("micro", "tiny"):
            return ({"samples": sample_preset(node, preset, tiny_prompt, seed, steps, cfg, frames, width, height,
                                              flow_shift, fast=bool(fast))},)
        if preset != "comfy":
            raise ValueError(f"{node}: unknown preset {preset!r}; use comfy, micro or tiny")
        if model is None or positive is None or negative is None:
            raise ValueError(f"{node}: connect model (Wan 2.1 T2V), positive and negative conditioning, or set preset "
                             "to micro (the shipped micro-world Wan) or tiny (a test run)")
        if fast:
            logger.info("%s: fast applies to presets micro and tiny; ComfyUI's sampler already batches cond and "
                        "uncond (lower steps to go faster)", node)
        state = load_lora_state(node, lora)
        samples = sample_comfy(node, model, positive, negative, state, lora_strength, seed, steps, cfg, frames, width,
                               height, flow_shift)
        return ({"samples": samples},)


class VIST3AApplyLoRA:
    DESCRIPTION = ("Applies the VIST3A transformer LoRA (PEFT adapter, converted to ComfyUI's Wan key format) to a Wan "
                   "2.1 MODEL, for use with core KSampler: then set ModelSamplingSD3 shift 5, sampler uni_pc, "
                   "scheduler simple, 50 steps, CFG 7.5 and EmptyHunyuanLatentVideo 512x512 length 13.")
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The Wan model with the VIST3A LoRA patched in.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", _tip("Wan 2.1 T2V model (UNETLoader).")),
            "lora": ([LORA_13B, LORA_14B, *_local_adapters()],
                     _tip("VIST3A transformer LoRA (PEFT); downloaded into models/vist3a/ on first use.")),
            "strength": ("FLOAT", _tip("LoRA strength (published: 1.0).", default=1.0, min=-4.0, max=4.0,
                                       step=0.05)),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, lora=None, strength=None):
        def check():
            check_sampler_inputs(lora_strength=strength)
            if lora is not None:
                _errors.check_choice("lora", lora, cls.INPUT_TYPES()["required"]["lora"][0])
                check_lora_available(lora)

        return _errors.validation("VIST3AApplyLoRA", check)

    def apply(self, model, lora, strength=1.0):
        node = "VIST3AApplyLoRA"
        check_sampler_inputs(lora_strength=strength)
        return (apply_lora(node, model, load_lora_state(node, lora), strength),)


class VIST3APromptTemplate:
    DESCRIPTION = ("Formats a scene description with the published VIST3A camera-orbit template and returns it with "
                   "the published negative prompt; connect both to CLIPTextEncode's text input.")
    CATEGORY = CATEGORY
    FUNCTION = "format"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("prompt", "negative_prompt")
    OUTPUT_TOOLTIPS = ("The templated prompt.", "The published negative prompt.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scene": ("STRING", _tip("What the scene shows, e.g. 'a red sports car'.", multiline=True,
                                     default="a red sports car")),
            "use_template": ("BOOLEAN", _tip("Wrap the text in the camera-orbit template (published: on).",
                                             default=True)),
        }}

    def format(self, scene, use_template=True):
        from vist3a.pipeline import (
            DEFAULT_NEGATIVE_PROMPT,
            PROMPT_TEMPLATE,
            apply_template,
        )

        if not str(scene).strip():
            raise ValueError("VIST3APromptTemplate: scene is empty; describe the scene, e.g. 'a red sports car'")
        return (apply_template(str(scene).strip(), PROMPT_TEMPLATE if use_template else None),
                DEFAULT_NEGATIVE_PROMPT)


NODES = {
    "WanVIST3ASampler": (WanVIST3ASampler, "VIST3A Wan Sampler"),
    "VIST3APromptTemplate": (VIST3APromptTemplate, "VIST3A Prompt Template"),
    "VIST3AApplyLoRA": (VIST3AApplyLoRA, "VIST3A Apply Wan LoRA"),
}
