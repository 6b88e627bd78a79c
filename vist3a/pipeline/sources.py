"""Which models a run needs, as :class:`vist3a.checks.ModelSource` lists for :func:`vist3a.checks.check_model_sources`.

They mirror exactly what the loaders will open (:func:`~vist3a.pipeline.load_stitched_decoder`,
:func:`~vist3a.pipeline.wan.load_wan_pipeline`, :func:`~vist3a.pipeline.wan.load_vist3a_lora`), so a run that passes
the check finds every model, and a run that fails names ALL missing ones at once, before the first one loads.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..checks import ModelSource, check_model_sources, local_or_hub
from .settings import (
    DEFAULT_DECODER,
    DEFAULT_DECODER_FILE,
    DEFAULT_LORA_REPO,
    DEFAULT_WAN,
    LORA_SUBFOLDERS,
)

__all__ = ["decoder_sources", "lora_source", "text_to_3d_sources", "video_to_3d_sources", "wan_source"]

BASE_REPO = "lhjiang/anysplat"
_MODEL_WEIGHTS = "model.safetensors|model.pt|pytorch_model.bin|model.pth"
_WAN_PIPELINE_FILES = (
    "model_index.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors.index.json|transformer/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors.index.json|text_encoder/model.safetensors",
    "tokenizer/tokenizer_config.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
)
_WAN_VAE_FILES = ("vae/config.json", "vae/diffusion_pytorch_model.safetensors")


def wan_source(wan: str | os.PathLike | None, part: str = "pipeline") -> ModelSource:
    """The Wan 2.1 diffusers pipeline (``part="pipeline"``) or only its VAE (``"vae"``, for video -> 3D)."""
    text = os.fspath(wan or DEFAULT_WAN)
    local, hub = local_or_hub(text)
    what = "Wan 2.1 pipeline" if part == "pipeline" else "Wan 2.1 VAE"
    if hub:
        files = _WAN_PIPELINE_FILES if part == "pipeline" else _WAN_VAE_FILES
        return ModelSource(what, "--wan", text, repo=text, files=files,
                           fetch="" if part == "pipeline" else '--include "vae/*"')
    if local is not None and local.is_file():
        return ModelSource(what, "--wan", text, local=local,
                           validate=lambda: _raise(f"{local} is a file; pass a diffusers Wan folder (model_index.json, "
                                                   "transformer/, vae/, text_encoder/, tokenizer/)"))
    needs = ("model_index.json",) if part == "pipeline" else ("vae/config.json|config.json",)
    return ModelSource(what, "--wan", text, local=local, files=needs)


def lora_source(lora: str | os.PathLike | None, wan: str | os.PathLike | None = None) -> ModelSource | None:
    """The VIST3A transformer LoRA: ``"auto"`` (the adapter matching ``wan``), ``HJGO/VIST3A/<subfolder>``, a local
    PEFT folder, or None / ``"none"`` (no LoRA)."""
    if lora is None or str(lora).lower() == "none":
        return None
    if str(lora) == "auto":
        sub = LORA_SUBFOLDERS["14b" if "14b" in str(wan or DEFAULT_WAN).lower() else "1.3b"]
        lora = f"{DEFAULT_LORA_REPO}/{sub}"
    text = os.fspath(lora)
    local, hub = local_or_hub(text)
    what = "VIST3A transformer LoRA"
    files = ("adapter_config.json", "adapter_model.safetensors|adapter_model.bin")
    if hub:
        parts = text.split("/")
        if len(parts) != 3:
            return ModelSource(what, "--lora", text, local=Path(text), validate=lambda: _raise(
                f"--lora {text!r} is neither an existing folder nor '<owner>/<repo>/<subfolder>' (e.g. "
                f"{DEFAULT_LORA_REPO}/{LORA_SUBFOLDERS['1.3b']})"))
        repo, sub = "/".join(parts[:2]), parts[2]
        return ModelSource(what, "--lora", text, repo=repo, files=tuple(
            "|".join(f"{sub}/{f}" for f in entry.split("|")) for entry in files),
            fetch=f'--include "{sub}/*"', use=f"{{dir}}/{sub}")
    if local.is_file():
        return ModelSource(what, "--lora", text, local=local,
                           validate=lambda: _raise(f"{local} is a file; pass the PEFT adapter folder "
                                                   "(adapter_config.json + adapter_model.safetensors)"))
    return ModelSource(what, "--lora", text, local=local, files=files,
                       configs=(local / "adapter_config.json",),
                       weights=tuple(local / f for f in files[1].split("|")))


def _base_source(base: str | os.PathLike | None, flag: str = "--base", relative_to: Path | None = None
                 ) -> ModelSource:
    text = os.fspath(base) if base is not None else BASE_REPO
    path = Path(text).expanduser()
    if relative_to is not None and not path.is_absolute():  # a decoder folder's base: relative to that folder
        local, hub = local_or_hub(text)
        if not hub or (relative_to / text).exists() or text.count("/") != 1:
            local, hub = Path(os.path.normpath(relative_to / text)), False
    else:
        local, hub = (path, False) if path.exists() else local_or_hub(text)
    what = "base AnySplat"
    if hub:
        return ModelSource(what, flag, text, repo=text, files=(_MODEL_WEIGHTS,))
    if local.is_file():
        return ModelSource(what, flag, text, local=local, weights=(local,))
    return ModelSource(what, flag, text, local=local, files=(_MODEL_WEIGHTS,), configs=(local / "config.json",),
                       weights=tuple(local / f for f in _MODEL_WEIGHTS.split("|")))


def decoder_sources(decoder: str | os.PathLike | None, base: str | os.PathLike | None = None
                    ) -> list[ModelSource]:
    """The stitched decoder and, for the published ``.pth`` (and our ``weights: "lora"`` folders), its base model."""
    what = "stitched decoder"
    if decoder is None:
        return [ModelSource(what, "--decoder", f"{DEFAULT_DECODER}/{DEFAULT_DECODER_FILE}", repo=DEFAULT_DECODER,
                            files=(DEFAULT_DECODER_FILE,), fetch=DEFAULT_DECODER_FILE,
                            use=f"{{dir}}/{DEFAULT_DECODER_FILE}"), _base_source(base)]
    text = os.fspath(decoder)
    local = Path(text).expanduser()
    if text.endswith((".pth", ".pt")):
        if local.is_file():
            return [ModelSource(what, "--decoder", text, local=local, weights=(local,)), _base_source(base)]
        if text.startswith(DEFAULT_DECODER + "/") and text.count("/") == 2:
            name = text.rsplit("/", 1)[1]
            return [ModelSource(what, "--decoder", text, repo=DEFAULT_DECODER, files=(name,), fetch=name,
                                use=f"{{dir}}/{name}"), _base_source(base)]
        return [ModelSource(what, "--decoder", text, local=local)]  # reported: does not exist
    found, hub = local_or_hub(text)
    if hub and text.count("/") == 1:
        return [ModelSource(what, "--decoder", text, repo=text, files=("decoder_config.json", "model.safetensors"))]
    if found is None or not found.exists():
        return [ModelSource(what, "--decoder", text, local=local)]
    folder = found if found.is_dir() else found.parent
    sources = [ModelSource(what, "--decoder", text, local=folder, files=("decoder_config.json", "model.safetensors"),
                           weights=(folder / "model.safetensors",), validate=lambda: _decoder_config(folder))]
    cfg = _try_config(folder)
    if cfg is not None and cfg.get("weights") == "lora":
        src = str(cfg["base_model"]["source"])
        sources.append(_base_source(src, flag=f"base_model.source of {folder / 'decoder_config.json'}",
                                    relative_to=folder))
    return sources


def _decoder_config(folder: Path):
    """Config, weights header and (full-weights folders) every key and shape, without loading a weight."""
    from ..stitching.checkpoint import check_decoder_folder

    if (folder / "decoder_config.json").is_file() and (folder / "model.safetensors").is_file():
        return check_decoder_folder(folder)
    return None


def _try_config(folder: Path):
    from ..stitching.checkpoint import read_decoder_config

    try:
        return read_decoder_config(folder / "decoder_config.json")
    except (ValueError, OSError):
        return None  # reported by the decoder source's own check


def text_to_3d_sources(wan=None, decoder=None, lora="auto", base=None) -> list[ModelSource]:
    return [wan_source(wan), lora_source(lora, wan), *decoder_sources(decoder, base)]


def video_to_3d_sources(wan=None, decoder=None, base=None) -> list[ModelSource]:
    return [wan_source(wan, "vae"), *decoder_sources(decoder, base)]


def check_sources(sources, caller: str = "") -> None:
    """:func:`vist3a.checks.check_model_sources` (re-exported for the pipelines)."""
    check_model_sources(sources, caller)


def _raise(message: str):
    raise ValueError(message)
