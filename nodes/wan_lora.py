"""The VIST3A transformer LoRA (a PEFT adapter on diffusers' ``WanTransformer3DModel``) in the key format ComfyUI's
LoRA loader accepts for its native Wan 2.1 model. Pure functions (no ComfyUI import).

ComfyUI names Wan weights as the original Wan code does (``blocks.0.self_attn.q``) under ``diffusion_model.``, and
``comfy.lora.model_lora_keys_unet`` maps every ``diffusion_model.<name>`` weight to itself (the "generic" format); its
LoRA adapter reads ``<name>.lora_B.weight`` / ``<name>.lora_A.weight`` and ``<name>.alpha`` (scale = alpha / rank,
1 when absent). PEFT scales by ``lora_alpha / r``, so :func:`peft_to_comfy` writes ``alpha = lora_alpha`` for every
module. Diffusers' module names are renamed back to the original Wan names (the inverse of diffusers' Wan
conversion).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

__all__ = ["diffusers_to_wan_name", "load_peft_adapter", "peft_to_comfy"]

_BLOCK_RENAMES = [
    ("attn1.to_q", "self_attn.q"), ("attn1.to_k", "self_attn.k"), ("attn1.to_v", "self_attn.v"),
    ("attn1.to_out.0", "self_attn.o"), ("attn1.norm_q", "self_attn.norm_q"), ("attn1.norm_k", "self_attn.norm_k"),
    ("attn2.to_q", "cross_attn.q"), ("attn2.to_k", "cross_attn.k"), ("attn2.to_v", "cross_attn.v"),
    ("attn2.to_out.0", "cross_attn.o"), ("attn2.norm_q", "cross_attn.norm_q"), ("attn2.norm_k", "cross_attn.norm_k"),
    ("attn2.add_k_proj", "cross_attn.k_img"), ("attn2.add_v_proj", "cross_attn.v_img"),
    ("attn2.norm_added_k", "cross_attn.norm_k_img"),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"), ("norm2", "norm3"), ("scale_shift_table", "modulation"),
]
_TOP_RENAMES = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "proj_out": "head.head",
    "scale_shift_table": "head.modulation",
    "patch_embedding": "patch_embedding",
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")
_PREFIXES = ("base_model.model.", "transformer.", "diffusion_model.", "model.")


def diffusers_to_wan_name(name: str) -> str:
    """Diffusers Wan module name -> original Wan / ComfyUI name (``blocks.3.attn1.to_q`` -> ``blocks.3.self_attn.q``).
    Raises ValueError for names it does not know."""
    m = _BLOCK.match(name)
    if m:
        index, rest = m.groups()
        for src, dst in _BLOCK_RENAMES:
            if rest == src:
                return f"blocks.{index}.{dst}"
        raise ValueError(f"unknown Wan block module {name!r}")
    if name in _TOP_RENAMES:
        return _TOP_RENAMES[name]
    raise ValueError(f"unknown Wan module {name!r}")


def peft_to_comfy(state: dict[str, torch.Tensor], lora_alpha: float, prefix: str = "diffusion_model."
                  ) -> dict[str, torch.Tensor]:
    """PEFT adapter state dict (diffusers Wan names) -> ComfyUI LoRA state dict:
    ``diffusion_model.<wan name>.lora_A.weight`` / ``.lora_B.weight`` / ``.alpha``."""
    out: dict[str, torch.Tensor] = {}
    modules = set()
    for key, value in state.items():
        name = key
        for p in _PREFIXES:
            if name.startswith(p):
                name = name[len(p):]
                break
        m = _LORA.match(name)
        if m is None:
            raise ValueError(f"VIST3A LoRA: unexpected key {key!r}: only lora_A / lora_B weights are supported")
        wan = diffusers_to_wan_name(m.group("module"))
        out[f"{prefix}{wan}.lora_{m.group('ab')}.weight"] = value
        modules.add(wan)
    for wan in modules:
        if f"{prefix}{wan}.lora_A.weight" not in out or f"{prefix}{wan}.lora_B.weight" not in out:
            raise ValueError(f"VIST3A LoRA: {wan} lacks its lora_A or lora_B weight")
        out[f"{prefix}{wan}.alpha"] = torch.tensor(float(lora_alpha))
    return out


def load_peft_adapter(folder: str | Path) -> tuple[dict[str, torch.Tensor], float]:
    """A PEFT adapter folder -> (state dict, lora_alpha). Reads ``adapter_model.safetensors`` (or ``.bin``)."""
    from vist3a.io.weights import load_weights, read_json_file

    folder = Path(folder)
    config = read_json_file(folder / "adapter_config.json", "LoRA adapter config")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError("VIST3A LoRA: per-module rank/alpha patterns are not supported")
    try:
        alpha = float(config.get("lora_alpha", config.get("r", 1)))
    except (TypeError, ValueError):
        raise ValueError(f"VIST3A LoRA: {folder / 'adapter_config.json'}: lora_alpha must be a number, got "
                         f"{config.get('lora_alpha')!r}") from None
    st = folder / "adapter_model.safetensors"
    return load_weights(st if st.is_file() else folder / "adapter_model.bin", "LoRA adapter weights"), alpha
