"""LoRA for stitched decoders: the official (loralib) merge used by the published checkpoints, and peft for ours.

loralib conventions (``microsoft/LoRA``, used by the released VIST3A checkpoints), scaling = alpha / r:

* ``nn.Linear`` (out, in): ``lora_A`` (r, in), ``lora_B`` (out, r); ``dW = (B @ A) * scaling``.
* square ``nn.Conv2d`` (out, in, k, k): ``lora_A`` (r*k, in*k), ``lora_B`` (out*k, r*k);
  ``dW = (B @ A).view(out, in, k, k) * scaling`` -- a row-major reshape of the (out*k, in*k) product.

For our own finetuning we use peft (``LoraConfig`` + ``inject_adapter_in_model``) on every ``nn.Linear`` and
``nn.Conv2d`` of the kept part of the 3D model (not the stitching layer, which is trained in full). peft's Conv2d
LoRA factors differently (A = Conv2d(in, r, k), B = Conv2d(r, out, 1)); the two only meet in merged weights.
The official training recipe (``training/train_stitched_decoder.py --recipe official``) keeps loralib's Conv2d
factorisation: :func:`add_loralib_conv_lora` swaps square, ungrouped convs for :class:`LoralibConv2d` (an
``nn.Conv2d`` with ``lora_A`` (r*k, in*k) / ``lora_B`` (out*k, r*k) parameters, state-dict keys as in the published
checkpoints); :func:`merged_state_dict` merges both kinds.
Adapters are saved in peft's format: ``adapter_config.json`` + ``adapter_model.safetensors`` with keys relative to
the 3D model (``encoder.aggregator.frame_blocks.0.attn.qkv.lora_A.weight``; biases of LoRA layers, trained with
``bias="lora_only"`` as in the official recipe, as ``<module>.base_layer.bias``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "LoralibConv2d",
    "add_lora",
    "add_loralib_conv_lora",
    "has_lora",
    "load_lora_adapter",
    "lora_target_names",
    "loralib_delta",
    "loralib_target_modules",
    "merge_lora",
    "merged_state_dict",
    "save_lora_adapter",
]

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


# ------------------------------------------------------------------------------------------------ loralib (official)
def loralib_target_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules the official ``add_lora(target_modules=None)`` wraps: every ``nn.Linear`` and every ``nn.Conv2d``
    with a square kernel (ConvTranspose2d is not a Conv2d and gets none). Keys are module names in ``model``."""
    out = {}
    for name, mod in model.named_modules():
        if type(mod) is nn.Linear or (type(mod) is nn.Conv2d and mod.kernel_size[0] == mod.kernel_size[1]):
            out[name] = mod
    return out


def loralib_shapes(module: nn.Module, r: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Expected (lora_A, lora_B) shapes of ``module`` at rank ``r`` (see the module docstring)."""
    if isinstance(module, nn.Linear):
        return (r, module.in_features), (module.out_features, r)
    k = module.kernel_size[0]
    return (r * k, module.in_channels * k), (module.out_channels * k, r * k)


def loralib_delta(weight_shape: Iterable[int], lora_a: Tensor, lora_b: Tensor, scaling: float) -> Tensor:
    """loralib weight update ``(B @ A).view(weight_shape) * scaling`` (computed in float32 or better)."""
    weight_shape = tuple(weight_shape)
    if lora_b.shape[1] != lora_a.shape[0]:
        raise ValueError(f"LoRA: lora_B {tuple(lora_b.shape)} and lora_A {tuple(lora_a.shape)} do not chain")
    dtype = torch.promote_types(lora_a.dtype, torch.float32)
    prod = lora_b.to(dtype) @ lora_a.to(dtype)
    if prod.numel() != torch.Size(weight_shape).numel():
        raise ValueError(f"LoRA: B @ A has shape {tuple(prod.shape)}, cannot be viewed as the weight {weight_shape}")
    return prod.view(weight_shape) * scaling


@torch.no_grad()
def merge_loralib_(module: nn.Module, lora_a: Tensor, lora_b: Tensor, scaling: float) -> None:
    """In place: ``module.weight += loralib_delta(...)`` (added in float32, stored in the weight's dtype)."""
    w = module.weight
    module.weight.copy_((w.float() + loralib_delta(w.shape, lora_a.to(w.device), lora_b.to(w.device),
                                                   scaling)).to(w.dtype))


class LoralibConv2d(nn.Conv2d):
    """loralib's ``Conv2d`` LoRA (square kernel k, groups 1): ``weight`` / ``bias`` of the wrapped conv (shared, not
    copied) plus ``lora_A`` (r*k, in*k) (Kaiming-uniform, a = sqrt(5)) and ``lora_B`` (out*k, r*k) (zeros); the
    forward uses ``weight + (lora_B @ lora_A).view(weight.shape) * alpha / r`` (never merged in place)."""

    def __init__(self, conv: nn.Conv2d, r: int, alpha: float) -> None:
        k = conv.kernel_size[0]
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.groups != 1:
            raise ValueError(f"LoralibConv2d: needs a square, ungrouped conv, got kernel {conv.kernel_size}, groups "
                             f"{conv.groups}")
        with torch.device("meta"):
            super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                             conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        self.weight = conv.weight
        self.bias = conv.bias
        w = conv.weight
        self.r, self.lora_alpha, self.scaling = int(r), float(alpha), float(alpha) / int(r)
        self.lora_A = nn.Parameter(torch.zeros(r * k, conv.in_channels * k, device=w.device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(conv.out_channels * k, r * k, device=w.device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=5 ** 0.5)

    def delta_weight(self) -> Tensor:
        return (self.lora_B @ self.lora_A).view(self.weight.shape) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight + self.delta_weight().to(self.weight.dtype), self.bias)


def add_loralib_conv_lora(root: nn.Module, names: Iterable[str], r: int, alpha: float) -> list[str]:
    """Replace the convs ``names`` of ``root`` (square, ungrouped ``nn.Conv2d``) by :class:`LoralibConv2d` in place;
    their LoRA factors and biases become trainable, the weights stay frozen. Returns the names replaced."""
    done = []
    for name in names:
        mod = root.get_submodule(name)
        if type(mod) is not nn.Conv2d:
            raise ValueError(f"add_loralib_conv_lora: {name} is a {type(mod).__name__}, not an nn.Conv2d")
        new = LoralibConv2d(mod, r, alpha)
        new.weight.requires_grad_(False)
        if new.bias is not None:
            new.bias.requires_grad_(True)
        _set_module(root, name, new)
        done.append(name)
    logger.info("add_loralib_conv_lora: %d convs adapted (loralib factors, r=%s, alpha=%s)", len(done), r, alpha)
    return done


def _merge_loralib_entries(target: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with every :class:`LoralibConv2d`'s factors merged into its weight (and dropped)."""
    mods = {n: m for n, m in target.named_modules() if isinstance(m, LoralibConv2d)}
    if not mods:
        return state
    out = dict(state)
    for name, mod in mods.items():
        p = f"{name}." if name else ""
        out.pop(p + "lora_A", None)
        out.pop(p + "lora_B", None)
        w = out[p + "weight"]
        out[p + "weight"] = (w.float() + mod.delta_weight().detach().float()).to(w.dtype)
    return out


# ------------------------------------------------------------------------------------------------ peft (ours)
def lora_target_names(model: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` and ``nn.Conv2d`` in ``model`` (peft targets; includes non-square convs)."""
    return [n for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]


def _lora_root(target: nn.Module) -> nn.Module:
    """A StitchedDecoder's 3D model, or ``target`` itself."""
    return getattr(target, "model", target) if not isinstance(target, (nn.Linear, nn.Conv2d)) else target


def has_lora(target: nn.Module) -> bool:
    """True when peft LoRA layers are present (not yet merged)."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in target.modules())


def add_lora(target: nn.Module, r: int = 64, alpha: float = 32, dropout: float = 0.0,
             target_modules: list[str] | None = None, adapter_name: str = "default", bias: str = "lora_only",
             config=None) -> nn.Module:
    """Inject peft LoRA into a :class:`StitchedDecoder`'s 3D model (or any module) in place.

    Default targets: every ``nn.Linear`` and ``nn.Conv2d`` of the kept part (the official recipe: r=64, alpha=32,
    LoRA-layer biases trainable). Afterwards only LoRA factors and those biases require grad in the 3D model; a
    StitchedDecoder's stitching layer and DINO cls/register/mask tokens are marked trainable too (also trained
    officially). Returns ``target``.
    """
    from peft import LoraConfig, inject_adapter_in_model

    root = _lora_root(target)
    if has_lora(root):
        raise ValueError("add_lora: this model already has LoRA layers; merge_lora() first or load into it")
    if config is None:
        names = target_modules if target_modules is not None else lora_target_names(root)
        if not names:
            raise ValueError("add_lora: no nn.Linear / nn.Conv2d modules to adapt")
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(names), bias=bias)
    inject_adapter_in_model(config, root, adapter_name=adapter_name)
    if root is not target:
        for p in target.stitching.parameters():
            p.requires_grad_(True)
        pe = getattr(getattr(root, "aggregator", None), "patch_embed", None)
        for t in ((pe.cls_token, pe.register_tokens, pe.mask_token) if pe is not None else ()):
            t.requires_grad_(True)  # DINO's tokens (AnySplat / VGGT); MVDUSt3R's encoder has none
    logger.info("add_lora: %d modules adapted (r=%s, alpha=%s)", len(config.target_modules), config.r,
                config.lora_alpha)
    return target


def _lora_layers(root: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in root.named_modules() if isinstance(m, LoraLayer)}


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


@torch.no_grad()
def merge_lora(target: nn.Module, adapter_name: str = "default") -> nn.Module:
    """Merge peft LoRA into the base weights and remove the wrappers (plain nn.Linear / nn.Conv2d again), in
    place. Returns ``target``."""
    root = _lora_root(target)
    layers = _lora_layers(root)
    for name, layer in layers.items():
        layer.merge(adapter_names=[adapter_name])
        _set_module(root, name, layer.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if hasattr(root, attr):
            delattr(root, attr)
    logger.info("merge_lora: merged %d LoRA layers", len(layers))
    return target


@torch.no_grad()
def merged_state_dict(target: nn.Module, adapter_name: str = "default") -> dict[str, Tensor]:
    """``target.state_dict()`` as it would be after :func:`merge_lora`, without changing ``target``."""
    state = _merge_loralib_entries(target, target.state_dict())
    if not has_lora(target):
        return state
    out: dict[str, Tensor] = {}
    layers = {f"{n}." if n else "": m for n, m in _lora_layers(target).items()}
    for key, value in state.items():
        prefix = next((p for p in layers if key.startswith(p)), None)
        if prefix is None:
            out[key] = value
            continue
        rest = key[len(prefix):]
        if not rest.startswith("base_layer."):
            continue  # lora_A / lora_B / dropout entries
        rest = rest[len("base_layer."):]
        if rest == "weight":
            layer = layers[prefix]
            if adapter_name in layer.lora_A and adapter_name not in getattr(layer, "merged_adapters", []):
                value = (value.float() + layer.get_delta_weight(adapter_name).float()).to(value.dtype)
        out[prefix + rest] = value
    return out


def save_lora_adapter(target: nn.Module, folder: str | Path, adapter_name: str = "default") -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (peft format, keys relative to the 3D model)
    atomically."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from ..io.atomic import atomic_path, atomic_write

    root = _lora_root(target)
    if not has_lora(root) or adapter_name not in getattr(root, "peft_config", {}):
        raise ValueError(f"save_lora_adapter: no unmerged LoRA adapter {adapter_name!r} (add_lora first; a merged "
                         "decoder is saved with save_decoder)")
    config = root.peft_config[adapter_name]
    data = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.to_dict().items()}
    text = json.dumps(data, indent=2, default=str)
    tensors = {k: v.detach().contiguous().cpu() for k, v in
               get_peft_model_state_dict(root, adapter_name=adapter_name).items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / ADAPTER_WEIGHTS) as tmp:
        save_file(tensors, tmp)
    with atomic_write(folder / ADAPTER_CONFIG, "w") as fh:
        fh.write(text)
    return folder


def load_lora_adapter(target: nn.Module, folder: str | Path, adapter_name: str = "default") -> nn.Module:
    """Inject the adapter saved by :func:`save_lora_adapter` into ``target`` and load its weights (strict: every
    saved tensor must land, every LoRA factor must be present)."""
    from peft import LoraConfig, set_peft_model_state_dict

    from ..io.weights import load_safetensors, read_json_file

    folder = Path(folder)
    cfg_file, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not cfg_file.is_file() or not weights.is_file():
        raise FileNotFoundError(f"load_lora_adapter: need {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} in {folder}")
    read_json_file(cfg_file, "LoRA adapter config")  # a clear message for a damaged config, before peft reads it
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"load_lora_adapter: {cfg_file} is not a PEFT LoRA config ({err}); use the folder written "
                         "by save_lora_adapter") from None
    state = load_safetensors(weights, "LoRA adapter weights")
    root = _lora_root(target)
    names = dict(root.named_modules())
    lacking = sorted({k.split(".lora_")[0] for k in state if ".lora_" in k} - set(names))
    if lacking:
        raise ValueError(f"load_lora_adapter: the adapter in {folder} has LoRA for {len(lacking)} modules this model "
                         f"lacks ({', '.join(lacking[:6])}); it was trained on another cut or base model")
    add_lora(target, config=config, adapter_name=adapter_name)
    result = set_peft_model_state_dict(root, state, adapter_name=adapter_name)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in (getattr(result, "missing_keys", []) or []) if ".lora_" in k and adapter_name in k]
    if unexpected or missing:
        raise ValueError(f"load_lora_adapter: {folder} does not fit this model; unexpected keys "
                         f"{unexpected[:8]}, missing LoRA keys {missing[:8]} (another cut or base model?)")
    return target
