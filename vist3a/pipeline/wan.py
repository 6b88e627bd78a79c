"""diffusers Wan 2.1 parts for VIST3A: loading (hub or local), the VIST3A LoRA, the UniPC scheduler, latent
(un)normalisation and frame decoding.

Latent spaces (stated once):

* **model space** -- what the Wan transformer denoises and ``WanPipeline(output_type="latent")`` returns:
  ``(z - latents_mean) / latents_std``, shape (B, 16, T_lat, H/8, W/8), T_lat = (T - 1) / 4 + 1;
* **raw** -- the VAE's own latent, ``z = z_model * latents_std + latents_mean`` (16 values each, from the VAE
  config). The VAE decodes raw latents and the stitched decoder eats raw latents.

Decoded frames are returned as (B, T, 3, H, W) in [0, 1] (diffusers gives (B, 3, T, H, W) in [-1, 1]).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .settings import DEFAULT_LORA_REPO, LORA_SUBFOLDERS

__all__ = [
    "decode_frames",
    "load_vist3a_lora",
    "load_wan_pipeline",
    "load_wan_vae",
    "make_scheduler",
    "resize_frames",
    "to_model_space",
    "to_raw_latent",
]

logger = logging.getLogger(__name__)

LORA_CONFIG = "adapter_config.json"
LORA_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # PEFT writes the first; older PEFT the second


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def _hub_error(what: str, repo: str, err: Exception, flag: str, file: str | None = None) -> OSError:
    missing = f"{repo}/{file}" if file else repo
    mode = "HF_HUB_OFFLINE is set" if _offline() else "the Hugging Face hub is unreachable or refused the request"
    return OSError(f"cannot load the {what}: {missing!r} is not in the local Hugging Face cache and {mode} "
                   f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Download it elsewhere "
                   f"(`hf download {repo} --local-dir <folder>`) and pass the local path with {flag} <folder>.")


# ============================================================================================ scheduler
def make_scheduler(flow_shift: float = 5.0):
    """UniPC multistep with flow prediction and flow sigmas (the published VIST3A sampler, shift 5.0)."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", num_train_timesteps=1000,
                                   use_flow_sigmas=True, flow_shift=float(flow_shift))


# ============================================================================================ loading
def load_wan_pipeline(source: str | Path, dtype: torch.dtype = torch.float16, flow_shift: float = 5.0):
    """``WanPipeline`` from a hub id (e.g. ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``) or a local diffusers folder, with
    the VIST3A scheduler. Kept on the CPU; the caller places it (``.to`` or model CPU offload)."""
    from diffusers import WanPipeline

    local = Path(str(source)).expanduser()
    if local.exists() and not local.is_dir():
        raise ValueError(f"--wan {source!r} is a file; pass a diffusers Wan folder (model_index.json, transformer/, "
                         "vae/, text_encoder/, tokenizer/) or a hub id such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    if local.is_dir() and not (local / "model_index.json").is_file():
        raise FileNotFoundError(f"{local}/model_index.json is missing: --wan must be a diffusers Wan pipeline folder "
                                "(e.g. `hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --local-dir DIR`)")
    try:
        pipe = WanPipeline.from_pretrained(str(local) if local.is_dir() else str(source), torch_dtype=dtype)
    except (OSError, ValueError) as err:
        if local.is_dir():
            raise
        raise _hub_error("Wan pipeline", str(source), err, "--wan") from err
    pipe.scheduler = make_scheduler(flow_shift)
    return pipe


def load_wan_vae(source: str | Path, dtype: torch.dtype = torch.float32):
    """``AutoencoderKLWan`` from a Wan pipeline folder / hub id (its ``vae/``) or a VAE folder."""
    from ..stitching.vae import load_diffusers_vae

    try:
        return load_diffusers_vae("wan", source, dtype)
    except (OSError, ValueError) as err:
        if Path(str(source)).expanduser().is_dir():
            raise  # a local folder: diffusers' own message names the missing file
        raise _hub_error("Wan VAE", str(source), err, "--wan", "vae") from err


def default_lora_subfolder(wan_source: str | Path) -> str:
    """The VIST3A LoRA matching a Wan checkpoint: 14B ids/folders get the 14B adapter, everything else 1.3B."""
    return LORA_SUBFOLDERS["14b" if "14b" in str(wan_source).lower() else "1.3b"]


def _lora_folder(source: str | Path) -> Path:
    """A local PEFT adapter folder, or ``HJGO/VIST3A/<subfolder>`` fetched through the hub cache."""
    local = Path(str(source)).expanduser()
    if local.is_dir():
        if not (local / LORA_CONFIG).is_file() or not any((local / w).is_file() for w in LORA_WEIGHTS):
            raise FileNotFoundError(f"LoRA folder {local} lacks {LORA_CONFIG} or {LORA_WEIGHTS[0]}; a PEFT adapter "
                                    f"folder holds both (e.g. {DEFAULT_LORA_REPO}/vist3a_1.3b_lora_ema)")
        return local
    text = str(source)
    parts = text.split("/")
    if len(parts) != 3:
        raise ValueError(f"--lora {text!r} is neither an existing folder nor '<owner>/<repo>/<subfolder>' "
                         f"(e.g. {DEFAULT_LORA_REPO}/vist3a_1.3b_lora_ema)")
    repo, sub = "/".join(parts[:2]), parts[2]
    from huggingface_hub import hf_hub_download

    try:
        folder = Path(hf_hub_download(repo, LORA_CONFIG, subfolder=sub)).parent
    except Exception as err:  # offline and not cached, no network, missing repository / file
        raise _hub_error("VIST3A transformer LoRA", repo, err, "--lora", f"{sub}/{LORA_CONFIG}") from err
    first_err = None
    for name in LORA_WEIGHTS:
        try:
            hf_hub_download(repo, name, subfolder=sub)
            return folder
        except Exception as err:  # noqa: BLE001 -- try the other weights name, report the first failure below
            first_err = first_err or err
    raise _hub_error("VIST3A transformer LoRA", repo, first_err, "--lora", f"{sub}/{LORA_WEIGHTS[0]}") from first_err


def load_vist3a_lora(transformer, source: str | Path, merge: bool = True):
    """Apply the VIST3A PEFT LoRA (r=8, alpha=16 on attn1/attn2 to_q/to_k/to_v/to_out.0) to a Wan transformer.

    ``source``: a local adapter folder or ``HJGO/VIST3A/vist3a_1.3b_lora_ema`` (``..._14b_...`` for 14B).
    ``merge=True`` folds the adapter into the weights (same outputs, no PEFT wrapper at sampling time).
    Returns the transformer to put back into the pipeline.
    """
    from peft import PeftModel

    from ..io.weights import load_weights, read_json_file

    folder = _lora_folder(source)
    # Read both files safely first: a damaged, mislabelled or unsafe adapter fails here with one clear message
    # (peft would re-raise torch's or safetensors' own errors).
    read_json_file(folder / LORA_CONFIG, "LoRA adapter config")
    weights = next(folder / w for w in LORA_WEIGHTS if (folder / w).is_file())
    stored = set(load_weights(weights, "LoRA adapter weights"))
    fix = "use the adapter trained for this Wan (vist3a_1.3b_lora_ema for 1.3B, vist3a_14b_lora_ema for 14B)"
    try:
        model = PeftModel.from_pretrained(transformer, str(folder))
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise ValueError(f"--lora {folder}: the adapter does not fit this Wan transformer ({first[:300]}); {fix}"
                         ) from None
    # peft only warns about tensors it could not place (and keeps those layers at their initial, no-op values):
    # an adapter for other modules would silently change nothing. Every stored tensor must land, none may lack.
    from peft.utils import get_peft_model_state_dict

    expected = set(get_peft_model_state_dict(model))
    missing, unexpected = sorted(expected - stored), sorted(stored - expected)
    if missing or unexpected:
        raise ValueError(f"--lora {folder}: the adapter does not fit this Wan transformer ({len(unexpected)} stored "
                         f"tensors have no place in it, e.g. {unexpected[:2]}; {len(missing)} are missing, e.g. "
                         f"{missing[:2]}); {fix}")
    logger.info("loaded the VIST3A transformer LoRA from %s", folder)
    return model.merge_and_unload() if merge else model


# ============================================================================================ latents
def _stats(vae, like: Tensor) -> tuple[Tensor, Tensor]:
    cfg = vae.config
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(cfg.latents_mean, device=like.device, dtype=like.dtype).view(shape)
    std = torch.tensor(cfg.latents_std, device=like.device, dtype=like.dtype).view(shape)
    if mean.numel() != like.shape[1]:
        raise ValueError(f"Wan VAE config has {mean.numel()} latents_mean values for a {like.shape[1]}-channel "
                         "latent")
    return mean, std


def to_raw_latent(vae, latent: Tensor) -> Tensor:
    """Model-space latent (pipeline output) -> raw VAE latent: ``z * latents_std + latents_mean``."""
    mean, std = _stats(vae, latent)
    return latent * std + mean


def to_model_space(vae, raw: Tensor) -> Tensor:
    """Raw VAE latent -> model space: ``(z - latents_mean) / latents_std``."""
    mean, std = _stats(vae, raw)
    return (raw - mean) / std


@torch.no_grad()
def decode_frames(vae, raw: Tensor, device: torch.device | str | None = None) -> Tensor:
    """Raw latent (B, 16, T_lat, h, w) -> frames (B, T, 3, 8h, 8w) float32 in [0, 1], T = (T_lat - 1) * 4 + 1.

    ``device``: where the decode runs (the execution device under CPU offload); default the VAE's device."""
    param = next(vae.parameters())
    video = vae.decode(raw.to(device=device or param.device, dtype=param.dtype), return_dict=False)[0]
    return ((video.float() + 1) / 2).clamp_(0, 1).permute(0, 2, 1, 3, 4).contiguous()


def resize_frames(frames: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, T, 3, H, W) -> (B, T, 3, *size), bilinear without antialiasing (the official resize of the decoded frames
    to 448), clamped to [0, 1]."""
    b, t, c, h, w = frames.shape
    if (h, w) == tuple(size):
        return frames
    x = F.interpolate(frames.reshape(b * t, c, h, w).float(), size=size, mode="bilinear", align_corners=False)
    return x.clamp_(0, 1).reshape(b, t, c, *size)
