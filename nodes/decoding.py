"""Decoder nodes: load a stitched decoder, decode a Wan LATENT (or an IMAGE batch) to splats / pointmaps, save and
preview. Thin wrappers over :mod:`vist3a` (``vist3a.pipeline.run_decoder``, ``vist3a.io``)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import torch

from . import _comfy, _errors
from .splat_types import CORE_SPLAT, SplatBatch, make_splats, to_gaussians  # noqa: F401 (SplatBatch re-exported)
from .splat_types import INPUT_TYPE as SPLATS_IN
from .splat_types import OUTPUT_TYPE as SPLATS

logger = logging.getLogger("vist3a.nodes")

CATEGORY = "VIST3A"
DECODER = "VIST3A_DECODER"
CAMERAS = "VIST3A_CAMERAS"
POINTS = "VIST3A_POINTCLOUD"

PUBLISHED = "HJGO/VIST3A/anysplat_stitched.pth"
PUBLISHED_21 = "HJGO/VIST3A/anysplat_stitched_21_frame_extended.pth"
TINY = "tiny-anysplat (untrained, tests only)"
TINY_VGGT = "tiny-vggt (untrained, tests only)"
TINY_MVDUST3R = "tiny-mvdust3r (untrained, tests only)"
#: tiny entry -> model kind
TINY_KINDS = {TINY: "anysplat", TINY_VGGT: "vggt", TINY_MVDUST3R: "mvdust3r"}
MICRO = "micro-anysplat (trained on the micro world, 64x64 x 9 frames)"
MICRO_MVDUST3R = "micro-mvdust3r (trained on the micro world, 64x64 x 9 frames; splats + pointmap)"
#: micro entry -> the shipped micro 3D model it stitches
MICRO_KINDS = {MICRO: "anysplat", MICRO_MVDUST3R: "mvdust3r"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ============================================================================================ containers
@dataclass(eq=False)
class DecoderHandle:
    """What flows on a ``VIST3A_DECODER`` wire: the stitched decoder, its ComfyUI ModelPatcher and, for the tiny
    and micro presets, their own diffusers Wan VAE (used when no ComfyUI ``VAE`` is connected)."""

    decoder: Any
    patcher: Any
    name: str
    bundled_vae: Any = None
    untrained: bool = False

    def load(self) -> torch.device:
        """Let ComfyUI place the decoder (``load_models_gpu``) and return the device it runs on."""
        import comfy.model_management as mm

        mm.load_models_gpu([self.patcher])
        return next(self.decoder.parameters()).device


@dataclass(eq=False)
class PointBatch:
    """``VIST3A_POINTCLOUD``: one :class:`vist3a.PointCloud` per batch item."""

    clouds: list
    untrained: bool = False


def _tip(text: str, **opts) -> dict:
    return {"tooltip": text, **opts}


# ============================================================================================ loading
def _download_published(node: str, name: str) -> tuple[str, str]:
    """``HJGO/VIST3A/<file>`` + base ``lhjiang/anysplat`` -> files inside ``models/vist3a/`` (downloaded once)."""
    from huggingface_hub import hf_hub_download, snapshot_download

    folder = _comfy.model_folder()
    repo, file = name.rsplit("/", 1)
    try:
        path = hf_hub_download(repo, file, local_dir=str(folder / "HJGO_VIST3A"))
        base = snapshot_download("lhjiang/anysplat", local_dir=str(folder / "lhjiang_anysplat"))
    except Exception as err:
        raise ValueError(f"{node}: could not download {name} and its base lhjiang/anysplat into {folder} ({err}); "
                         f"download them by hand into {folder} (HJGO_VIST3A/{file} and the lhjiang_anysplat folder) "
                         "and pick the file from the list") from err
    return path, base


def check_decoder_available(decoder: str) -> None:
    """Everything LoadStitchedDecoder will open for ``decoder`` exists and looks sound (files present or
    downloadable, headers and configs readable); raises the one clear error otherwise. Nothing is loaded."""
    from vist3a.checks import check_model_sources, check_weights_file
    from vist3a.errors import MissingModelsError

    if decoder in TINY_KINDS:
        return
    if decoder in MICRO_KINDS:
        from vist3a.pipeline.presets import micro_decoder_parts, micro_path

        for part in ("vae", *micro_decoder_parts(MICRO_KINDS[decoder])):
            micro_path(part)
        return
    folder = _comfy.model_folder()
    if decoder in (PUBLISHED, PUBLISHED_21):
        repo, file = decoder.rsplit("/", 1)
        wanted = [("stitched decoder " + file, repo, file, folder / "HJGO_VIST3A", [file]),
                  ("base AnySplat", "lhjiang/anysplat", "", folder / "lhjiang_anysplat",
                   ["model.safetensors", "config.json"])]
        items = []
        for what, repo_id, args, local_dir, files in wanted:
            reason = _errors.hub_files_missing(repo_id, files, local_dir)
            if reason:
                items.append((what, repo_id, args, local_dir, reason))
            elif (local_dir / files[0]).is_file():
                check_weights_file(local_dir / files[0], what)
        if items:
            raise MissingModelsError(_errors.download_message(items), items)
        return
    from vist3a.pipeline.sources import decoder_sources

    path = _comfy.resolve_local(decoder)
    if path is None:
        raise ValueError(f"{decoder!r} is not in models/vist3a/; put a published VIST3A .pth or one of our decoder "
                         "folders (decoder_config.json + model.safetensors) there, then refresh")
    base = None
    if path.suffix in (".pth", ".pt"):
        local_base = folder / "lhjiang_anysplat"
        base = str(local_base) if local_base.is_dir() else None
    check_model_sources(decoder_sources(path, base))


def build_decoder(node: str, decoder: str, dtype: str = "auto", device: str = "auto") -> DecoderHandle:
    """Pure-ish loader behind LoadStitchedDecoder (needs ComfyUI only for the model folder and the ModelPatcher)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    check_decoder_available(decoder)
    torch_dtype = None if dtype == "auto" else DTYPES.get(dtype)
    if dtype != "auto" and torch_dtype is None:
        raise ValueError(f"{node}: unknown dtype {dtype!r}; use auto, fp32, bf16 or fp16")
    bundled_vae, untrained = None, False
    if decoder in TINY_KINDS:
        from vist3a.pipeline.presets import TINY_WARNING, tiny_decoder
        from vist3a.stitching.vae import tiny_video_vae

        logger.warning("%s: %s", node, TINY_WARNING)
        model = tiny_decoder(0, TINY_KINDS[decoder])
        bundled_vae = tiny_video_vae("wan", seed=0).vae.eval()
        untrained = True
    elif decoder in MICRO_KINDS:
        from vist3a.pipeline.presets import micro_decoder, micro_video_vae

        try:
            model, bundled_vae = micro_decoder(MICRO_KINDS[decoder]), micro_video_vae()
        except FileNotFoundError as err:
            raise ValueError(f"{node}: {err}") from None
    elif decoder in (PUBLISHED, PUBLISHED_21):
        from vist3a.stitching import load_published_stitched

        path, base = _download_published(node, decoder)
        model = load_published_stitched(path, base=base)
    else:
        from vist3a.pipeline import load_stitched_decoder

        path = _comfy.resolve_local(decoder)
        if path is None:
            raise ValueError(f"{node}: {decoder!r} is not in models/vist3a/; put a published VIST3A .pth or one of "
                             "our decoder folders (decoder_config.json + model.safetensors) there, then refresh")
        base = None
        if path.suffix in (".pth", ".pt"):
            local_base = _comfy.model_folder() / "lhjiang_anysplat"
            base = str(local_base) if local_base.is_dir() else None
        model = load_stitched_decoder(path, base=base, check=False)
    if torch_dtype is not None:
        model = model.to(dtype=torch_dtype)
    model = model.eval().requires_grad_(False)
    if device == "cpu":
        load_device = offload_device = torch.device("cpu")
    elif device == "auto":
        load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    else:
        raise ValueError(f"{node}: unknown device {device!r}; use auto or cpu")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    return DecoderHandle(model, patcher, decoder, bundled_vae, untrained)


class LoadStitchedDecoder:
    DESCRIPTION = ("Loads a VIST3A stitched 3D decoder (AnySplat, VGGT or MVDUSt3R stitched into the Wan 2.1 VAE "
                   "latent space) from models/vist3a/ (any decoder folder written by the training scripts), or downloads the published HJGO/VIST3A decoder and its base "
                   "lhjiang/anysplat into that folder on first use. micro-anysplat and micro-mvdust3r are small "
                   "decoders shipped with the pack, trained on the micro world (coloured primitives on a textured "
                   "ground, 64x64 video; micro-mvdust3r also gives a pointmap); the tiny entries are untrained test "
                   "models.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (DECODER,)
    RETURN_NAMES = ("decoder",)
    OUTPUT_TOOLTIPS = ("The stitched decoder, managed by ComfyUI's model manager.",)

    @classmethod
    def INPUT_TYPES(cls):
        names = [PUBLISHED, PUBLISHED_21, *_comfy.local_decoders(), MICRO, MICRO_MVDUST3R, TINY, TINY_VGGT,
                 TINY_MVDUST3R]
        return {"required": {
            "decoder": (names, _tip("Published HJGO/VIST3A decoder (downloaded into models/vist3a/ on first use), a "
                                    "file/folder from models/vist3a/, a shipped micro-world decoder (micro-anysplat: "
                                    "splats + cameras; micro-mvdust3r: splats + pointmap; both with their own VAE), "
                                    "or a tiny untrained test model.")),
            "dtype": (["auto", "fp32", "bf16", "fp16"],
                      _tip("Weights precision; auto keeps fp32 (published). bf16 halves memory.")),
            "device": (["auto", "cpu"], _tip("auto: ComfyUI's GPU with offloading; cpu: always on the CPU.")),
        }, "optional": {
            "gaussians": (["follow config", "per pixel"],
                          _tip("follow config: voxel-fuse the Gaussians when the base AnySplat config says "
                               "voxelize (as the official code); per pixel: always one Gaussian per pixel.")),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, decoder=None):
        def check():
            if decoder is None:  # fed by a link: checked when the node runs
                return
            _errors.check_choice("decoder", decoder, cls.INPUT_TYPES()["required"]["decoder"][0])
            check_decoder_available(decoder)

        return _errors.validation("LoadStitchedDecoder", check)

    def load(self, decoder, dtype="auto", device="auto", gaussians="follow config"):
        handle = build_decoder("LoadStitchedDecoder", decoder, dtype, device)
        if gaussians == "per pixel":
            from vist3a.stitching.checkpoint import use_per_pixel_gaussians

            use_per_pixel_gaussians(handle.decoder)
        return (handle,)


# ============================================================================================ decoding helpers
def _latent(node: str, samples) -> torch.Tensor:
    if not isinstance(samples, dict) or "samples" not in samples:
        raise ValueError(f"{node}: samples must be a LATENT ({{'samples': tensor}}); connect a sampler's LATENT")
    z = samples["samples"]
    if not isinstance(z, torch.Tensor) or z.dim() != 5 or z.shape[1] != 16:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"{node}: expected a Wan 2.1 video latent (B, 16, T_lat, H/8, W/8), got {shape}; use the "
                         "Wan 2.1 model / EmptyHunyuanLatentVideo with 4k+1 frames")
    if 0 in z.shape:
        raise ValueError(f"{node}: the latent {tuple(z.shape)} is empty; connect a sampler's LATENT")
    if not torch.isfinite(z).all():
        raise ValueError(f"{node}: the latent holds NaN or infinite values (a diverged sampler? check its CFG, steps "
                         "and model); nothing was decoded")
    return z.float()


def _handle(node: str, decoder) -> DecoderHandle:
    if not isinstance(decoder, DecoderHandle):
        raise ValueError(  # noqa: TRY004 (a wrong wire in the graph: ComfyUI shows ValueError("Node: ...") messages)
            f"{node}: decoder must come from LoadStitchedDecoder, got {type(decoder).__name__}")
    return decoder


def _decode_frames(node: str, handle: DecoderHandle, vae, raw: torch.Tensor) -> torch.Tensor:
    """Raw latent -> frames (B, T, 3, H, W) in [0, 1] with ComfyUI's VAE (or the tiny preset's bundled VAE)."""
    b, _, t_lat = raw.shape[:3]
    t = (t_lat - 1) * 4 + 1
    if vae is not None:
        images = vae.decode(raw)
        if images.dim() == 4:
            images = images.reshape(b, -1, *images.shape[1:])
        if images.shape[1] != t:
            raise ValueError(f"{node}: the VAE decoded {images.shape[1]} frames for {t_lat} latent frames (expected "
                             f"{t}); connect the Wan 2.1 VAE")
        return images[..., :3].float().permute(0, 1, 4, 2, 3).clamp(0, 1).cpu()
    if handle.bundled_vae is not None:
        from vist3a.pipeline import decode_frames

        return decode_frames(handle.bundled_vae, raw).cpu()
    raise ValueError(f"{node}: this decoder reads RGB frames; connect the Wan 2.1 VAE (VAELoader wan_2.1_vae) to vae")


def _to_image(frames: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) -> ComfyUI IMAGE (B*T, H, W, 3)."""
    return frames.permute(0, 1, 3, 4, 2).reshape(-1, frames.shape[3], frames.shape[4], 3).contiguous().float()


@contextlib.contextmanager
def _block_hooks(decoder, total_steps: int):
    """Progress + interruption between the decoder's transformer blocks."""
    from torch import nn

    blocks = [m for name, mod in decoder.named_modules() if isinstance(mod, nn.ModuleList)
              and name.endswith(("frame_blocks", "global_blocks")) for m in mod]
    bar = _comfy.progress_bar(max(1, len(blocks)) * total_steps)

    def hook(_module, _args):
        _comfy.check_interrupt()
        bar.update(1)

    handles = [b.register_forward_pre_hook(hook) for b in blocks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def decode(node: str, handle: DecoderHandle, raw: torch.Tensor, frames: torch.Tensor | None,
           vggt_points: str = "head"):
    """Raw latent (B, 16, T_lat, h, w) (+ frames (B, T, 3, H, W) at the video size) -> per item
    (gaussians | None, cameras, pointmap, depth)."""
    from vist3a.pipeline import run_decoder
    from vist3a.pipeline.output import frames_size
    from vist3a.pipeline.wan import resize_frames

    if not isinstance(handle, DecoderHandle):
        raise ValueError(f"{node}: decoder must come from LoadStitchedDecoder")
    if handle.untrained:
        logger.warning("%s: tiny untrained decoder: the output is noise (plumbing test only)", node)
    b, _, t_lat, h, w = raw.shape
    t = (t_lat - 1) * 4 + 1
    size3d = frames_size(handle.decoder, h * 8, w * 8)
    # without frames: black for VGGT (unused), mid-grey for MVDUSt3R (its skip branch and colours)
    blank = 0.5 if handle.decoder.kind == "mvdust3r" else 0.0
    _comfy.check_interrupt()
    device = handle.load()
    results = []
    with _block_hooks(handle.decoder, b):
        for i in range(b):
            f3d = (resize_frames(frames[i:i + 1], size3d) if frames is not None
                   else torch.full((1, t, 3, *size3d), blank))
            try:
                results.append(run_decoder(handle.decoder, raw[i:i + 1], f3d, device, vggt_points))
            except ValueError as err:
                raise ValueError(f"{node}: {err}") from err
    return results


def _depth_image(depth: torch.Tensor) -> torch.Tensor:
    """(T, H, W) depth -> IMAGE (T, H, W, 3), each frame normalised to [0, 1] (near = bright)."""
    d = depth.float()
    flat = d.reshape(d.shape[0], -1)
    lo, hi = flat.amin(1).view(-1, 1, 1), flat.amax(1).view(-1, 1, 1)
    norm = 1 - (d - lo) / (hi - lo).clamp_min(1e-8)
    return norm.nan_to_num(0).clamp(0, 1)[..., None].expand(-1, -1, -1, 3).contiguous()


# ============================================================================================ nodes
_DECODER_IN = (DECODER, _tip("Stitched decoder from VIST3A Load Stitched Decoder."))
_LATENT_IN = ("LATENT", _tip("Wan 2.1 video latent (raw VAE space, as every ComfyUI sampler returns)."))
_VAE_IN = ("VAE", _tip("The Wan 2.1 VAE (VAELoader wan_2.1_vae): decodes the frames the AnySplat heads read. "
                       "Optional for VGGT decoders and for the tiny test decoder."))


class DecodeToSplats:
    DESCRIPTION = ("Decodes a Wan 2.1 video LATENT (from WanVIST3ASampler or core KSampler) with a stitched AnySplat "
                   "or MVDUSt3R decoder into 3D Gaussian splats, the predicted cameras (MVDUSt3R: estimated from its "
                   "pointmap) and the decoded frames.")
    CATEGORY = CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = (SPLATS, CAMERAS, "IMAGE")
    RETURN_NAMES = ("splats", "cameras", "frames")
    OUTPUT_TOOLTIPS = ("Gaussian splats, one scene per latent in the batch.", "Predicted cameras per frame.",
                       "The VAE-decoded video frames (B*T images).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "decoder": _DECODER_IN,
            "samples": _LATENT_IN,
        }, "optional": {"vae": _VAE_IN}}

    def decode(self, decoder, samples, vae=None):
        node = "DecodeToSplats"
        _handle(node, decoder)
        raw = _latent(node, samples)
        if "splats" not in decoder.decoder.outputs:
            kind = {"vggt": "VGGT"}.get(decoder.decoder.kind, decoder.decoder.kind)
            raise ValueError(f"{node}: {decoder.name} is a {kind} decoder (no Gaussians); use DecodeToPointmap")
        if decoder.decoder.kind == "mvdust3r" and vae is None and decoder.bundled_vae is None:
            b, _, t_lat, h, w = raw.shape  # MVDUSt3R reads RGB only for colours: grey splats without a VAE
            frames = torch.full((b, (t_lat - 1) * 4 + 1, 3, h * 8, w * 8), 0.5)
        else:
            frames = _decode_frames(node, decoder, vae, raw)
        results = decode(node, decoder, raw, frames)
        cameras = [r[1] for r in results]
        splats = make_splats([r[0] for r in results], cameras, decoder.untrained, CORE_SPLAT)
        return (splats, cameras, _to_image(frames))


def _check_pointmap(confidence_threshold, drop_percentile) -> None:
    from vist3a.checks import check_number

    if confidence_threshold is not None:
        check_number(confidence_threshold, "confidence_threshold", lo=0, hi=1000)
    if drop_percentile is not None:
        check_number(drop_percentile, "drop_percentile", lo=0, hi=99)


class DecodeToPointmap:
    DESCRIPTION = ("Decodes a Wan 2.1 video LATENT with a stitched decoder (AnySplat, VGGT or MVDUSt3R) into a "
                   "coloured point "
                   "cloud (pixels below the confidence threshold dropped), the cameras and depth maps.")
    CATEGORY = CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = (POINTS, CAMERAS, "IMAGE")
    RETURN_NAMES = ("points", "cameras", "depth")
    OUTPUT_TOOLTIPS = ("Point cloud per scene.", "Predicted cameras per frame.",
                       "Depth per frame, normalised per frame (near = bright).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "decoder": _DECODER_IN,
            "samples": _LATENT_IN,
            "confidence_threshold": ("FLOAT", _tip("Drop points whose confidence is below this value (0 keeps all).",
                                                   default=0.0, min=0.0, max=1000.0, step=0.01)),
            "drop_percentile": ("FLOAT", _tip("Also drop this percentage of the least confident points (0-99).",
                                              default=0.0, min=0.0, max=99.0, step=1.0)),
        }, "optional": {"vae": _VAE_IN}}

    @classmethod
    def VALIDATE_INPUTS(cls, confidence_threshold=None, drop_percentile=None):
        return _errors.validation("DecodeToPointmap", lambda: _check_pointmap(confidence_threshold, drop_percentile))

    def decode(self, decoder, samples, confidence_threshold=0.0, drop_percentile=0.0, vae=None):
        node = "DecodeToPointmap"
        _check_pointmap(confidence_threshold, drop_percentile)
        _handle(node, decoder)
        raw = _latent(node, samples)
        frames = None
        kind = decoder.decoder.kind if isinstance(decoder, DecoderHandle) else None
        optional = kind == "vggt" or (kind == "mvdust3r" and decoder.bundled_vae is None)
        if not (optional and vae is None):  # MVDUSt3R: frames only colour the points (grey without a VAE)
            frames = _decode_frames(node, decoder, vae, raw)
        results = decode(node, decoder, raw, frames)
        clouds = [r[2].to_point_cloud(float(confidence_threshold), float(drop_percentile)) for r in results]
        depth = torch.cat([_depth_image(r[3]) for r in results])
        return (PointBatch(clouds, decoder.untrained), [r[1] for r in results], depth)


class VIST3AImagesTo3D:
    DESCRIPTION = ("Reconstructs 3D from an ordered IMAGE batch (a video's frames): picks `frames` evenly spaced "
                   "frames (first and last kept), scales them to cover width x height and centre-crops, encodes them "
                   "with the Wan 2.1 VAE and runs the stitched AnySplat decoder (the '3D VAE' use).")
    CATEGORY = CATEGORY
    FUNCTION = "reconstruct"
    RETURN_TYPES = (SPLATS, POINTS, CAMERAS, "LATENT")
    RETURN_NAMES = ("splats", "points", "cameras", "latent")
    OUTPUT_TOOLTIPS = ("Gaussian splats.", "Point cloud (unprojected depth).", "Predicted cameras.",
                       "The encoded Wan latent.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "decoder": _DECODER_IN,
            "images": ("IMAGE", _tip("Ordered frames (T, H, W, 3), e.g. GetVideoComponents' images.")),
            "frames": ("INT", _tip("Frames to use, 4k+1 (published: 13), picked evenly over the clip.", default=13,
                                   min=5, max=257, step=4)),
            "width": ("INT", _tip("Video width, multiple of 16 (published: 512).", default=512, min=16, max=2048,
                                  step=16)),
            "height": ("INT", _tip("Video height, multiple of 16 (published: 512).", default=512, min=16, max=2048,
                                   step=16)),
        }, "optional": {"vae": (_VAE_IN[0], _tip("The Wan 2.1 VAE that encodes the frames (optional only for the "
                                                   "tiny test decoder)."))}}

    @classmethod
    def VALIDATE_INPUTS(cls, frames=None, width=None, height=None):
        return _errors.validation("VIST3AImagesTo3D", lambda: _errors.check_video(frames, width, height))

    def reconstruct(self, decoder, images, frames=13, width=512, height=512, vae=None):
        from vist3a.pipeline.frames import crop_resize, resample_indices

        node = "VIST3AImagesTo3D"
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] < 3 or images.shape[0] < 1:
            raise ValueError(f"{node}: images must be an IMAGE batch (T, H, W, 3)")
        if not torch.isfinite(images).all():
            raise ValueError(f"{node}: images hold NaN or infinite values; check the node that made them")
        _errors.check_video(frames, width, height)
        idx = resample_indices(images.shape[0], frames)
        clip = crop_resize(images[idx][..., :3].permute(0, 3, 1, 2).float().clamp(0, 1), height, width)
        pixels = clip.permute(0, 2, 3, 1).contiguous()
        if not isinstance(decoder, DecoderHandle) or "splats" not in decoder.decoder.outputs:
            raise ValueError(f"{node}: connect a stitched AnySplat or MVDUSt3R decoder from LoadStitchedDecoder")
        _comfy.check_interrupt()
        if vae is not None:
            raw = vae.encode(pixels).float()
            if raw.dim() == 4:
                raw = raw[None]
        elif decoder.bundled_vae is not None:
            tv = decoder.bundled_vae
            x = pixels.permute(3, 0, 1, 2)[None] * 2 - 1
            raw = tv.encode(x.to(next(tv.parameters()).dtype)).latent_dist.mean.float()
        else:
            raise ValueError(f"{node}: connect the Wan 2.1 VAE (VAELoader wan_2.1_vae) to vae")
        raw = _latent(node, {"samples": raw})
        (gaussians, cameras, pointmap, _depth), = decode(node, decoder, raw[:1], clip[None].cpu())
        return (make_splats([gaussians], [cameras], decoder.untrained, CORE_SPLAT),
                PointBatch([pointmap.to_point_cloud()], decoder.untrained), [cameras], {"samples": raw.cpu()})


# ============================================================================================ saving / preview
FORMATS = {"ply": [".ply"], "spz": [".spz"], "ply + spz": [".ply", ".spz"]}


def _splat_entries(node: str, splats, prefix: str, also_splat: bool, temp: bool,
                   file_format: str = "ply") -> tuple[list[dict], bool]:
    """Write each scene as ``file_format`` (+ ``.splat``); the entries of the files the previewer shows (the first
    file of each scene) and whether the splats came from untrained models."""
    from vist3a.io import write_gaussians_ply, write_splat, write_spz

    if file_format not in FORMATS:
        raise ValueError(f"{node}: format must be one of {', '.join(FORMATS)}, got {file_format!r}")
    gaussians, untrained = to_gaussians(node, splats)
    # the decoded cameras ride along on our splat objects (not on splats a core node made or transformed): saved
    # scenes get the same ``<scene>.cameras.json`` sidecar as ``vist3a generate`` writes (``vist3a render`` uses it)
    cameras = list(getattr(splats, "cameras", None) or getattr(splats, "vist3a_cameras", None) or [])
    entries = []
    for i, g in enumerate(gaussians):
        _comfy.check_interrupt()
        exts = FORMATS[file_format] + ([".splat"] if also_splat else [])
        paths, subfolder, kind = _comfy.save_paths(node, prefix, exts, temp=temp)
        for path in paths:
            {".ply": write_gaussians_ply, ".spz": write_spz, ".splat": write_splat}[path.suffix](path, g)
        if not temp and i < len(cameras) and cameras[i] is not None:
            from vist3a.io.cameras_json import cameras_sidecar, write_cameras_json

            write_cameras_json(cameras_sidecar(paths[0]), cameras[i])
        logger.info("%s: wrote %s (%d Gaussians)", node, ", ".join(p.name for p in paths), len(g))
        entries.append({"filename": paths[0].name, "subfolder": subfolder, "type": kind})
    return entries, untrained


def _ui(entries: list[dict], untrained: bool = False) -> dict:
    """The output nodes' UI payload: our previewer reads ``vist3a_splats`` (and ``vist3a_untrained``, to show a
    banner), core's 3D views ``3d``."""
    ui = {"vist3a_splats": entries, "3d": [dict(e) for e in entries]}
    if untrained:
        ui["vist3a_untrained"] = [True]
    return ui


class SaveSplatPLY:
    DESCRIPTION = ("Saves Gaussian splats as standard 3DGS .ply (readable by every 3DGS viewer), compressed .spz "
                   "(Niantic, about 10x smaller; read by ComfyUI's Load 3D, Spark, Marble) or both, optionally also "
                   ".splat, into ComfyUI's output folder, and shows them in the VIST3A previewer.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "splats": (SPLATS_IN, _tip("Gaussian splats from DecodeToSplats, VIST3A Images To 3D or (on a ComfyUI "
                                       "with the core SPLAT type) any core splat node.")),
            "filename_prefix": ("STRING", _tip("File name prefix inside the output folder; may contain subfolders "
                                               "(vist3a/scene). Never leaves the output folder.",
                                               default="vist3a/scene")),
            "also_splat": ("BOOLEAN", _tip("Also write an antimatter15 .splat file (DC colour only).",
                                           default=False)),
        }, "optional": {
            "format": (list(FORMATS), _tip("ply: 3DGS .ply with every SH band. spz: Niantic .spz, about 10x smaller, "
                                           "SH up to degree 3. ply + spz: both (the previewer shows the first).",
                                           default="ply")),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix=None):
        return _errors.validation("SaveSplatPLY", _errors.check_output_folder)

    def save(self, splats, filename_prefix="vist3a/scene", also_splat=False, format="ply"):
        entries, untrained = _splat_entries("SaveSplatPLY", splats, filename_prefix, also_splat, False, format)
        return {"ui": _ui(entries, untrained), "result": ()}


class PreviewSplats:
    DESCRIPTION = "Shows Gaussian splats in the VIST3A previewer without keeping them (written to the temp folder)."
    CATEGORY = CATEGORY
    FUNCTION = "preview"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"splats": (SPLATS_IN, _tip("Gaussian splats to look at (ours or core SPLAT)."))}}

    def preview(self, splats):
        entries, untrained = _splat_entries("PreviewSplats", splats, "vist3a_preview/splats", False, True)
        return {"ui": _ui(entries, untrained), "result": ()}


class SavePointCloudPLY:
    DESCRIPTION = "Saves point clouds as coloured point-cloud .ply (with confidence) into ComfyUI's output folder."
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "points": (POINTS, _tip("Point clouds from DecodeToPointmap or VIST3A Images To 3D.")),
            "filename_prefix": ("STRING", _tip("File name prefix inside the output folder; may contain subfolders. "
                                               "Never leaves the output folder.", default="vist3a/points")),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix=None):
        return _errors.validation("SavePointCloudPLY", _errors.check_output_folder)

    def save(self, points, filename_prefix="vist3a/points"):
        from vist3a.io import write_point_cloud_ply

        node = "SavePointCloudPLY"
        if not isinstance(points, PointBatch):
            raise ValueError(f"{node}: points must come from DecodeToPointmap or VIST3A Images To 3D")
        entries = []
        for cloud in points.clouds:
            (path,), subfolder, kind = _comfy.save_paths(node, filename_prefix, [".ply"])
            write_point_cloud_ply(path, cloud)
            logger.info("%s: wrote %s (%d points)", node, path, len(cloud.points))
            entries.append({"filename": path.name, "subfolder": subfolder, "type": kind})
        ui = {"vist3a_points": entries, "3d": [dict(e) for e in entries]}
        if points.untrained:
            ui["vist3a_untrained"] = [True]
        return {"ui": ui, "result": ()}


NODES = {
    "LoadStitchedDecoder": (LoadStitchedDecoder, "VIST3A Load Stitched Decoder"),
    "DecodeToSplats": (DecodeToSplats, "VIST3A Decode To Splats"),
    "DecodeToPointmap": (DecodeToPointmap, "VIST3A Decode To Pointmap"),
    "VIST3AImagesTo3D": (VIST3AImagesTo3D, "VIST3A Images To 3D"),
    "SaveSplatPLY": (SaveSplatPLY, "VIST3A Save Splat PLY"),
    "SavePointCloudPLY": (SavePointCloudPLY, "VIST3A Save Point Cloud PLY"),
    "VIST3APreviewSplats": (PreviewSplats, "VIST3A Preview Splats"),
}
