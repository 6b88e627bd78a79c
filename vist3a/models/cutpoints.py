"""Cut-point API shared by :class:`~vist3a.models.AnySplat` and :class:`~vist3a.models.VGGT` (stitching support).

Cut-point names:

* ``enc_blocks_k`` (k = 1 .. DINO depth): the tokens after the first k DINOv2 blocks, shape (B*S, 1 + R + N, C)
  including the cls and register tokens (the official VIST3A name: cutting at ``enc_blocks_k`` removes the patch
  conv and the first k blocks).
* ``agg_blocks_k`` (k = 1 .. aggregator depth): the state after k frame/global block pairs, a dict
  ``{"tokens": (B*S, P, C), "layers": {i: (B, S, P, 2C)}}`` where ``layers`` holds the already-computed
  intermediate layer outputs the heads will need (indices < k of ``intermediate_layer_idx`` and the last layer).

``capture(images, names)`` returns the activation at each named cut point from ONE forward pass (forward hooks; it
stops as soon as the last one is recorded unless ``run_heads=True``). ``forward_from(name, activation, images)``
runs the rest of the model and returns the same dict as ``forward``. For ``enc_blocks_k`` the activation may also
hold only the N patch tokens (B*S, N, C): then cls + interpolated position embedding + registers are added first,
exactly as the official stitched decoder does with stitching-layer features.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["CutPointMixin"]

_NAME = re.compile(r"^(enc|agg)_blocks_(\d+)$")


class _StopForward(Exception):
    pass


class CutPointMixin:
    """Needs ``self.aggregator`` and ``self._heads(layers: dict[int, Tensor], images, **kw) -> dict``."""

    def cut_points(self) -> list[str]:
        """All cut-point names, in forward order."""
        pe = self.aggregator.patch_embed
        dino = pe.first_block + len(pe.blocks)  # a stitched decoder's DINO starts at first_block (cut_front)
        return [f"enc_blocks_{k}" for k in range(max(1, pe.first_block), dino + 1)] + [
            f"agg_blocks_{k}" for k in range(1, self.aggregator.depth + 1)]

    def _parse(self, name: str) -> tuple[str, int]:
        m = _NAME.match(name)
        if m is None or name not in self.cut_points():
            pe = self.aggregator.patch_embed
            raise ValueError(f"{type(self).__name__}: unknown cut point {name!r}; valid: enc_blocks_"
                             f"{max(1, pe.first_block)}..{pe.first_block + len(pe.blocks)}, agg_blocks_1.."
                             f"{self.aggregator.depth}")
        return m.group(1), int(m.group(2))

    def _head_layers(self) -> set[int]:
        return set(self.config.intermediate_layer_idx) | {self.aggregator.depth - 1}

    def capture(self, images: Tensor, names: Sequence[str], run_heads: bool = False) -> dict[str, Any]:
        """Activations at ``names`` from one forward. With ``run_heads`` the full outputs come back under
        ``"outputs"``."""
        parsed = {n: self._parse(n) for n in names}
        order = self.cut_points()
        last = max(order.index(n) for n in names) if names else -1
        b, s = images.shape[:2]
        agg = self.aggregator
        captured: dict[str, Any] = {}
        layer_store: dict[Any, Tensor] = {}  # int keys: kept layers; ("frame", i): pending frame outputs
        handles = []

        def enc_hook(name):
            def hook(_mod, _inp, out):
                captured[name] = out
                if not run_heads and order.index(name) == last:
                    raise _StopForward
            return hook

        def frame_hook(i):
            def hook(_mod, _inp, out):
                layer_store[("frame", i)] = out
            return hook

        def global_hook(i, name_list):
            def hook(_mod, _inp, out):
                p = out.shape[1] // s
                frame_out = layer_store.pop(("frame", i)).reshape(b, s, p, -1)
                if i in self._head_layers():
                    layer_store[i] = torch.cat([frame_out, out.reshape(b, s, p, -1)], dim=-1)
                for name in name_list:
                    captured[name] = {"tokens": out.reshape(b * s, p, -1),
                                      "layers": {j: t for j, t in layer_store.items() if isinstance(j, int)}}
                if not run_heads and any(order.index(n) == last for n in name_list):
                    raise _StopForward
            return hook

        try:
            for name, (kind, k) in parsed.items():
                if kind == "enc":
                    if k <= agg.patch_embed.first_block:
                        raise ValueError(f"capture({name!r}): DINO blocks before {k} were removed (stitched model)")
                    blk = agg.patch_embed.blocks[k - 1 - agg.patch_embed.first_block]
                    handles.append(blk.register_forward_hook(enc_hook(name)))
            if any(kind == "agg" for kind, _ in parsed.values()):
                for i in range(agg.depth):
                    names_i = [n for n, (kind, k) in parsed.items() if kind == "agg" and k == i + 1]
                    handles.append(agg.frame_blocks[i].register_forward_hook(frame_hook(i)))
                    handles.append(agg.global_blocks[i].register_forward_hook(global_hook(i, names_i)))
            try:
                outputs = self.forward(images)
                if run_heads:
                    captured["outputs"] = outputs
            except _StopForward:
                pass
        finally:
            for h in handles:
                h.remove()
        return captured

    def forward_from(self, name: str, activation: Any, images: Tensor, **kwargs) -> dict[str, Any]:
        """Run the model from cut point ``name`` given its activation; ``images`` (B, S, 3, H, W) in [0, 1] are
        still needed by the heads (image size, and RGB for AnySplat's Gaussian head)."""
        kind, k = self._parse(name)
        agg = self.aggregator
        b, s, _, h, w = images.shape
        gh, gw = h // agg.patch_size, w // agg.patch_size
        keep = self._head_layers()
        dtype = agg.camera_token.dtype
        if kind == "enc":
            dino = agg.patch_embed
            tokens = activation.to(dtype)
            if tokens.shape[1] == gh * gw:  # patch features only: stitched-decoder path
                tokens = dino.add_prefix(tokens, gh, gw)
            elif tokens.shape[1] != dino.num_prefix_tokens + gh * gw:
                raise ValueError(f"forward_from({name!r}): expected {gh * gw} or {dino.num_prefix_tokens + gh * gw}"
                                 f" tokens for {h}x{w} images, got {tokens.shape[1]}")
            patch = dino.finish(dino.run_blocks(tokens, start=k))
            start_tokens, layers, start = agg.initial_tokens(patch, b, s), {}, 0
        else:
            start_tokens, layers, start = activation["tokens"].to(dtype), dict(activation["layers"]), k
            missing = sorted(i for i in keep if i < k and i not in layers)
            if missing:
                raise ValueError(f"forward_from({name!r}): activation lacks the earlier layer outputs {missing}")
        _, new = agg.run_layers(start_tokens, b, s, gh, gw, start=start, keep=keep)
        layers.update(new)
        return self._heads(layers, images, **kwargs)
