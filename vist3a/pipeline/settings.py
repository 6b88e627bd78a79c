"""Published VIST3A inference settings and the checks every pipeline input goes through.

Defaults follow the official ``inference_t23d.py`` of gohyojun15/VIST3A: Wan 2.1 T2V in fp16 with the VIST3A LoRA
(EMA) on the transformer, UniPC (flow prediction, flow sigmas, flow shift 5.0), 512x512 video, 13 frames, 50 steps,
CFG 7.5, the camera-orbit prompt template and its negative prompt. Every value is overridable.

Size rules (checked, never silently changed):

* frames: ``4k + 1`` (the Wan VAE compresses time by 4 with a causal first frame);
* video height / width: multiples of 16 (VAE /8, stitching conv stride 2); the 3D model then sees
  ``video / 16 * 14`` pixels per side (512 -> 448).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

__all__ = [
    "DEFAULT_DECODER",
    "DEFAULT_DECODER_FILE",
    "DEFAULT_LORA_REPO",
    "DEFAULT_NEGATIVE_PROMPT",
    "DEFAULT_WAN",
    "LORA_SUBFOLDERS",
    "PROMPT_TEMPLATE",
    "GenerationSettings",
    "apply_template",
    "check_frames",
    "check_prompt",
    "check_size",
    "model_size",
]

DEFAULT_WAN = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
DEFAULT_LORA_REPO = "HJGO/VIST3A"
LORA_SUBFOLDERS = {"1.3b": "vist3a_1.3b_lora_ema", "14b": "vist3a_14b_lora_ema"}
DEFAULT_DECODER = "HJGO/VIST3A"
DEFAULT_DECODER_FILE = "anysplat_stitched.pth"

#: ``{prompt}`` is replaced by the user's prompt (official wording, including the backticks).
PROMPT_TEMPLATE = ("The camera rotates around the scene, maintaining constant distance: `{prompt}`. "
                   "The orbiting trajectory captures 3D structure and consistency.")
DEFAULT_NEGATIVE_PROMPT = (
    "Background blur, Blurred background, Blurred scene, Artifacts, not aesthetic, not realistic, rendered noise, "
    "low quality movement, low quality video, low quality image, deformed, disfigured, distorted, extra limbs, "
    "cloned face, skinny, glitchy, double torso, extra arms, extra hands, mangled fingers, missing lips, ugly face, "
    "distorted legs, fused fingers, too many fingers, long neck"
)

VIDEO_PIXELS_PER_TOKEN = 16
MODEL_PATCH = 14
TEMPORAL = 4


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings (defaults = the published ones). ``height``/``width`` are video pixels."""

    num_frames: int = 13
    height: int = 512
    width: int = 512
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    flow_shift: float = 5.0
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    prompt_template: str | None = PROMPT_TEMPLATE
    max_sequence_length: int = 512

    def replace(self, **changes) -> GenerationSettings:
        """A copy with the non-None ``changes`` applied."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def check(self, names: dict[str, str] | None = None) -> None:
        """Raise ValueError unless every setting is usable (finite numbers in range, sizes the models take).
        ``names`` maps field names to what the user typed (e.g. ``{"guidance_scale": "--cfg"}``) for the message."""
        from ..checks import check_integer, check_number

        n = {f: f for f in ("num_frames", "height", "width", "num_inference_steps", "guidance_scale", "flow_shift",
                            "max_sequence_length")}
        n.update(names or {})
        check_frames(self.num_frames, n["num_frames"])
        check_size(self.height, self.width, (n["height"], n["width"]))
        check_integer(self.num_inference_steps, n["num_inference_steps"], lo=1, hint="the published setting is 50")
        check_number(self.guidance_scale, n["guidance_scale"], lo=0,
                     hint="the published setting is 7.5 (values <= 1 turn classifier-free guidance off)")
        check_number(self.flow_shift, n["flow_shift"], lo=0, lo_open=True, hint="the published setting is 5.0")
        check_integer(self.max_sequence_length, n["max_sequence_length"], lo=1)
        if not isinstance(self.negative_prompt, str):
            raise ValueError(  # noqa: TRY004 (a bad setting value, reported like the others)
                f"negative_prompt must be a string, got {type(self.negative_prompt).__name__}")


def check_frames(num_frames: int, name: str = "num_frames") -> int:
    """Raise unless ``num_frames`` is a whole number 4k + 1 (k >= 1); return it as int."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, float)) or not math.isfinite(num_frames):
        raise ValueError(f"{name} {num_frames!r}: must be a whole number 4k + 1 (5, 9, 13, 17, 21, ...; "
                         "published: 13)")
    n = int(num_frames)
    if n != num_frames or n < 5 or (n - 1) % TEMPORAL:
        lo = max(TEMPORAL * ((n - 1) // TEMPORAL) + 1, 5)
        hi = lo + TEMPORAL if lo <= n else lo
        raise ValueError(f"{name} {num_frames}: the Wan VAE needs 4k + 1 frames (5, 9, 13, 17, 21, ...); use "
                         f"{lo}{'' if hi == lo else f' or {hi}'} (published: 13)")
    return n


def check_size(height: int, width: int, names: tuple[str, str] = ("video height", "video width")) -> tuple[int, int]:
    """Raise unless both sides are positive multiples of 16 (video pixels per stitched token)."""
    for name, v in zip(names, (height, width)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} {v!r}: must be a whole number of pixels, a multiple of 16 (published: 512)")
        if int(v) != v or v < VIDEO_PIXELS_PER_TOKEN or v % VIDEO_PIXELS_PER_TOKEN:
            near = max(VIDEO_PIXELS_PER_TOKEN, round(v / VIDEO_PIXELS_PER_TOKEN) * VIDEO_PIXELS_PER_TOKEN)
            raise ValueError(f"{name} {v}: sizes must be multiples of 16 (VAE /8 x stitching stride 2, so "
                             f"that video/16 == 3D-model size/14, e.g. 512 <-> 448); use {near}")
    return int(height), int(width)


def model_size(height: int, width: int) -> tuple[int, int]:
    """3D-model frame size for a video size: ``video / 16 * 14`` per side (512 -> 448)."""
    check_size(height, width)
    return height // VIDEO_PIXELS_PER_TOKEN * MODEL_PATCH, width // VIDEO_PIXELS_PER_TOKEN * MODEL_PATCH


def check_prompt(prompt: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt is empty: describe the scene, e.g. \"a red sports car\"")
    return prompt.strip()


def apply_template(prompt: str, template: str | None) -> str:
    """Insert the prompt into the camera-orbit template (``None`` or ``""``: the prompt alone)."""
    prompt = check_prompt(prompt)
    if not template:
        return prompt
    if "{prompt}" not in template:
        raise ValueError(f"prompt template {template!r} has no '{{prompt}}' placeholder")
    return template.replace("{prompt}", prompt)
