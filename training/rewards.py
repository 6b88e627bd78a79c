"""Rewards for DRTune alignment of the Wan transformer (:mod:`training.align_drtune`), pluggable and weighted.

A reward is any object with a ``name`` (str), a ``weight`` (float) and ``__call__(batch: RewardBatch) -> (B,)``
(higher is better, differentiable w.r.t. ``batch.latent``); the total is ``sum_i weight_i * reward_i`` (B,).
:class:`RewardBatch` decodes lazily and caches, so rewards that share the decoded frames or the renders share the
work::

    latent (B, 16, T_lat, h, w)  model-space Wan latent (the sampler's final state, differentiable)
      -> raw = latent * latents_std + latents_mean             (vist3a.pipeline.wan.to_raw_latent)
      -> frames = Wan VAE decode WITH gradients                (B, T, 3, H, W) in [0, 1], T = (T_lat - 1) * 4 + 1
      -> frames3d = resize to the 3D-model size (H / 16 * 14)  (B, T, 3, H3, W3)
      -> StitchedDecoder(raw, frames3d) -> Gaussians + cameras (per scene; AnySplat)
      -> vist3a.render at V sampled predicted cameras           renders (B, V, 3, H3, W3) in [0, 1]

Rewards of the paper (defaults of ``--reward``, :data:`DEFAULT_REWARDS`):

* ``quality_frames`` (weight 1/16) and ``quality_renders`` (1/16): ``R = sum_m (s_m - 1)`` over the text-image
  scorers m, s_m = cosine similarity of the image and text embeddings, averaged over the V sampled views. With a
  CLIP and an HPS scorer this is the paper's ``s_clip + s_hps - 2`` (0 at best). CLIP: any transformers
  ``CLIPModel`` (hub id or folder; :class:`ClipScorer`), or an open_clip model when ``open_clip`` is importable
  (:class:`OpenClipScorer`; DFN5B-CLIP ViT-H-14-378 is published in open_clip format). HPSv2(.1) is an open_clip
  ViT-H-14 checkpoint, supported only through :meth:`OpenClipScorer.hps` when open_clip is installed.
* ``consistency`` (0.05): ``R = -(L1 + 0.25 LPIPS)`` between the VAE-decoded frames (at the 3D size) and the renders
  of the decoded scene at the predicted cameras, on the V sampled views; 0 is the maximum. Without LPIPS weights
  (:func:`training.metrics.load_lpips` returns None) only the L1 term is used (logged once).

The released training code (``align_drtune --recipe official``, reward ``official``; :class:`OfficialReward`) uses
instead a loss on 13 renders (every predicted camera) plus 1 random decoded frame, each
``0.25 |1 - PickScore / 100| + 0.25 (1 - cos_DFN)`` averaged over the images, summed over the two sets, no
consistency term; the reward is its negative. Scorers, from their public hub ids (:func:`official_scorers`):

* PickScore (:class:`PickScoreScorer`): transformers ``CLIPModel`` ``yuvalkirstain/PickScore_v1`` with the
  tokenizer of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``; images scaled to [0, 255], shorter side resized to 224
  (bicubic, antialiased), centre crop 224, back to [0, 1], CLIP normalisation; score = ``logit_scale.exp() * cos /
  100``; text padded to the longest prompt, truncated at 77;
* DFN5B CLIP ViT-H-14-378 (:class:`DfnClipScorer`): open_clip ``hf-hub:apple/DFN5B-CLIP-ViT-H-14-378`` when open_clip
  is installed, else the transformers ``CLIPModel`` files of the same hub repository; images resized to 378x378
  (bilinear, antialiased; no crop), CLIP normalisation; unit-embedding cosine.

Toy rewards for tests and smoke runs: ``toy_latent`` (``-mean((latent - target)^2)``, target 0 unless given) and
``brightness`` (mean of the decoded frames).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DEFAULT_REWARDS",
    "OFFICIAL_REWARDS",
    "DfnClipScorer",
    "OfficialReward",
    "PickScoreScorer",
    "official_scorers",
    "REWARD_NAMES",
    "BrightnessReward",
    "ClipScorer",
    "ConsistencyReward",
    "OpenClipScorer",
    "QualityReward",
    "Reward",
    "RewardBatch",
    "SceneDecoder",
    "TextImageScorer",
    "ToyLatentReward",
    "build_rewards",
    "consistency_score",
    "decode_frames_differentiable",
    "parse_reward_spec",
    "total_reward",
]

logger = logging.getLogger("vist3a.training.rewards")

#: The paper's reward mix (quality x 1/16 on decoded frames and on renders, consistency x 0.05).
DEFAULT_REWARDS = "quality_frames:0.0625,quality_renders:0.0625,consistency:0.05"
#: The released reward (PickScore + DFN5B CLIP, 0.25 each inside, on all renders + 1 decoded frame).
OFFICIAL_REWARDS = "official:1"
REWARD_NAMES = ("quality_frames", "quality_renders", "consistency", "official", "toy_latent", "brightness")
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
DFN_MODEL = "apple/DFN5B-CLIP-ViT-H-14-378"
LPIPS_WEIGHT = 0.25
#: OpenAI CLIP normalisation (used when a model folder has no preprocessor config).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ============================================================================================ protocols
@runtime_checkable
class Reward(Protocol):
    """A weighted reward: ``name``, ``weight`` and ``__call__(batch) -> (B,)`` (higher is better)."""

    name: str
    weight: float

    def __call__(self, batch: RewardBatch) -> Tensor: ...


@runtime_checkable
class TextImageScorer(Protocol):
    """``__call__(images (N, 3, H, W) in [0, 1], prompts: N strings) -> (N,)`` similarity in [-1, 1],
    differentiable w.r.t. ``images``."""

    name: str

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor: ...


# ============================================================================================ decoding
def decode_frames_differentiable(vae, raw: Tensor) -> Tensor:
    """Raw latent (B, 16, T_lat, h, w) -> frames (B, T, 3, 8h, 8w) in [0, 1] WITH gradients (the same mapping as
    :func:`vist3a.pipeline.wan.decode_frames`, which runs under ``no_grad``): ``(decode + 1) / 2`` clamped."""
    param = next(vae.parameters())
    video = vae.decode(raw.to(dtype=param.dtype), return_dict=False)[0]  # (B, 3, T, H, W) in [-1, 1]
    return ((video.float() + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4)


@dataclass
class SceneDecoder:
    """The frozen models behind the frame / render rewards.

    Args:
        vae: diffusers ``AutoencoderKLWan`` (frozen; gradients pass through it to the latent).
        decoder: a :class:`~vist3a.stitching.StitchedDecoder` of AnySplat (frozen), or None when only frame rewards
            are used.
        views: V, views sampled per scene for the quality / consistency rewards (paper: 2).
        render_backend: ``"auto"`` (gsplat on CUDA, else the PyTorch rasteriser), ``"torch"`` or ``"gsplat"``.
        background: render background colour (3,) in [0, 1]; default black.
    """

    vae: object
    decoder: nn.Module | None = None
    views: int = 2
    render_backend: str = "auto"
    background: Tensor | None = None


class RewardBatch:
    """What the rewards see for B rollouts: the final latent, the prompts, and lazily decoded (cached) frames,
    scenes and renders.

    Args:
        latent: (B, 16, T_lat, h, w) model-space latent (differentiable).
        prompts: B user prompts (without the camera-orbit template; the quality scorers read these).
        scene: the frozen decoding models (None: only latent-space rewards can run).
        generator: draws the V views (shared by all scenes of the batch); default a fixed one.
    """

    def __init__(self, latent: Tensor, prompts: Sequence[str], scene: SceneDecoder | None = None,
                 generator: torch.Generator | None = None) -> None:
        if latent.dim() != 5:
            raise ValueError(f"RewardBatch: latent must be (B, 16, T_lat, h, w), got {tuple(latent.shape)}")
        if len(prompts) != latent.shape[0]:
            raise ValueError(f"RewardBatch: {latent.shape[0]} latents but {len(prompts)} prompts")
        self.latent = latent
        self.prompts = list(prompts)
        self.scene = scene
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self._cache: dict[str, object] = {}

    def _need_scene(self, what: str) -> SceneDecoder:
        if self.scene is None:
            raise ValueError(f"reward needs {what}, but no VAE / decoder was given to RewardBatch")
        return self.scene

    @property
    def raw(self) -> Tensor:
        """(B, 16, T_lat, h, w) raw VAE latent (``to_raw_latent``)."""
        if "raw" not in self._cache:
            from vist3a.pipeline.wan import to_raw_latent

            vae = self._need_scene("the Wan VAE").vae
            self._cache["raw"] = to_raw_latent(vae, self.latent.float())
        return self._cache["raw"]

    @property
    def frames(self) -> Tensor:
        """(B, T, 3, H, W) VAE-decoded frames in [0, 1], differentiable."""
        if "frames" not in self._cache:
            self._cache["frames"] = decode_frames_differentiable(self._need_scene("the Wan VAE").vae, self.raw)
        return self._cache["frames"]

    @property
    def view_indices(self) -> Tensor:
        """(V,) sorted frame indices of the sampled views (V = min(scene.views, T))."""
        if "views" not in self._cache:
            t = (self.latent.shape[2] - 1) * 4 + 1
            v = min(self._need_scene("views").views, t)
            self._cache["views"] = torch.randperm(t, generator=self.generator)[:v].sort().values
        return self._cache["views"]

    @property
    def frames3d(self) -> Tensor:
        """(B, T, 3, H3, W3) decoded frames resized to the 3D-model size (what the stitched decoder reads)."""
        if "frames3d" not in self._cache:
            from vist3a.pipeline.wan import resize_frames

            dec = self._need_scene("the stitched decoder").decoder
            if dec is None:
                raise ValueError("render rewards need a stitched decoder (--decoder, or --preset tiny)")
            size = dec.model_size_for(tuple(self.frames.shape[-2:]))
            self._cache["frames3d"] = resize_frames(self.frames, size)
        return self._cache["frames3d"]

    @property
    def prediction(self):
        """The stitched AnySplat prediction (``AnySplatPrediction``: per-scene Gaussians and Cameras), with
        gradients to the latent and the frames."""
        if "prediction" not in self._cache:
            dec = self._need_scene("the stitched decoder").decoder
            if dec is None or getattr(dec, "kind", None) != "anysplat":
                raise ValueError("render rewards need a stitched AnySplat decoder (Gaussians); VGGT has none")
            images = self.frames3d
            with warnings.catch_warnings():  # the decoder's [0, 1] range check reads frames.min() of a grad tensor
                warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
                out = dec(self.raw.float(), images)
            self._cache["prediction"] = dec.model.wrap_prediction(out, images)
        return self._cache["prediction"]

    @property
    def renders(self) -> Tensor:
        """(B, V, 3, H3, W3) renders in [0, 1] of each decoded scene at its predicted cameras of the sampled views."""
        if "renders" not in self._cache:
            from vist3a.render import render

            scene = self._need_scene("renders")
            pred = self.prediction
            idx = self.view_indices
            out = []
            for gaussians, cameras in zip(pred.gaussians, pred.cameras):
                cams = cameras[idx.to(cameras.c2w.device)]
                bg = scene.background.to(gaussians.means) if scene.background is not None else None
                rgb = render(gaussians, cams, background=bg, backend=scene.render_backend).rgb  # (V, H, W, 3)
                out.append(rgb.permute(0, 3, 1, 2).clamp(0, 1))
            self._cache["renders"] = torch.stack(out)
        return self._cache["renders"]

    def view_frames(self, model_size: bool = False) -> Tensor:
        """(B, V, 3, H, W) decoded frames of the sampled views (at the 3D size when ``model_size``)."""
        src = self.frames3d if model_size else self.frames
        return src[:, self.view_indices.to(src.device)]


# ============================================================================================ scorers
def _prepare_images(images: Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, size, size) normalised: shorter side resized to ``size`` (bicubic,
    antialiased), centre crop (CLIP's preprocessing, differentiable)."""
    _, _, h, w = images.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = images.float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=nh < h or nw < w)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[:, :, top:top + size, left:left + size]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def _features(out) -> Tensor:
    """transformers 4 returns the projected embeddings, 5 a model output with ``pooler_output``."""
    return out if isinstance(out, Tensor) else out.pooler_output


class _CosineScorer(nn.Module):
    """Frozen text-image model -> cosine similarity of unit embeddings. Subclasses encode: ``_encode_text(prompts)
    -> (N, D)`` and ``_encode_image(pixels) -> (N, D)`` (pixels normalised, at ``image_size``)."""

    def __init__(self, model: nn.Module, tokenizer, image_size: int, mean: Sequence[float], std: Sequence[float],
                 name: str) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size, self.mean, self.std, self.name = int(image_size), tuple(mean), tuple(std), name
        self._text: dict[str, Tensor] = {}

    def _encode_text(self, prompts: list[str]) -> Tensor:
        raise NotImplementedError

    def _encode_image(self, pixels: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def text_features(self, prompts: Sequence[str]) -> Tensor:
        """(N, D) unit text embeddings (cached per prompt)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text]
        if missing:
            for p, f in zip(missing, F.normalize(self._encode_text(missing).float(), dim=-1)):
                self._text[p] = f
        return torch.stack([self._text[p] for p in prompts])

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """images (N, 3, H, W) in [0, 1], N prompts -> (N,) cosine similarity, differentiable w.r.t. images."""
        param = next(self.model.parameters())
        x = _prepare_images(images, self.image_size, self.mean, self.std).to(device=param.device, dtype=param.dtype)
        img = F.normalize(self._encode_image(x).float(), dim=-1)
        return (img * self.text_features(prompts).to(img.device)).sum(-1)


class ClipScorer(_CosineScorer):
    """CLIP-style text-image cosine similarity with a transformers ``CLIPModel`` (frozen).

    Args:
        model: a ``CLIPModel``; tokenizer: its tokenizer (any callable returning ``input_ids``/``attention_mask``).
        image_size: square input side; mean / std: per-channel normalisation.
        max_length: text tokens (CLIP: 77).
    """

    def __init__(self, model: nn.Module, tokenizer, image_size: int, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD, max_length: int = 77, name: str = "clip") -> None:
        super().__init__(model, tokenizer, image_size, mean, std, name)
        self.max_length = int(max_length)

    @classmethod
    def from_pretrained(cls, source: str, device: torch.device | str | None = None,
                        dtype: torch.dtype = torch.float32) -> ClipScorer:
        """A hub id (e.g. ``openai/clip-vit-large-patch14``) or a local folder with a transformers CLIP model."""
        from transformers import AutoTokenizer, CLIPModel

        try:
            model = CLIPModel.from_pretrained(source, torch_dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise ValueError(f"--clip {source!r}: cannot load a transformers CLIPModel + tokenizer ({err}); pass a "
                             "hub id in the local cache or a folder (config.json, weights, tokenizer files)") from err
        size, mean, std = model.config.vision_config.image_size, CLIP_MEAN, CLIP_STD
        try:
            from transformers import CLIPImageProcessor

            proc = CLIPImageProcessor.from_pretrained(source)
            mean, std = tuple(proc.image_mean), tuple(proc.image_std)
        except (OSError, ValueError, ImportError):
            logger.info("%s has no image processor config: OpenAI CLIP normalisation", source)
        limit = getattr(model.config.text_config, "max_position_embeddings", 77)
        return cls(model.to(device) if device is not None else model, tokenizer, size, mean, std, limit,
                   name=f"clip:{source}")

    @classmethod
    def tiny(cls, seed: int = 0) -> ClipScorer:
        """A tiny random CLIP built from a config (offline; ``--preset tiny`` and tests) with the character-level
        tokenizer of :mod:`vist3a.pipeline.presets`. The scores are meaningless; the plumbing is real."""
        from transformers import CLIPConfig, CLIPModel

        from vist3a.pipeline.presets import tiny_tokenizer

        tok = tiny_tokenizer()
        torch.manual_seed(seed)
        text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 2, "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 1,
                "eos_token_id": 1}
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "image_size": 32, "patch_size": 8}
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
        return cls(CLIPModel(config), tok, 32, max_length=64, name="clip:tiny")

    def _encode_text(self, prompts: list[str]) -> Tensor:
        device = next(self.model.parameters()).device
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return _features(self.model.get_text_features(input_ids=tok["input_ids"].to(device),
                                                      attention_mask=tok["attention_mask"].to(device)))

    def _encode_image(self, pixels: Tensor) -> Tensor:
        return _features(self.model.get_image_features(pixel_values=pixels))


class OpenClipScorer(_CosineScorer):
    """Text-image cosine similarity with an open_clip model (needs ``pip install open_clip_torch``): e.g.
    ``hf-hub:apple/DFN5B-CLIP-ViT-H-14-378`` or, with :meth:`hps`, HPSv2.1 (an open_clip ViT-H-14 fine-tune).
    Not exercised by the CPU tests (open_clip is not a dependency)."""

    @staticmethod
    def _import():
        try:
            import open_clip
        except ImportError as err:
            raise ValueError("open_clip is not installed: `pip install open_clip_torch` for open_clip / HPSv2 "
                             "scorers, or use a transformers CLIP model with --clip") from err
        return open_clip

    @classmethod
    def _wrap(cls, open_clip, model, arch: str, name: str) -> OpenClipScorer:
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
        return cls(model, open_clip.get_tokenizer(arch), size, mean, std, name)

    @classmethod
    def from_pretrained(cls, arch: str, pretrained: str | None = None) -> OpenClipScorer:
        """``arch`` an open_clip name (``ViT-H-14``) or ``hf-hub:<repo>``; ``pretrained`` a tag or a file."""
        open_clip = cls._import()
        model = open_clip.create_model(arch, pretrained=pretrained)
        return cls._wrap(open_clip, model, arch, f"open_clip:{arch}")

    @classmethod
    def hps(cls, checkpoint: str, arch: str = "ViT-H-14") -> OpenClipScorer:
        """HPSv2 / v2.1: a ``ViT-H-14`` open_clip model with the HPS weights (``HPS_v2.1_compressed.pt``, a dict
        holding ``state_dict``; loaded with ``weights_only=True``, or a .safetensors file)."""
        open_clip = cls._import()
        model = open_clip.create_model(arch, pretrained=None)
        from vist3a.io.weights import load_weights

        state = load_weights(checkpoint, "HPS checkpoint")  # safetensors, or torch.load(weights_only=True)
        model.load_state_dict(state)
        return cls._wrap(open_clip, model, arch, "hps")

    def _encode_text(self, prompts: list[str]) -> Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(next(self.model.parameters()).device))

    def _encode_image(self, pixels: Tensor) -> Tensor:
        return self.model.encode_image(pixels)


# ============================================================================================ released scorers
def _tiny_clip(seed: int):
    from transformers import CLIPConfig, CLIPModel

    from vist3a.pipeline.presets import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 77, "pad_token_id": 0, "bos_token_id": 1,
            "eos_token_id": 1}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)), tok


def _normalise(x: Tensor) -> Tensor:
    m = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class PickScoreScorer(nn.Module):
    """PickScore as the released reward computes it (module docstring): ``(images (N, 3, H, W) in [0, 1], N
    prompts) -> (N,)`` scaled score ``logit_scale.exp() * cos / 100``, differentiable w.r.t. the images."""

    def __init__(self, model: nn.Module, tokenizer, image_size: int = 224, name: str = "pickscore") -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.image_size, self.name = tokenizer, int(image_size), name

    @classmethod
    def from_pretrained(cls, model: str = PICKSCORE_MODEL, processor: str = PICKSCORE_PROCESSOR,
                        dtype: torch.dtype = torch.float32) -> PickScoreScorer:
        from transformers import AutoTokenizer, CLIPModel

        try:
            clip = CLIPModel.from_pretrained(model, torch_dtype=dtype)
            tok = AutoTokenizer.from_pretrained(processor)
        except (OSError, ValueError) as err:
            raise ValueError(f"PickScore: cannot load {model!r} (CLIPModel) / the tokenizer of {processor!r} ({err}); "
                             "pass local folders with --pickscore / --pickscore-processor") from err
        return cls(clip, tok, 224, name=f"pickscore:{model}")

    @classmethod
    def tiny(cls, seed: int = 0) -> PickScoreScorer:
        """A tiny random ``CLIPModel`` (the PickScore class) for offline tests; 32 px crops."""
        model, tok = _tiny_clip(seed)
        return cls(model, tok, 32, name="pickscore:tiny")

    def preprocess(self, images: Tensor) -> Tensor:
        """[0, 1] images -> the released PickScore input: x255, shorter side -> size (bicubic, antialiased; the longer
        side ``L * size // S``), centre crop (offset ``L // 2 - size // 2``), /255, CLIP normalisation."""
        x = images.float().clamp(0, 1) * 255.0
        h, w = x.shape[-2:]
        size = self.image_size
        nh, nw = (size, w * size // h) if h < w else (h * size // w, size)
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        top, left = nh // 2 - size // 2, nw // 2 - size // 2
        x = x[:, :, top:top + size, left:left + size] * (1.0 / 255.0)
        return _normalise(x)

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        param = next(self.model.parameters())
        pixels = self.preprocess(images).to(device=param.device, dtype=param.dtype)
        img = F.normalize(_features(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)
        with torch.no_grad():
            tok = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt")
            txt = _features(self.model.get_text_features(input_ids=tok["input_ids"].to(param.device),
                                                         attention_mask=tok["attention_mask"].to(param.device)))
            txt = F.normalize(txt.float(), dim=-1)
        return self.model.logit_scale.exp().float() * (img * txt).sum(-1) / 100.0


class DfnClipScorer(nn.Module):
    """DFN5B CLIP as the released reward computes it: ``(images in [0, 1], prompts) -> (N,)`` cosine of unit
    embeddings; images resized to ``image_size`` squared (bilinear, antialiased), CLIP normalisation. ``model`` is
    an open_clip model (``encode_image`` / ``encode_text``) or a transformers ``CLIPModel``."""

    def __init__(self, model: nn.Module, tokenizer, image_size: int = 378, name: str = "dfn5b") -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.image_size, self.name = tokenizer, int(image_size), name
        self.open_clip = hasattr(model, "encode_image")

    @classmethod
    def from_pretrained(cls, source: str = DFN_MODEL, dtype: torch.dtype = torch.float32) -> DfnClipScorer:
        """open_clip ``hf-hub:<source>`` when open_clip is installed (the released code), else the transformers
        ``CLIPModel`` files of ``source`` (a hub id or a local folder)."""
        try:
            import open_clip
        except ImportError:
            open_clip = None
        if open_clip is not None and not Path(source).exists():
            model = open_clip.create_model(f"hf-hub:{source}")
            return cls(model.to(dtype), open_clip.get_tokenizer(f"hf-hub:{source}"), 378, name=f"dfn:{source}")
        from transformers import AutoTokenizer, CLIPModel

        try:
            model = CLIPModel.from_pretrained(source, torch_dtype=dtype)
            tok = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise ValueError(f"DFN5B CLIP: open_clip is not installed and {source!r} cannot be loaded as a "
                             f"transformers CLIPModel ({err}); `pip install open_clip_torch` or pass a local folder "
                             "with --dfn-clip") from err
        logger.info("DFN5B CLIP through transformers (open_clip not installed): %s", source)
        return cls(model, tok, model.config.vision_config.image_size, name=f"dfn:{source}")

    @classmethod
    def tiny(cls, seed: int = 1) -> DfnClipScorer:
        """A tiny random transformers ``CLIPModel`` (the fallback class) for offline tests; 32 px."""
        model, tok = _tiny_clip(seed)
        return cls(model, tok, 32, name="dfn:tiny")

    def preprocess(self, images: Tensor) -> Tensor:
        x = F.interpolate(images.float().clamp(0, 1), size=(self.image_size, self.image_size), mode="bilinear",
                          align_corners=False, antialias=True)
        return _normalise(x)

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        param = next(self.model.parameters())
        pixels = self.preprocess(images).to(device=param.device, dtype=param.dtype)
        if self.open_clip:
            img = self.model.encode_image(pixels)
            with torch.no_grad():
                txt = self.model.encode_text(self.tokenizer(list(prompts)).to(param.device))
        else:
            img = _features(self.model.get_image_features(pixel_values=pixels))
            with torch.no_grad():
                tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=77,
                                     return_tensors="pt")
                txt = _features(self.model.get_text_features(input_ids=tok["input_ids"].to(param.device),
                                                             attention_mask=tok["attention_mask"].to(param.device)))
        img = F.normalize(img.float(), dim=-1)
        return (img * F.normalize(txt.float(), dim=-1)).sum(-1)


def official_scorers(pickscore: str | None = None, processor: str | None = None, dfn: str | None = None,
                     tiny: int | None = None) -> tuple[PickScoreScorer, DfnClipScorer]:
    """The released reward's scorers from their public hub ids (or local folders); ``tiny``: tiny random models of
    the same classes (seeded), offline."""
    if tiny is not None:
        return PickScoreScorer.tiny(tiny), DfnClipScorer.tiny(tiny + 1)
    return (PickScoreScorer.from_pretrained(pickscore or PICKSCORE_MODEL, processor or PICKSCORE_PROCESSOR),
            DfnClipScorer.from_pretrained(dfn or DFN_MODEL))


class OfficialReward:
    """The released reward (module docstring), (B,): ``-(L(renders) + L(one decoded frame))`` per scene with
    ``L(images) = w_pick mean|1 - PickScore/100| + w_clip mean(1 - cos_DFN)`` (0.25 each). The renders are the scene
    at EVERY predicted camera (set ``SceneDecoder.views`` >= frames; the released code renders all 13); the frame is
    one uniformly drawn decoded frame at the 3D size."""

    def __init__(self, pickscore: nn.Module, clip: nn.Module, weight: float = 1.0, pick_weight: float = 0.25,
                 clip_weight: float = 0.25, name: str = "official") -> None:
        self.pickscore, self.clip, self.weight, self.name = pickscore, clip, float(weight), name
        self.pick_weight, self.clip_weight = float(pick_weight), float(clip_weight)

    def loss(self, images: Tensor, prompt: str) -> Tensor:
        prompts = [prompt] * images.shape[0]
        pick = (1.0 - self.pickscore(images, prompts)).abs().mean()
        clip = (1.0 - self.clip(images, prompts)).mean()
        return self.pick_weight * pick + self.clip_weight * clip

    def __call__(self, batch: RewardBatch) -> Tensor:
        renders, frames = batch.renders, batch.frames3d  # (B, V, 3, H, W), (B, T, 3, H, W)
        out = []
        for b, prompt in enumerate(batch.prompts):
            k = int(torch.randint(0, frames.shape[1], (1,), generator=batch.generator))
            out.append(-(self.loss(renders[b], prompt) + self.loss(frames[b, k:k + 1], prompt)))
        return torch.stack(out)


# ============================================================================================ rewards
class QualityReward:
    """``R = sum_m (s_m - 1)``, s_m the scorers' similarities averaged over the V sampled views (paper:
    ``s_clip + s_hps - 2``), on the decoded frames (``target="frames"``) or the renders (``"renders"``). (B,)."""

    def __init__(self, scorers: Sequence[TextImageScorer], target: str = "frames", weight: float = 1 / 16,
                 name: str | None = None) -> None:
        if target not in ("frames", "renders"):
            raise ValueError(f"QualityReward: target must be 'frames' or 'renders', got {target!r}")
        if not scorers:
            raise ValueError(f"quality_{target} needs at least one text-image scorer: pass --clip <hub id or folder> "
                             "(and/or --hps <HPSv2 checkpoint> with open_clip installed), or use --preset tiny")
        self.scorers, self.target, self.weight = list(scorers), target, float(weight)
        self.name = name or f"quality_{target}"

    def __call__(self, batch: RewardBatch) -> Tensor:
        images = batch.renders if self.target == "renders" else batch.view_frames()  # (B, V, 3, H, W)
        b, v = images.shape[:2]
        prompts = [p for p in batch.prompts for _ in range(v)]
        flat = images.reshape(b * v, *images.shape[2:])
        total = sum(scorer(flat, prompts).view(b, v).mean(1) - 1.0 for scorer in self.scorers)
        return total


_LPIPS_NOTED: set[str] = set()


def consistency_score(frames: Tensor, renders: Tensor, lpips: Callable[[Tensor, Tensor], Tensor] | None = None,
                      lpips_weight: float = LPIPS_WEIGHT) -> Tensor:
    """``-(L1 + lpips_weight * LPIPS)`` per scene: frames / renders (B, V, 3, H, W) in [0, 1] -> (B,), L1 = mean
    absolute difference, LPIPS averaged over the V views (skipped when ``lpips`` is None). 0 when equal."""
    if frames.shape != renders.shape:
        raise ValueError(f"consistency: frames {tuple(frames.shape)} and renders {tuple(renders.shape)} differ")
    b, v = frames.shape[:2]
    score = -(frames - renders).abs().flatten(1).mean(1)
    if lpips is not None and lpips_weight:
        d = lpips(renders.reshape(b * v, *renders.shape[2:]).float(), frames.reshape(b * v, *frames.shape[2:]).float())
        score = score - lpips_weight * d.view(b, v).mean(1)
    return score


class ConsistencyReward:
    """``-(L1 + 0.25 LPIPS)`` between the decoded frames (3D size) and the renders at the predicted cameras on the V
    sampled views (paper weight 0.05). ``lpips``: a :class:`training.metrics.LPIPS` or None (L1 only, logged)."""

    def __init__(self, weight: float = 0.05, lpips: nn.Module | None = None, lpips_weight: float = LPIPS_WEIGHT,
                 name: str = "consistency") -> None:
        self.weight, self.lpips, self.lpips_weight, self.name = float(weight), lpips, float(lpips_weight), name
        if lpips is None and "consistency" not in _LPIPS_NOTED:
            _LPIPS_NOTED.add("consistency")
            logger.warning("consistency reward: LPIPS weights not available, using -L1 only (the paper adds "
                           "-0.25 LPIPS; see training.metrics.load_lpips for where to put the weights)")

    def __call__(self, batch: RewardBatch) -> Tensor:
        return consistency_score(batch.view_frames(model_size=True), batch.renders, self.lpips, self.lpips_weight)


class ToyLatentReward:
    """``-mean((latent - target)^2)`` per sample (B,): a cheap reward on the model-space latent for tests."""

    def __init__(self, target: Tensor | float = 0.0, weight: float = 1.0, name: str = "toy_latent") -> None:
        self.target, self.weight, self.name = target, float(weight), name

    def __call__(self, batch: RewardBatch) -> Tensor:
        target = self.target.to(batch.latent) if isinstance(self.target, Tensor) else self.target
        return -(batch.latent.float() - target).pow(2).flatten(1).mean(1)


class BrightnessReward:
    """Mean value of the decoded frames (B,): a toy reward through the VAE decode path."""

    def __init__(self, weight: float = 1.0, name: str = "brightness") -> None:
        self.weight, self.name = float(weight), name

    def __call__(self, batch: RewardBatch) -> Tensor:
        return batch.frames.flatten(1).mean(1)


# ============================================================================================ spec / total
def parse_reward_spec(spec: str) -> list[tuple[str, float]]:
    """``"quality_frames:0.0625,consistency:0.05"`` -> [(name, weight), ...]; a name without ``:w`` gets weight 1.

    Raises ValueError for unknown or repeated names and for weights that are not finite positive numbers."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"--reward is empty; e.g. {DEFAULT_REWARDS!r}")
    out: list[tuple[str, float]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, w = part.partition(":")
        name = name.strip()
        if name not in REWARD_NAMES:
            raise ValueError(f"--reward: unknown reward {name!r}; choose from {', '.join(REWARD_NAMES)} "
                             f"(e.g. {DEFAULT_REWARDS!r})")
        try:
            weight = float(w) if w.strip() else 1.0
        except ValueError:
            raise ValueError(f"--reward: weight {w!r} of {name!r} is not a number (write name:weight, e.g. "
                             f"{name}:0.05)") from None
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"--reward: weight of {name!r} must be a finite number > 0, got {w!r} (drop the reward "
                             "instead of giving it weight 0)")
        if any(n == name for n, _ in out):
            raise ValueError(f"--reward: {name!r} is listed twice; give each reward once")
        out.append((name, weight))
    if not out:
        raise ValueError(f"--reward lists no reward; e.g. {DEFAULT_REWARDS!r}")
    return out


def build_rewards(spec: str | Sequence[tuple[str, float]], *, scorers: Sequence[TextImageScorer] = (),
                  lpips: nn.Module | None = None, toy_target: Tensor | float = 0.0,
                  official: tuple[nn.Module, nn.Module] | None = None) -> list[Reward]:
    """Reward objects for a ``--reward`` spec (or parsed pairs). Quality rewards need ``scorers``; ``official``
    needs the (PickScore, DFN CLIP) pair of :func:`official_scorers`."""
    pairs = parse_reward_spec(spec) if isinstance(spec, str) else list(spec)
    rewards: list[Reward] = []
    for name, weight in pairs:
        if name == "quality_frames":
            rewards.append(QualityReward(scorers, "frames", weight))
        elif name == "quality_renders":
            rewards.append(QualityReward(scorers, "renders", weight))
        elif name == "consistency":
            rewards.append(ConsistencyReward(weight, lpips))
        elif name == "official":
            if official is None:
                raise ValueError("the official reward needs PickScore and DFN5B CLIP (training.rewards."
                                 "official_scorers); --preset tiny builds tiny ones")
            rewards.append(OfficialReward(*official, weight=weight))
        elif name == "toy_latent":
            rewards.append(ToyLatentReward(toy_target, weight))
        elif name == "brightness":
            rewards.append(BrightnessReward(weight))
        else:  # parse_reward_spec already refused it; kept for pairs passed directly
            raise ValueError(f"unknown reward {name!r}; choose from {', '.join(REWARD_NAMES)}")
    return rewards


def total_reward(rewards: Sequence[Reward], batch: RewardBatch) -> tuple[Tensor, dict[str, Tensor]]:
    """``sum_i weight_i * reward_i(batch)`` (B,) and each unweighted reward (B,), detached, by name."""
    if not rewards:
        raise ValueError("total_reward: no rewards")
    total, parts = None, {}
    for r in rewards:
        value = r(batch)
        if value.shape != (batch.latent.shape[0],):
            raise ValueError(f"reward {r.name!r} returned shape {tuple(value.shape)}, expected "
                             f"({batch.latent.shape[0]},)")
        parts[r.name] = value.detach()
        total = r.weight * value if total is None else total + r.weight * value
    return total, parts
