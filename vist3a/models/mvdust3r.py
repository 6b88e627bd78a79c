"""MVDUSt3R (facebookresearch/mvdust3r, checkpoints ``Zhenggang/MV-DUSt3R``): images -> pointmaps + Gaussians.

Both released variants, one class (the state dict matches the official ``AsymmetricCroCo3DStereoMultiView`` key for
key):

* **MV-DUSt3R** (``MVD.pth``, ``MVDUSt3RConfig()``, n_ref = 1): view 0 is the reference;
* **MV-DUSt3R+** (``MVDp_s1.pth`` / ``MVDp_s2.pth``, ``MVDUSt3RConfig.plus()``, n_ref = 4): 4 reference paths
  (path r uses view r as reference) that exchange information through ``dec_same_view_blocks``.

``MVDUSt3R()(images)`` takes (B, V, 3, H, W) in **[0, 1]** (mapped to the official [-1, 1] inside), H and W multiples
of 16 (the released models were trained at 224 x 224), V >= 2 (MV-DUSt3R+: V >= 4). It returns a dict, every entry
in **input-view order** with a path axis R (R = 1 for MV-DUSt3R, n_ref for MV-DUSt3R+):

* ``pts3d`` (B, R, V, H, W, 3): each view's points in the camera frame of path r's reference view (view r), OpenCV
  axes (x right, y down, z forward), arbitrary scale (DUSt3R's); ``conf`` (B, R, V, H, W) >= 1;
* ``rgb`` (B, R, V, H, W, 3) raw SH-DC colour, ``opacity`` (B, R, V, H, W) in (0, 1), ``scale`` (B, R, V, H, W, 3)
  (0.1 * raw, may be negative), ``rotation`` (B, R, V, H, W, 4) unit quaternions, wxyz: one Gaussian per pixel
  centred at that pixel's ``pts3d``;
* ``grid`` (gh, gw) token grid.

Official slot layout vs ours: the official code swaps slot 0 and slot r in path r (``swap_ref``), so its ``pred1`` is
the reference view; here every path lists the views in input order (the golden's layout).

Deviations (deliberate, all documented): inputs in [0, 1]; portrait inputs are not transposed (the official
``landscape_only`` wrapper returns portrait outputs as (W, H)); ``eval()`` BatchNorm statistics (the official demo
never calls ``eval()``, its BatchNorm runs on batch statistics: a 1.5e-4 relative change of ``pts3d``).

Stitching: cut points ``enc_blocks_k`` (k = 1 .. encoder depth) are the encoder tokens (B*V, N, 1024) after k CroCo
blocks (``capture`` / ``forward_from``, as AnySplat and VGGT). :meth:`MVDUSt3R.predict` wraps path 0 into a
:class:`~vist3a.Pointmap` and :class:`~vist3a.Gaussians` (see :func:`mvdust3r_gaussians`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..cameras import Cameras
from ..gaussians import Gaussians
from ..pointmap import Pointmap
from ..sh import rgb_to_sh_dc
from .config import MVDUSt3RConfig
from .croco import (
    CROCO_NORM_EPS,
    DecoderBlock,
    PatchEmbed16,
    encoder_block,
    patch_positions,
)
from .geometry import cameras_from_pointmap
from .heads.mvdust3r import GaussianPixelHead, LinearPts3dHead
from .rope import RotaryEmbedding2D

__all__ = ["MVDUSt3R", "MVDUSt3RPrediction", "mvdust3r_gaussians"]

logger = logging.getLogger(__name__)

_CUT = re.compile(r"^enc_blocks_(\d+)$")
#: official render-time clip of the Gaussian scales, in units of the point cloud's mean distance (DUSt3R avg_dis)
SCALE_CLIP = (1e-4, 4e-3)
_FIELDS = ("pts3d", "conf", "rgb", "opacity", "scale", "rotation")


@dataclass
class MVDUSt3RPrediction:
    """Per batch item (one reference path, world = the camera frame of its reference view): ``pointmaps[b]``
    (:class:`Pointmap`), ``gaussians[b]`` (:class:`Gaussians`, one per pixel) and ``cameras[b]`` (:class:`Cameras`
    estimated from the pointmap by :func:`~vist3a.models.geometry.cameras_from_pointmap`: MVDUSt3R predicts none);
    ``depth`` (B, V, H, W) z in each view's estimated camera; ``raw`` is the forward dict."""

    pointmaps: list[Pointmap]
    gaussians: list[Gaussians]
    cameras: list[Cameras]
    depth: Tensor
    raw: dict[str, Any]


def _others(v: int, device=None) -> Tensor:
    """(v, v-1) index table: row i lists every view except i, in order."""
    idx = torch.arange(v, device=device)
    return torch.stack([torch.cat([idx[:i], idx[i + 1:]]) for i in range(v)])


class MVDUSt3R(nn.Module):
    """See the module docstring. Submodule names follow the official checkpoint."""

    def __init__(self, config: MVDUSt3RConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or MVDUSt3RConfig()
        self.rope = RotaryEmbedding2D(cfg.rope_freq)
        enc, dec = cfg.enc_embed_dim, cfg.dec_embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec))  # in the checkpoint, unused by the forward
        self.patch_embed: PatchEmbed16 | None = PatchEmbed16(enc, cfg.patch_size)
        self.enc_blocks = nn.ModuleList(encoder_block(enc, cfg.enc_num_heads, cfg.mlp_ratio, self.rope)
                                        for _ in range(cfg.enc_depth))
        self.enc_norm = nn.LayerNorm(enc, eps=CROCO_NORM_EPS)
        self.first_block = 0  # > 0 once the front was cut (stitched decoder)
        self.decoder_embed = nn.Linear(enc, dec)
        # micro-world option (config.view_embeddings; absent from every release): one learnt vector per view position
        self.view_embed = (nn.Parameter(torch.randn(cfg.view_embeddings, dec) * 0.02) if cfg.view_embeddings > 0
                           else None)

        def blocks() -> nn.ModuleList:
            return nn.ModuleList(DecoderBlock(dec, cfg.dec_num_heads, cfg.mlp_ratio, self.rope)
                                 for _ in range(cfg.dec_depth))

        self.dec_blocks = blocks()
        self.dec_blocks2 = blocks()
        self.dec_same_view_blocks = blocks() if cfg.multi_ref else None
        self.dec_norm = nn.LayerNorm(dec, eps=CROCO_NORM_EPS)
        self.downstream_head1 = LinearPts3dHead(dec, cfg.patch_size, cfg.pts_skip, cfg.skip_channels)
        self.downstream_head2 = LinearPts3dHead(dec, cfg.patch_size, cfg.pts_skip, cfg.skip_channels)
        self.downstream_GS_head = nn.ModuleList(GaussianPixelHead(dec, cfg.patch_size, cfg.sh_degree)
                                                for _ in range(2))

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def dtype(self) -> torch.dtype:
        return self.enc_norm.weight.dtype

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def embed_dim(self) -> int:
        """Encoder width (the stitching layer's output channels)."""
        return self.config.enc_embed_dim

    def _check_images(self, images: Tensor) -> tuple[int, int, int, int]:
        if not isinstance(images, Tensor) or images.ndim != 5 or images.shape[2] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"MVDUSt3R: images must be (B, V, 3, H, W) in [0, 1], got {shape}")
        b, v, _, h, w = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"MVDUSt3R: image height and width must be multiples of {p}, got {h}x{w}; resize or "
                             f"crop (the released models were trained at 224x224)")
        need = max(2, self.config.n_ref)
        if v < need:
            raise ValueError(f"MVDUSt3R{'+' if self.config.multi_ref else ''}: needs at least {need} views, got {v}"
                             + (" (one reference path per view for the first n_ref views)" if self.config.multi_ref
                                else "; for a single image pass it twice"))
        return b, v, h, w

    # ------------------------------------------------------------------------------------------ encoder
    def embed(self, images: Tensor) -> Tensor:
        """images (B, V, 3, H, W) in [0, 1] -> patch tokens (B*V, N, C_enc) (before the first block)."""
        if self.patch_embed is None:
            raise ValueError("MVDUSt3R: this model was cut for stitching (no patch embedding); feed tokens with "
                             f"forward_from('enc_blocks_{self.first_block}', ...)")
        b, v, _, h, w = images.shape
        x = images.reshape(b * v, 3, h, w).to(self.dtype) * 2.0 - 1.0
        return self.patch_embed(x)

    def run_encoder(self, tokens: Tensor, grid: tuple[int, int], start: int = 0, stop: int | None = None,
                    taps: Sequence[int] = (), final_norm: bool = True) -> tuple[Tensor, dict[int, Tensor]]:
        """Encoder blocks ``start .. stop-1`` (original indices) on tokens (B*V, N, C) -> (tokens after ``enc_norm``
        if ``final_norm`` and the last block ran, else the raw state; {k: state after k blocks for k in taps})."""
        stop = self.first_block + len(self.enc_blocks) if stop is None else stop
        if start < self.first_block:
            raise ValueError(f"MVDUSt3R: encoder blocks before {self.first_block} were removed (stitched model)")
        pos = patch_positions(tokens.shape[0], *grid, device=tokens.device)
        x, caught = tokens, {}
        for i in range(start, stop):
            x = self.enc_blocks[i - self.first_block](x, pos=pos)
            if i + 1 in taps:
                caught[i + 1] = x
        if final_norm and stop == self.first_block + len(self.enc_blocks):
            x = self.enc_norm(x)
        return x, caught

    # ------------------------------------------------------------------------------------------ decoder
    def _ref_mask(self, v: int, device) -> Tensor:
        """(R, V) bool: slot (r, v) is path r's reference view (view r; R = 1 for MV-DUSt3R)."""
        r = self.config.n_ref
        return torch.arange(r, device=device)[:, None] == torch.arange(v, device=device)[None, :]

    def decode(self, enc_tokens: Tensor, b: int, v: int, grid: tuple[int, int], keep_layers: bool = False
               ) -> tuple[Tensor, list[dict[str, Tensor]]]:
        """Multi-view decoder.

        Args:
            enc_tokens: encoder output (B*V, N, C_enc) (after ``enc_norm``), views in input order.
        Returns:
            tokens (B, R, V, N, C_dec) after ``dec_norm`` and, with ``keep_layers``, one dict per layer:
            ``"cross_view"`` (B, R, V, N, C) the state after the cross-view step and (MV-DUSt3R+) ``"same_view"``
            after the same-view step, both before ``dec_norm``.
        """
        cfg = self.config
        r = cfg.n_ref
        n = enc_tokens.shape[1]
        x = self.decoder_embed(enc_tokens).reshape(b, 1, v, n, -1)
        if self.view_embed is not None:
            if v > self.view_embed.shape[0]:
                raise ValueError(f"MVDUSt3R: this model has view embeddings for {self.view_embed.shape[0]} views "
                                 f"(an ordered clip), got {v} views")
            x = x + self.view_embed[:v].to(x.dtype)[None, None, :, None, :]
        x = x.expand(b, r, v, n, -1)
        c = x.shape[-1]
        dev = x.device
        ref = self._ref_mask(v, dev).reshape(-1)               # (R*V,)
        others = _others(v, dev)                               # (V, V-1)
        paths = _others(r, dev) if r > 1 else None             # (R, R-1)
        pos = patch_positions(1, *grid, device=dev)[0]         # (N, 2)
        layers: list[dict[str, Tensor]] = []

        def run(block: nn.Module, q: Tensor, mem: Tensor) -> Tensor:
            """q (M, N, C), mem (M, K, N, C) -> block(q, memory = mem's K views concatenated)."""
            m, k = mem.shape[:2]
            qpos = pos.expand(m, -1, -1)
            mpos = pos.repeat(k, 1).expand(m, -1, -1)
            return block(q, mem.reshape(m, k * n, c), qpos, mpos)

        for i in range(cfg.dec_depth):
            # 1. cross-view step inside each path: memory = the path's other views (previous states)
            mem = x[:, :, others]                                            # (B, R, V, V-1, N, C)
            flat_x, flat_m = x.reshape(b, r * v, n, c), mem.reshape(b, r * v, v - 1, n, c)
            y = torch.empty_like(flat_x)
            y[:, ref] = run(self.dec_blocks[i], flat_x[:, ref].reshape(-1, n, c),
                            flat_m[:, ref].reshape(-1, v - 1, n, c)).reshape(b, -1, n, c)
            y[:, ~ref] = run(self.dec_blocks2[i], flat_x[:, ~ref].reshape(-1, n, c),
                             flat_m[:, ~ref].reshape(-1, v - 1, n, c)).reshape(b, -1, n, c)
            y = y.reshape(b, r, v, n, c)
            record = {"cross_view": y} if keep_layers else {}
            # 2. same-view step across paths (MV-DUSt3R+): memory = the same view in the other paths
            if paths is not None:
                mem = y[:, paths].transpose(2, 3)                            # (B, R, V, R-1, N, C)
                y = run(self.dec_same_view_blocks[i], y.reshape(-1, n, c),
                        mem.reshape(-1, r - 1, n, c)).reshape(b, r, v, n, c)
                if keep_layers:
                    record["same_view"] = y
            layers.append(record)
            x = y
        return self.dec_norm(x), layers

    # ------------------------------------------------------------------------------------------ heads
    def heads(self, dec_tokens: Tensor, images: Tensor | None, grid: tuple[int, int], with_skip: bool = True
              ) -> dict[str, Tensor]:
        """dec_tokens (B, R, V, N, C) after ``dec_norm``; images (B, V, 3, H, W) in [0, 1] (the point head's skip
        branch reads them; None = mid-grey) -> the output dict of the module docstring. ``with_skip=False`` leaves
        the skip branch out (its effect on ``pts3d`` is ~1e-4 relative; it is most of the head's cost)."""
        b, r, v, n, c = dec_tokens.shape
        p = self.patch_size
        h, w = grid[0] * p, grid[1] * p
        ref = self._ref_mask(v, dec_tokens.device).reshape(-1)
        tok = dec_tokens.reshape(b, r * v, n, c)
        img = None
        if images is not None and self.config.pts_skip and with_skip:
            img = (images.to(tok.dtype) * 2.0 - 1.0)[:, None].expand(b, r, v, 3, h, w).reshape(b, r * v, 3, h, w)
        elif self.config.pts_skip and with_skip:
            img = tok.new_zeros(()).expand(b, r * v, 3, h, w)
        out = {k: None for k in _FIELDS}
        for sel, pts_head, gs_head in ((ref, self.downstream_head1, self.downstream_GS_head[0]),
                                       (~ref, self.downstream_head2, self.downstream_GS_head[1])):
            t = tok[:, sel].reshape(-1, n, c)
            im = None if img is None else img[:, sel].reshape(-1, 3, h, w)
            res = dict(zip(("pts3d", "conf"), pts_head(t, grid, im, with_skip=with_skip)))
            res.update(gs_head(t, grid))
            for k, val in res.items():
                if out[k] is None:
                    out[k] = val.new_empty((b, r * v, *val.shape[1:]))
                out[k][:, sel] = val.reshape(b, -1, *val.shape[1:])
        result = {k: t.reshape(b, r, v, *t.shape[2:]) for k, t in out.items()}
        result["grid"] = grid
        return result

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, images: Tensor, with_skip: bool = True) -> dict[str, Any]:
        """images (B, V, 3, H, W) in [0, 1] -> the output dict of the module docstring."""
        b, v, h, w = self._check_images(images)
        grid = (h // self.patch_size, w // self.patch_size)
        enc, _ = self.run_encoder(self.embed(images), grid)
        dec, _ = self.decode(enc, b, v, grid)
        return self.heads(dec, images, grid, with_skip=with_skip)

    # ------------------------------------------------------------------------------------------ cut points
    def cut_points(self) -> list[str]:
        """``enc_blocks_k``: the encoder state after k blocks (B*V, N, C_enc), k = 1 .. depth (after a cut at k0:
        k0 .. depth)."""
        total = self.first_block + len(self.enc_blocks)
        return [f"enc_blocks_{k}" for k in range(max(1, self.first_block), total + 1)]

    def _parse(self, name: str) -> int:
        m = _CUT.match(str(name))
        if m is None or name not in self.cut_points():
            total = self.first_block + len(self.enc_blocks)
            raise ValueError(f"MVDUSt3R: unknown cut point {name!r}; valid: enc_blocks_{max(1, self.first_block)}.."
                             f"{total} (the state after k CroCo encoder blocks)")
        return int(m.group(1))

    def capture(self, images: Tensor, names: Sequence[str], run_heads: bool = False) -> dict[str, Any]:
        """Encoder states at cut points ``names`` ({name: (B*V, N, C_enc)}) from one pass; it stops after the last
        one unless ``run_heads`` (then the forward dict is under ``"outputs"``)."""
        ks = {n: self._parse(n) for n in names}
        if any(k <= self.first_block for k in ks.values()):
            raise ValueError(f"MVDUSt3R.capture: blocks before {self.first_block} were removed (stitched model)")
        b, v, h, w = self._check_images(images) if run_heads else (*images.shape[:2], *images.shape[-2:])
        grid = (h // self.patch_size, w // self.patch_size)
        stop = None if run_heads else (max(ks.values()) if ks else 0)
        x, caught = self.run_encoder(self.embed(images), grid, stop=stop, taps=set(ks.values()))
        out: dict[str, Any] = {n: caught[k] for n, k in ks.items()}
        if run_heads:
            dec, _ = self.decode(x, b, v, grid)
            out["outputs"] = self.heads(dec, images, grid)
        return out

    def forward_from(self, name: str, activation: Tensor, images: Tensor, with_skip: bool = True
                     ) -> dict[str, Any]:
        """Run the rest of the model from cut point ``name`` with its activation (B*V, N, C_enc); ``images``
        (B, V, 3, H, W) in [0, 1] give the size, the view count and the skip branch's input."""
        k = self._parse(name)
        b, v, h, w = self._check_images(images)
        grid = (h // self.patch_size, w // self.patch_size)
        if tuple(activation.shape[:2]) != (b * v, grid[0] * grid[1]):
            raise ValueError(f"MVDUSt3R.forward_from({name!r}): expected tokens ({b * v}, {grid[0] * grid[1]}, "
                             f"{self.embed_dim}) for {b}x{v} views of {h}x{w}, got {tuple(activation.shape)}")
        enc, _ = self.run_encoder(activation.to(self.dtype), grid, start=k)
        dec, _ = self.decode(enc, b, v, grid)
        return self.heads(dec, images, grid, with_skip=with_skip)

    def cut_front(self, k: int) -> None:
        """Delete the patch embedding and encoder blocks 0..k-1 (a stitched decoder feeds block k); the kept
        blocks are re-indexed from 0 (``enc_blocks.j`` = original block j + k)."""
        if self.first_block:
            raise ValueError(f"MVDUSt3R: already cut at enc_blocks_{self.first_block}")
        if not 1 <= k <= len(self.enc_blocks):
            raise ValueError(f"MVDUSt3R: cut enc_blocks_{k} is outside enc_blocks_1..enc_blocks_{len(self.enc_blocks)}")
        self.patch_embed = None
        self.enc_blocks = nn.ModuleList(list(self.enc_blocks)[k:])
        self.first_block = int(k)

    # ------------------------------------------------------------------------------------------ containers
    @torch.no_grad()
    def predict(self, images: Tensor) -> MVDUSt3RPrediction:
        """Forward (no grad), path 0, wrapped into containers (see :func:`mvdust3r_gaussians`)."""
        return self.wrap_prediction(self.forward(images), images)

    def wrap_prediction(self, raw: dict[str, Any], images: Tensor | None, path: int = 0) -> MVDUSt3RPrediction:
        """Raw forward dict -> :class:`MVDUSt3RPrediction` for reference path ``path`` (its frame: the camera of view
        ``path``). ``images`` (B, V, 3, H, W) in [0, 1] colour the points and Gaussians (None: the Gaussian head's
        colour, grey points)."""
        b, _, v, h, w = raw["pts3d"].shape[:5]
        pms, gss, cams, depths = [], [], [], []
        for i in range(b):
            pts = raw["pts3d"][i, path].float()
            conf = raw["conf"][i, path].float()
            if images is not None:
                colors = images[i].permute(0, 2, 3, 1).float().clamp(0, 1)
            else:
                colors = torch.full_like(pts, 0.5)
            # the path's reference view first, so that it is "view 0" of the camera estimate
            order = [path, *(j for j in range(v) if j != path)]
            c2w, k, depth = cameras_from_pointmap(pts[order].detach(), conf[order].detach())
            back = torch.argsort(torch.tensor(order))
            cam = Cameras(c2w[back], k[back], w, h)
            cams.append(cam)
            depths.append(depth[back])
            pms.append(Pointmap(pts, conf, colors, cam))
            gss.append(mvdust3r_gaussians({k_: raw[k_][i, path] for k_ in _FIELDS},
                                          None if images is None else colors, self.config.gs_scale_clip))
        return MVDUSt3RPrediction(pms, gss, cams, torch.stack(depths), raw)


def mvdust3r_gaussians(fields: dict[str, Tensor], colors: Tensor | None = None,
                       scale_clip: tuple[float, float] = SCALE_CLIP) -> Gaussians:
    """One path's per-pixel outputs (V, H, W, .) -> :class:`Gaussians` (N = V*H*W, index v*H*W + y*W + x).

    Conventions (as the official renderer): means = ``pts3d``; rotations = ``rotation`` (wxyz); opacities =
    ``opacity``; colours = the input images' RGB when ``colors`` (V, H, W, 3) in [0, 1] is given (the released
    training's ``use_img_rgb``), else the head's raw ``rgb`` as SH-DC coefficients; scales = ``clip(scale / s,
    1e-4, 4e-3) * s`` with s = the mean distance of the points from the origin (DUSt3R's avg_dis normalisation,
    the official render-time clip expressed in the points' own units; ``scale_clip`` replaces (1e-4, 4e-3), the
    model's ``config.gs_scale_clip``).
    """
    pts = fields["pts3d"].reshape(-1, 3).float()
    s = pts.norm(dim=-1).mean().clamp(min=1e-8)
    scales = (fields["scale"].reshape(-1, 3).float() / s).clamp(*scale_clip) * s
    rot = fields["rotation"].reshape(-1, 4).float()
    rot = rot / rot.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    bad = rot.norm(dim=-1) < 0.5
    if bad.any():  # a zero raw quaternion: use the identity
        rot = torch.where(bad[:, None], rot.new_tensor([1.0, 0.0, 0.0, 0.0]), rot)
    if colors is not None:
        sh = rgb_to_sh_dc(colors.reshape(-1, 3).float())[:, None]
    else:
        rgb = fields["rgb"].float()
        sh = rgb.reshape(-1, rgb.shape[-1] // 3, 3) if rgb.shape[-1] > 3 else rgb.reshape(-1, 1, 3)
    return Gaussians(means=pts, scales=scales, rotations=rot, opacities=fields["opacity"].reshape(-1).float(), sh=sh)
