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


def published_structure(decoder, r: int = 4) -> dict:
    """The published VIST3A checkpoint structure (the ``structure`` entry of vist3a_stitched_ckpt_keys.json) for
    any (tiny) stitched AnySplat decoder: loralib A/B for every Linear and square Conv2d, their biases, the
    stitching layer and the tokens, with the official dtypes (non-head biases and tokens bfloat16)."""
    from vist3a.stitching.lora import loralib_shapes, loralib_target_modules

    entries = []
    for name, mod in loralib_target_modules(decoder.model).items():
        a, b = loralib_shapes(mod, r)
        entries.append([f"{name}.lora_A", list(a), "float32"])
        if mod.bias is not None:
            entries.append([f"{name}.bias", list(mod.bias.shape), "float32" if "head" in name else "bfloat16"])
        entries.append([f"{name}.lora_B", list(b), "float32"])
    pe = decoder.model.aggregator.patch_embed
    sl = decoder.stitching
    return {"lora": {"entries": entries},
            "stitching_layer": {"entries": [["weight", list(sl.weight.shape), "float32"],
                                            ["bias", list(sl.bias.shape), "float32"]]},
            **{k: {"shape": list(getattr(pe, k).shape), "dtype": "bfloat16"}
               for k in ("mask_token", "cls_token", "register_tokens")}}


def published_checkpoint(structure: dict, dtypes: bool = False) -> dict:
    """A published-format checkpoint dict over ``structure`` with the golden README's VIST3A rule (section 6b):
    crc32 of each entry's own key (``stitching_layer.weight``, ``cls_token`` ...), no ``1 +`` rule. Values are float32
    (as the golden was made) unless ``dtypes``, which casts each entry to the structure's dtype (bf16 tokens ...)."""
    def make(key, shape, dtype):
        t = crc32_tensor(key, shape)
        return t.to(getattr(torch, dtype)) if dtypes else t

    return {
        "lora": {k: make(k, shape, dt) for k, shape, dt in structure["lora"]["entries"]},
        "stitching_layer": {k: make(f"stitching_layer.{k}", shape, dt)
                            for k, shape, dt in structure["stitching_layer"]["entries"]},
        **{k: make(k, structure[k]["shape"], structure[k]["dtype"])
           for k in ("mask_token", "cls_token", "register_tokens")},
    }


TINY_STITCHING = "conv3d_k5x3x3_o64_s1x2x2_p2x1x1"  # the released layer at the tiny models' width (64)


def tiny_stitched(kind: str = "anysplat", cut: str = "enc_blocks_2", config: str = TINY_STITCHING, seed: int = 0):
    """A tiny StitchedDecoder (crc32 weights; the stitching layer from ``seed``) and an uncut copy of its 3D model."""
    from vist3a.models import VGGT, AnySplat, AnySplatConfig, VGGTConfig
    from vist3a.stitching import StitchedDecoder, StitchingLayer

    cls, cfg = (AnySplat, AnySplatConfig.tiny()) if kind == "anysplat" else (VGGT, VGGTConfig.tiny())
    full = build_crc32(cls, cfg)
    base = build_crc32(cls, cfg)
    torch.manual_seed(seed)
    return StitchedDecoder(base, cut, StitchingLayer(config)).eval(), full
