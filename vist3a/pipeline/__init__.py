"""Pipelines: text -> 3D (:class:`TextTo3DPipeline`) and video -> 3D (:class:`VideoTo3DPipeline`).

They orchestrate diffusers' Wan 2.1 parts (:mod:`.wan`) and a stitched decoder (:mod:`vist3a.stitching`) and return
a :class:`SceneOutput` (Gaussians, cameras, pointmap, frames, depth, raw latent). Defaults are the published VIST3A
inference settings (:mod:`.settings`); ``TextTo3DPipeline.tiny()`` / ``VideoTo3DPipeline.tiny()`` build small random
models for offline smoke runs (:mod:`.presets`).
"""

from .decoders import load_stitched_decoder
from .fast import FAST, FastOptions
from .output import SceneOutput, run_decoder
from .settings import (
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_WAN,
    PROMPT_TEMPLATE,
    GenerationSettings,
    apply_template,
    check_frames,
    check_size,
    model_size,
)
from .text_to_3d import TextTo3DPipeline
from .video_to_3d import VideoTo3DPipeline
from .wan import (
    decode_frames,
    load_vist3a_lora,
    load_wan_pipeline,
    make_scheduler,
    to_model_space,
    to_raw_latent,
)

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "DEFAULT_WAN",
    "FAST",
    "PROMPT_TEMPLATE",
    "FastOptions",
    "GenerationSettings",
    "SceneOutput",
    "TextTo3DPipeline",
    "VideoTo3DPipeline",
    "apply_template",
    "check_frames",
    "check_size",
    "decode_frames",
    "load_stitched_decoder",
    "load_vist3a_lora",
    "load_wan_pipeline",
    "make_scheduler",
    "model_size",
    "run_decoder",
    "to_model_space",
    "to_raw_latent",
]
