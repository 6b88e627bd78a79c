"""Helpers for the model tests: the golden README's deterministic crc32 initialisation and comparisons."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch
from torch import nn


def norm_weight_keys(model: nn.Module) -> set[str]:
    """State-dict keys that are the ``weight`` of a LayerNorm / GroupNorm (the README's ``1.0 + t`` case)."""
    keys = set()
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.LayerNorm, nn.GroupNorm)) and getattr(mod, "weight", None) is not None:
            keys.add(f"{name}.weight" if name else "weight")
    return keys


@torch.no_grad()
def crc32_init_(model: nn.Module, prefix: str = "") -> None:
    """Fill every floating state-dict tensor in place: randn(seed = crc32(prefix + key)) * 0.02 (+1 for norms)."""
    one_plus = norm_weight_keys(model)
    for key, tensor in model.state_dict().items():
        if not tensor.dtype.is_floating_point:
            continue
        full = prefix + key
        g = torch.Generator().manual_seed(zlib.crc32(full.encode("utf-8")))
        t = torch.randn(tuple(tensor.shape), generator=g, dtype=torch.float32) * 0.02
        if key in one_plus:
            t = 1.0 + t
        tensor.copy_(t)


def build_crc32(cls, config=None, prefix: str = ""):
    """Build ``cls(config)`` on the meta device, materialise on CPU (float32) and crc32-initialise it."""
    with torch.device("meta"):
        model = cls(config) if config is not None else cls()
    model = model.to_empty(device="cpu").float()
    crc32_init_(model, prefix)
    return model.eval()


def load_key_listing(golden_dir: Path, name: str) -> dict:
    return json.loads((Path(golden_dir) / name).read_text())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| (the README's metric)."""
    a, b = a.double(), b.double()
    denom = b.abs().max().item()
    return (a - b).abs().max().item() / (denom if denom > 0 else 1.0)


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def crc32_tensor(key: str, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32) * 0.02


@torch.no_grad()
def apply_stitched_crc32_checkpoint(model: nn.Module, ckpt_listing: dict, cut: int = 2, scaling: float = 0.5
                                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-only emulation of the official VIST3A loading (README section 6b) on our AnySplat: LoRA entries
    (crc32 of their own keys) merged into the weights, LoRA-layer biases replaced, cls/register tokens replaced.
    Checkpoint DINO block j is our block j + cut. Returns the stitching conv (weight, bias)."""
    import re

    def our_name(key: str) -> str:
        return re.sub(r"^encoder\.aggregator\.patch_embed\.blocks\.(\d+)\.",
                      lambda m: f"encoder.aggregator.patch_embed.blocks.{int(m.group(1)) + cut}.", key)

    entries = {k: shape for k, shape, _dtype in ckpt_listing["structure"]["lora"]["entries"]}
    modules = dict(model.named_modules())
    for key, shape in entries.items():
        mod_name, kind = key.rsplit(".", 1)
        mod = modules[our_name(mod_name)]
        if kind == "bias":
            mod.bias.copy_(crc32_tensor(key, shape))
        elif kind == "lora_A":
            a = crc32_tensor(key, shape)
            b = crc32_tensor(f"{mod_name}.lora_B", entries[f"{mod_name}.lora_B"])
            mod.weight.add_((b @ a).view(mod.weight.shape) * scaling)
    pe = model.encoder.aggregator.patch_embed
    pe.cls_token.copy_(crc32_tensor("cls_token", pe.cls_token.shape))
    pe.register_tokens.copy_(crc32_tensor("register_tokens", pe.register_tokens.shape))
    pe.mask_token.copy_(crc32_tensor("mask_token", pe.mask_token.shape))
    sl = ckpt_listing["structure"]["stitching_layer"]["entries"]
    shapes = {k: s for k, s, _ in sl}
    return crc32_tensor("stitching_layer.weight", shapes["weight"]), crc32_tensor("stitching_layer.bias",
                                                                                  shapes["bias"])
