"""DRTune reward alignment of the Wan 2.1 transformer for VIST3A (paper Algorithm 1): a LoRA on the transformer is
trained so that sampled latents decode into better, more 3D-consistent scenes.

Usage::

    python -m training.align_drtune --preset tiny --steps 20 --output runs/drtune_tiny      # CPU smoke test

    torchrun --nproc_per_node 8 -m training.align_drtune --wan Wan-AI/Wan2.1-T2V-1.3B-Diffusers \\
        --decoder HJGO/VIST3A/anysplat_stitched.pth --clip <CLIP hub id or folder> --prompts prompts.txt \\
        --data /data/DL3DV-960P --steps 2000 --output runs/drtune                           # FSDP2 on CUDA (auto)

One iteration (per process; B = ``--batch-size`` prompts):

1. draw the number of sampling steps T uniformly in [T1, T2] (``--t-min/--t-max``, 10..50), K distinct steps out
   of T with gradients (``--grad-steps``, 2; with ``--grad-last`` K of the first T-1 plus the final step) and the CFG
   scale uniformly in [4, 6] (``--cfg-min/--cfg-max``, the released code);
2. roll out from Gaussian noise with the VIST3A sampler (diffusers UniPC, flow prediction, flow sigmas, shift 5:
   :func:`vist3a.pipeline.wan.make_scheduler`). At EVERY step the transformer input is detached (``x_t.detach()``);
   the transformer runs under ``no_grad`` except at the chosen steps; the scheduler update itself keeps its graph,
   so the final latent depends on the chosen steps' outputs through the sampler's linear updates only (DRTune's
   stop-gradient on the denoiser input);
3. rewards on the final model-space latent (:mod:`training.rewards`: decoded frames, stitched-decoder renders);
4. loss = ``--gen-weight`` x L_gen - mean weighted reward, where L_gen is the rectified-flow loss on multi-view clips
   (``--data`` folders or ``--synthetic`` scenes, VAE-encoded):
   ``sigma = shift u / (1 + (shift - 1) u)``, u ~ U(0, 1) (Wan's shifted schedule), ``x_t = (1 - sigma) x0 + sigma
   eps``, target ``v = eps - x0``, transformer timestep ``1000 sigma``. This is the sign diffusers' flow schedulers use:
   UniPC's ``flow_prediction`` recovers ``x0 = x_t - sigma v`` (tested in tests/test_align_drtune.py);
5. AdamW (lr 1e-4) on the LoRA only (peft, r 8, alpha 16 on attn1/attn2 to_q, to_k, to_v, to_out.0; everything
   else frozen), gradient-norm clip 0.1, EMA of the adapter (0.99).

Recipes (``--recipe``; default ``official``, the released ``train_vdm.py`` that produced the published
``vist3a_*_lora_ema`` adapters; ``paper`` is the paper's Algorithm 1 as described above). ``official`` changes:
UniPC flow shift 3.0 for the rollouts; T ~ U{10..50} but T = 50 every 10th iteration; K = 2 distinct steps drawn
from all T PLUS the final step always; CFG ~ U[4, 6]; empty negative prompt; 226 text tokens; each rollout prompt
wrapped in a random camera-motion phrase (:data:`CAMERA_TEMPLATES`, 80 templates of 16 motion kinds around the
prompt in backticks; our wording, the released list's categories) instead of the orbit template; L_gen with
sigma ~ U(0, 1) (no shift) on the clips' captions as they are, 4 clips per step; grad clip 1.0 (a step with a
non-finite gradient norm is skipped); AdamW betas (0.9, 0.95), no weight decay (the released command; its argparse
default is 1e-4: ``--weight-decay 1e-4``); EMA 0.99 with the warm-up ``min((1 + i) / (10 + i), 0.99)``; reward
``official`` (:class:`training.rewards.OfficialReward`: PickScore + DFN5B CLIP, 0.25 each, on the renders at all
predicted cameras (white background) plus one decoded frame; no consistency term).

Text conditioning: the Wan pipeline's ``encode_prompt`` on the camera-orbit template of
:data:`vist3a.pipeline.settings.PROMPT_TEMPLATE` (``--prompt-template ''`` for the bare prompt), negative prompt =
the published one; the quality rewards read the bare prompt. Data clips use their ``caption``/``prompt`` field when
they have one, else ``--gen-prompt``.

Processes: one process, or torchrun. On CUDA with more than one process the transformer is sharded with FSDP2
(``fully_shard`` on every transformer block, then the root; ``--fsdp auto|on|off``); otherwise every rank holds the
whole model and the (small) LoRA gradients are averaged with one all-reduce per step (DDP semantics, but tolerant of
the several forward passes per backward that DRTune needs). Every random draw of iteration i comes from generators
seeded by (``--seed``, i, rank), so resuming from a checkpoint continues exactly like an uninterrupted run.

Writes into ``--output`` only (rank 0; atomic files):

* ``checkpoints/step_NNNNNN/`` - LoRA, EMA, optimizer and scheduler state (:mod:`training.runtime`), every
  ``--save-every`` steps, at the end and on Ctrl-C (exit code 130); ``--resume`` continues from the newest;
* ``lora_ema/`` - the EMA adapter as a PEFT folder (adapter_config.json + adapter_model.safetensors), loadable
  like the published ``vist3a_*_lora_ema`` adapters (``vist3a.pipeline.wan.load_vist3a_lora``, ``--lora`` of the CLI,
  the ComfyUI node's LoRA list);
* ``config.json`` (the run's arguments) and ``metrics.jsonl`` (one line per step).
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as `python training/<script>.py`: import it as part of the training package
    import os as _os
    import sys as _sys

    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    __package__ = "training"  # noqa: A001 (PEP 366: makes the relative imports below work)

import argparse
import contextlib
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import Self

from vist3a.io.atomic import atomic_path, atomic_write
from vist3a.pipeline.settings import (
    DEFAULT_NEGATIVE_PROMPT,
    PROMPT_TEMPLATE,
    apply_template,
    check_frames,
    check_size,
)

from .rewards import (
    DEFAULT_REWARDS,
    OFFICIAL_REWARDS,
    RewardBatch,
    SceneDecoder,
    build_rewards,
    parse_reward_spec,
    total_reward,
)

__all__ = [
    "CAMERA_TEMPLATES",
    "LORA_TARGETS",
    "RECIPES",
    "AdapterEMA",
    "AlignConfig",
    "DRTuneTrainer",
    "add_lora",
    "build_parser",
    "camera_prompt",
    "drtune_rollout",
    "export_adapter",
    "flow_matching_loss",
    "flow_sigmas",
    "guided_velocity",
    "main",
    "sample_plan",
]

logger = logging.getLogger("vist3a.align_drtune")

#: The released VIST3A LoRA targets (every attn1 / attn2 projection of the Wan blocks; Wan has no other to_q...).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TINY_PROMPTS = ("a red sports car", "a wooden cabin in a snowy forest", "a bowl of fruit on a table",
                "a stone lighthouse on a cliff")

#: Camera-motion phrases of the official recipe, ``{p}`` = the prompt in backticks. The released code draws one of
#: 80 such sentences (16 motion kinds x 5, plus a bare-prompt entry) per rollout; the wording here is ours.
CAMERA_TEMPLATES = (
    "{p}",
    # pan
    "A slow pan from left to right sweeps across {p}.", "The view pans quickly from right to left over {p}.",
    "A wide horizontal pan takes in {p}.", "The camera pans steadily to reveal more of {p}.",
    "A full panoramic turn surveys {p}.",
    # orbit
    "The camera circles {p}, keeping it in the centre of the frame.",
    "An orbit around {p} shows it from every side.",
    "The camera rotates around the scene, holding a constant distance from {p}.",
    "A half orbit moves from the front to the side of {p}.", "A smooth circular path goes around {p}.",
    # dolly
    "The camera dollies in towards {p}.", "A dolly out shows the surroundings of {p}.",
    "The view pushes forward into {p}.", "The camera pulls back from {p}.",
    "A gentle push in draws attention to {p}.",
    # zoom
    "A slow zoom in on {p}.", "A fast zoom out shows all of {p}.", "The lens zooms in on the details of {p}.",
    "A steady zoom frames {p} tighter.", "The shot zooms out from a close-up to the whole of {p}.",
    # tilt
    "The camera tilts up over {p}.", "The camera tilts down towards the ground of {p}.",
    "An upward tilt shows the height of {p}.", "A vertical tilt scans {p} from top to bottom.",
    "A slight tilt keeps {p} in view.",
    # fly-through
    "A fly-through of {p}.", "Drone footage gliding over {p}.", "A low flight across {p}.",
    "The camera weaves through {p}.", "A continuous flight through {p}.",
    # arc
    "The camera follows an arc around {p}.", "A diagonal arc shows {p} from several angles.",
    "An arc at mid height around {p}.", "An arc move keeps {p} centred while the background shifts.",
    "A half-circle arc shows the side and the back of {p}.",
    # spiral
    "The camera spirals upwards around {p}.", "A helical path circles {p}.", "A downward spiral towards {p}.",
    "A rising spiral around {p}.", "A tightening spiral closes in on {p}.",
    # tracking
    "A tracking shot moves through {p}.", "The camera tracks along {p}, keeping it centred.",
    "A smooth follow shot of {p}.", "The camera travels alongside {p}.", "A tracking move at a fixed distance from {p}.",
    # crane
    "A crane shot rises above {p}.", "A crane move lowers the camera towards {p}.",
    "The camera lifts from ground level over {p}.", "A crane up to a high view of {p}.",
    "The camera descends to the details of {p}.",
    # rotation in place
    "The camera turns a full circle in place within {p}.", "A spin on the spot shows every direction of {p}.",
    "A slow turn in place inside {p}.", "A rotating sweep of the surroundings of {p}.",
    "The camera spins steadily to show {p} from all angles.",
    # handheld
    "Handheld footage of {p}.", "A slightly shaky handheld shot of {p}.", "A handheld camera walks through {p}.",
    "A natural, hand-held look at {p}.", "A handheld shot gives {p} a lively feel.",
    # composite
    "A dolly in that turns into an orbit around {p}.", "A pan that becomes a tilt up over {p}.",
    "A zoom in followed by an arc around {p}.", "A fly-through that ends in a rising spiral over {p}.",
    "A dolly out that ends with a turn in place in {p}.",
    # speed
    "The camera speeds up gradually while filming {p}.", "A quick start, then a steady glide through {p}.",
    "A slow start that accelerates towards {p}.", "The motion eases in and out around {p}.",
    "The movement changes gradually across {p}.",
    # cinematic tone
    "A graceful cinematic glide across {p}.", "A sweeping dramatic move over {p}.",
    "A calm, slow camera move through {p}.", "An energetic camera move around {p}.",
    "A suspenseful tracking move through {p}.",
    # experimental
    "The camera rolls diagonally towards {p}.", "A gently oscillating camera over {p}.",
    "A free-floating camera drifts through {p}.", "Alternating zooms and pans across {p}.",
    "A parallax sweep that layers the depth of {p}.",
)


def camera_prompt(prompt: str, rng: random.Random) -> str:
    """The official recipe's rollout text: a random :data:`CAMERA_TEMPLATES` entry around the prompt in backticks."""
    return rng.choice(CAMERA_TEMPLATES).format(p=f"`{prompt}`")


#: What ``--recipe`` sets (explicit options override): paper = the AlignConfig defaults.
RECIPES: dict[str, dict] = {
    "paper": {},
    "official": {"flow_shift": 3.0, "plan": "official", "grad_last": True, "grad_clip": 1.0, "negative_prompt": "",
                 "max_sequence_length": 226, "prompt_template": "", "camera_prompts": True, "gen_sigma": "uniform",
                 "gen_template": False, "betas": (0.9, 0.95), "weight_decay": 0.0, "ema_warmup": True,
                 "skip_nonfinite": True, "gen_batch_size": 4, "reward": OFFICIAL_REWARDS,
                 "render_background": (1.0, 1.0, 1.0)},
}


# ============================================================================================ config
@dataclass
class AlignConfig:
    """Hyper-parameters (defaults: paper / released code). Sizes are video pixels; frames are 4k + 1."""

    steps: int = 1000
    t_min: int = 10
    t_max: int = 50
    grad_steps: int = 2
    grad_last: bool = False
    cfg_min: float = 4.0
    cfg_max: float = 6.0
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup: int = 0
    lr_schedule: str = "constant"
    grad_clip: float = 0.1
    ema_decay: float = 0.99
    lora_rank: int = 8
    lora_alpha: float = 16.0
    gen_weight: float = 1.0
    batch_size: int = 1
    gen_batch_size: int = 1
    num_frames: int = 13
    height: int = 512
    width: int = 512
    flow_shift: float = 5.0
    max_sequence_length: int = 512
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    prompt_template: str = PROMPT_TEMPLATE
    gen_prompt: str = "a static scene"
    views: int = 2
    seed: int = 0
    save_every: int = 100
    keep_last: int = 3
    gradient_checkpointing: bool = False
    recipe: str = "paper"
    plan: str = "paper"             # "official": T = t_max every long_every-th iteration, K of all T + the last
    long_every: int = 10
    camera_prompts: bool = False    # official: a random camera phrase per rollout instead of prompt_template
    gen_sigma: str = "shifted"      # L_gen sigma: "shifted" (flow_shift, Wan's schedule) or "uniform" (U(0, 1))
    gen_template: bool = True       # apply prompt_template to the L_gen captions
    betas: tuple[float, float] = (0.9, 0.999)
    ema_warmup: bool = False        # official: decay min((1 + i) / (10 + i), ema_decay)
    skip_nonfinite: bool = False    # official: skip the update when the gradient norm is not finite
    render_background: tuple[float, float, float] | None = None

    def check(self) -> AlignConfig:
        """Raise ValueError naming the bad setting and what to do."""
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.t_min < 1:
            raise ValueError(f"--t-min must be >= 1, got {self.t_min} (paper: 10)")
        if self.t_min > self.t_max:
            raise ValueError(f"--t-min ({self.t_min}) > --t-max ({self.t_max}): the number of sampling steps is drawn "
                             "from [T1, T2]; use T1 <= T2 (paper: 10..50)")
        if self.grad_steps < 0:
            raise ValueError(f"--grad-steps must be >= 0, got {self.grad_steps}")
        if self.plan not in ("paper", "official") or self.gen_sigma not in ("shifted", "uniform"):
            raise ValueError(f"plan must be 'paper' or 'official' and gen_sigma 'shifted' or 'uniform', got "
                             f"{self.plan!r}, {self.gen_sigma!r}")
        room = self.t_min - (1 if self.grad_last and self.plan == "paper" else 0)
        if self.grad_steps > room:
            last = ", minus the final step of --grad-last" if self.grad_last else ""
            raise ValueError(f"--grad-steps K={self.grad_steps} > {room}: K distinct steps must fit in the shortest "
                             f"rollout (T1={self.t_min}{last}); lower K or raise --t-min")
        if self.grad_steps == 0 and not self.grad_last:
            raise ValueError("--grad-steps 0 without --grad-last: no step would carry gradients to the LoRA")
        if not 0 <= self.cfg_min <= self.cfg_max:
            raise ValueError(f"CFG range [{self.cfg_min}, {self.cfg_max}] is invalid; need 0 <= --cfg-min <= --cfg-max "
                             "(released: 4..6)")
        for name in ("lr", "grad_clip", "flow_shift", "lora_alpha"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {v}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must be in [0, 1), got {self.ema_decay} (released: 0.99)")
        if self.gen_weight < 0 or not math.isfinite(self.gen_weight):
            raise ValueError(f"--gen-weight must be finite and >= 0, got {self.gen_weight}")
        if self.lora_rank < 1:
            raise ValueError(f"--lora-rank must be >= 1, got {self.lora_rank}")
        if self.batch_size < 1 or self.gen_batch_size < 1:
            raise ValueError("--batch-size and --gen-batch-size must be >= 1")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"--lr-schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.warmup < 0 or self.save_every < 1 or self.keep_last < 0 or self.views < 1:
            raise ValueError("--warmup >= 0, --save-every >= 1, --keep-last >= 0 and --views >= 1 are required")
        check_frames(self.num_frames)
        check_size(self.height, self.width)
        return self

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(16, T_lat, H/8, W/8) of one sample."""
        return (16, (self.num_frames - 1) // 4 + 1, self.height // 8, self.width // 8)


# ============================================================================================ flow matching
def flow_sigmas(u: Tensor, shift: float) -> Tensor:
    """Wan / UniPC flow-sigma shift: ``shift u / (1 + (shift - 1) u)`` for u in [0, 1] (u = 1 pure noise)."""
    return shift * u / (1 + (shift - 1) * u)


def _call(transformer, x: Tensor, t: Tensor, text: Tensor) -> Tensor:
    """One transformer forward in its dtype: x (N, 16, T_lat, h, w), t (N,) in [0, 1000], text (N, L, D) -> (N, ...)
    float32 velocity."""
    dtype = next(p for p in transformer.parameters()).dtype
    out = transformer(hidden_states=x.to(dtype), timestep=t, encoder_hidden_states=text.to(dtype), return_dict=False)
    return out[0].float()


def flow_matching_loss(transformer, x0: Tensor, text: Tensor, generator: torch.Generator,
                       flow_shift: float | None) -> Tensor:
    """Rectified-flow loss on clean model-space latents ``x0`` (B, 16, T_lat, h, w) with text ``(B, L, D)``:
    ``sigma = flow_sigmas(u)`` (``flow_shift=None``: sigma = u ~ U(0, 1), the released L_gen), ``x_t = (1 - sigma) x0
    + sigma eps``, target ``v = eps - x0`` (the sign of diffusers' flow-matching schedulers),
    ``mean((model(x_t, 1000 sigma) - v)^2)``. Random draws from ``generator`` (CPU)."""
    b = x0.shape[0]
    eps = torch.randn(x0.shape, generator=generator).to(x0)
    u = torch.rand(b, generator=generator)
    sigma = (u if flow_shift is None else flow_sigmas(u, flow_shift)).to(x0)
    s = sigma.view(b, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps
    pred = _call(transformer, x_t, sigma * 1000.0, text)
    return F.mse_loss(pred, eps - x0)


def guided_velocity(transformer, x: Tensor, t: Tensor, cond: Tensor, uncond: Tensor | None, guidance: float) -> Tensor:
    """CFG velocity ``u + g (c - u)`` with the unconditional and conditional passes in ONE batched forward
    (2B samples). x (B, 16, T_lat, h, w); t scalar timestep; cond / uncond (B, L, D). ``guidance <= 1`` or no
    ``uncond``: the conditional pass alone."""
    b = x.shape[0]
    if uncond is None or guidance <= 1.0:
        return _call(transformer, x, t.reshape(1).expand(b), cond)
    out = _call(transformer, torch.cat([x, x]), t.reshape(1).expand(2 * b), torch.cat([uncond, cond]))
    u, c = out.chunk(2)
    return u + guidance * (c - u)


def sample_plan(rng: random.Random, config: AlignConfig, step: int = 0) -> tuple[int, list[int]]:
    """(T, sorted grad-enabled step indices) of iteration ``step``: T ~ U{T1..T2}; K distinct steps of T (of the
    first T-1 plus T-1 itself with ``grad_last``). ``plan="official"``: T = T2 when ``step % long_every == 0``, and
    K distinct steps of all T plus T-1 always (2 or 3 steps). Shared by all ranks; the CFG scale is drawn per rank."""
    steps = rng.randint(config.t_min, config.t_max)
    if config.plan == "official":
        if config.long_every and step % config.long_every == 0:
            steps = config.t_max
        chosen = set(rng.sample(range(steps), min(config.grad_steps, steps)))
        chosen.add(steps - 1)
        return steps, sorted(chosen)
    pool = range(steps - 1) if config.grad_last else range(steps)
    chosen = set(rng.sample(pool, config.grad_steps))
    if config.grad_last:
        chosen.add(steps - 1)
    return steps, sorted(chosen)


def drtune_rollout(transformer, noise: Tensor, cond: Tensor, uncond: Tensor | None, *, steps: int,
                   grad_steps: Sequence[int], guidance: float, flow_shift: float = 5.0) -> Tensor:
    """DRTune sampling: ``steps`` UniPC steps from ``noise`` (B, 16, T_lat, h, w) to the final model-space latent.

    The transformer always gets ``x_t.detach()`` and runs with gradients only at the indices in ``grad_steps``
    (``no_grad`` elsewhere); the scheduler update runs with gradients enabled, so the returned latent is
    differentiable w.r.t. the LoRA through exactly those steps' outputs. Call it with grad mode on."""
    from vist3a.pipeline.wan import make_scheduler

    chosen = {int(i) for i in grad_steps}
    scheduler = make_scheduler(flow_shift)
    scheduler.set_timesteps(int(steps), device=noise.device)
    x = noise
    for i, t in enumerate(scheduler.timesteps):
        x_in = x.detach()
        with torch.set_grad_enabled(i in chosen):
            v = guided_velocity(transformer, x_in, t, cond, uncond, guidance)
        x = scheduler.step(v, t, x, return_dict=False)[0]
    return x


# ============================================================================================ LoRA / EMA / export
def add_lora(transformer: nn.Module, rank: int = 8, alpha: float = 16.0):
    """Freeze ``transformer`` and wrap it in a peft ``PeftModel`` with the VIST3A LoRA (r, alpha on attn1/attn2
    to_q/to_k/to_v/to_out.0, no dropout, B initialised to 0). Returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    transformer.requires_grad_(False)
    config = LoraConfig(r=int(rank), lora_alpha=alpha if alpha != int(alpha) else int(alpha), lora_dropout=0.0,
                        target_modules=list(LORA_TARGETS), init_lora_weights=True)
    model = get_peft_model(transformer, config)
    wrapped = {n.rsplit(".lora_", 1)[0] for n, p in model.named_parameters() if p.requires_grad}
    stray = [n for n in wrapped if ".attn1." not in n and ".attn2." not in n]
    if stray or not wrapped:
        raise ValueError(f"LoRA targets matched unexpected modules {stray[:3]} (or none): is this a Wan 2.1 "
                         "transformer?")
    return model


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """name -> the LoRA parameters (requires_grad), in module order."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _full(t: Tensor) -> Tensor:
    """A full (unsharded) tensor from an FSDP2 DTensor shard (collective), else ``t`` itself."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


@torch.no_grad()
def _assign(param: Tensor, value: Tensor) -> None:
    """Copy a full tensor into ``param`` (a plain tensor or an FSDP2 DTensor shard)."""
    mesh = getattr(param, "device_mesh", None)
    if mesh is not None:
        from torch.distributed.tensor import distribute_tensor

        value = distribute_tensor(value.to(device=param.device, dtype=param.dtype), mesh, param.placements)
        param.copy_(value)
    else:
        param.copy_(value.to(device=param.device, dtype=param.dtype))


class AdapterEMA:
    """Exponential moving average of the LoRA parameters: ``ema <- decay ema + (1 - decay) param`` after each
    optimizer step (float32 copies; DTensor shards under FSDP2)."""

    def __init__(self, params: dict[str, Tensor], decay: float, warmup: bool = False) -> None:
        self.decay, self.warmup = float(decay), bool(warmup)
        self.shadow = {n: p.detach().clone().float() for n, p in params.items()}

    def decay_at(self, step: int) -> float:
        """The decay of the update after iteration ``step`` (0-based): ``decay``, or with warm-up (the released
        EMA) ``min((1 + step) / (10 + step), decay)``."""
        return min((1 + step) / (10 + step), self.decay) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, params: dict[str, Tensor], step: int = 0) -> None:
        d = self.decay_at(step)
        for n, p in params.items():
            self.shadow[n].lerp_(p.detach().float(), 1.0 - d)

    @contextlib.contextmanager
    def applied(self, params: dict[str, Tensor]) -> Iterator[None]:
        """Temporarily put the EMA values into the live parameters."""
        backup = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(backup[n])


def export_adapter(model, tensors: dict[str, Tensor], folder: str | Path) -> Path:
    """Write ``tensors`` (PeftModel parameter names -> full tensors, e.g. the EMA) as a PEFT adapter folder:
    ``adapter_config.json`` + ``adapter_model.safetensors`` (keys ``base_model.model.<module>.lora_{A,B}.weight``,
    the layout ``PeftModel.save_pretrained`` writes), each file atomically. Loads with
    :func:`vist3a.pipeline.wan.load_vist3a_lora` and the ComfyUI node (``nodes/wan_lora.py``)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model, state_dict={n: t for n, t in tensors.items()})
    if not state:
        raise ValueError("export_adapter: no LoRA tensors to export")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    config = model.peft_config["default"].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items() if k != "runtime_config"}
    config["inference_mode"] = True
    with atomic_path(folder / ADAPTER_WEIGHTS) as tmp:
        save_file(state, tmp, metadata={"format": "pt"})
    with atomic_write(folder / ADAPTER_CONFIG, "w") as fh:
        json.dump(config, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    return folder


# ============================================================================================ trainer
class _FixedState:
    """An object whose ``state_dict()`` is a precomputed dict (optimizer state gathered on every FSDP rank, saved by
    rank 0), and whose ``load_state_dict`` forwards to a loader."""

    def __init__(self, state: dict | None = None, loader: Callable[[dict], None] | None = None) -> None:
        self._state, self._loader = state, loader

    def state_dict(self) -> dict:
        return self._state

    def load_state_dict(self, sd: dict) -> None:
        self._loader(sd)


class _GracefulStop:
    """While active (main thread only), the first SIGINT sets ``requested`` instead of raising; a second SIGINT
    raises KeyboardInterrupt as usual."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("Ctrl-C: finishing the current step, then saving (press again to abort without saving)")

    def __enter__(self) -> Self:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _iteration_seed(seed: int, step: int, rank: int, what: str) -> int:
    return random.Random(f"drtune:{what}:{seed}:{step}:{rank}").getrandbits(63)


@dataclass
class StepResult:
    """Metrics of one optimizer step (floats, averaged over ranks where it matters)."""

    step: int
    loss: float
    reward: float
    gen_loss: float
    grad_norm: float
    lr: float
    steps: int
    grad_steps: list[int]
    guidance: float
    rewards: dict[str, float] = field(default_factory=dict)


class DRTuneTrainer:
    """DRTune on a diffusers ``WanPipeline`` (module docstring).

    Args:
        pipe: WanPipeline (tokenizer, text encoder, transformer, VAE); the transformer gets the LoRA.
        rewards: reward objects (:func:`training.rewards.build_rewards`).
        prompts: user prompts drawn uniformly per rollout.
        config: :class:`AlignConfig` (checked).
        ctx: :class:`training.runtime.DistContext` (device, rank, world).
        decoder: frozen stitched decoder for render rewards (None: frame / latent rewards only).
        dataset: multi-view clips for L_gen (items with ``"vae"`` (T, 3, H, W) in [0, 1]); None with
            ``gen_weight == 0``.
        fsdp: shard the transformer with FSDP2 (needs CUDA and world_size > 1).
    """

    def __init__(self, pipe, rewards: Sequence, prompts: Sequence[str], config: AlignConfig, ctx, *,
                 decoder: nn.Module | None = None, dataset=None, fsdp: bool = False) -> None:
        self.config = config.check()
        if not prompts:
            raise ValueError("no prompts: pass --prompt TEXT or --prompts FILE (one prompt per line)")
        if config.gen_weight > 0 and dataset is None:
            raise ValueError("--gen-weight > 0 needs multi-view clips for the flow-matching loss: pass --data FOLDER "
                             "or --synthetic (or --gen-weight 0 to train on the reward alone)")
        self.pipe, self.rewards, self.prompts, self.ctx = pipe, list(rewards), list(prompts), ctx
        self.dataset, self.fsdp = dataset, bool(fsdp)
        device = ctx.device
        for part in (pipe.text_encoder, pipe.vae, decoder):
            if part is not None:
                part.requires_grad_(False).eval().to(device)
        self.decoder = decoder
        transformer = pipe.transformer.to(device).eval()
        if config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        self.model = add_lora(transformer, config.lora_rank, config.lora_alpha)
        if self.fsdp:
            self._shard()
        self.params = trainable_parameters(self.model)
        if ctx.world_size > 1 and not self.fsdp:
            import torch.distributed as dist

            with torch.no_grad():  # identical LoRA initialisation on every rank (replicas stay in sync)
                for p in self.params.values():
                    dist.broadcast(p.data, src=0)
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=config.lr, weight_decay=config.weight_decay,
                                           betas=tuple(config.betas))
        from .runtime import cosine_with_warmup

        self.scheduler = cosine_with_warmup(self.optimizer, config.warmup, config.steps,
                                            min_lr_ratio=1.0 if config.lr_schedule == "constant" else 0.0)
        self.ema = AdapterEMA(self.params, config.ema_decay, warmup=config.ema_warmup)
        bg = None if config.render_background is None else torch.tensor(config.render_background)
        self.scene = SceneDecoder(pipe.vae, decoder, views=config.views, background=bg)
        self._text: dict[str, Tensor] = {}
        self.step = 0
        n = sum(p.numel() for p in self.params.values())
        logger.info("LoRA r=%d alpha=%g on %d modules: %d trainable parameters%s", config.lora_rank,
                    config.lora_alpha, len(self.params) // 2, n, " (FSDP2 sharded)" if self.fsdp else "")

    # ------------------------------------------------------------------------------------------ setup
    def _shard(self) -> None:
        from torch.distributed.fsdp import fully_shard

        base = self.model.get_base_model()
        for block in base.blocks:
            fully_shard(block)
        fully_shard(base)

    @property
    def transformer(self) -> nn.Module:
        """The bare Wan transformer inside the PeftModel (hooks attach here)."""
        return self.model.get_base_model()

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> Tensor:
        """(N, L, D) UMT5 embeddings via ``WanPipeline.encode_prompt`` (cached per text on the CPU)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text]
        if missing:
            emb, _ = self.pipe.encode_prompt(prompt=missing, negative_prompt=None, do_classifier_free_guidance=False,
                                             max_sequence_length=self.config.max_sequence_length,
                                             device=self.ctx.device)
            for t, e in zip(missing, emb):
                self._text[t] = e.detach().cpu()
        return torch.stack([self._text[t] for t in texts]).to(self.ctx.device)

    def wan_text(self, prompt: str) -> str:
        return apply_template(prompt, self.config.prompt_template or None)

    @torch.no_grad()
    def encode_clips(self, items: Sequence[dict], generator: torch.Generator) -> Tensor:
        """Clips (``"vae"`` (T, 3, H, W) in [0, 1]) -> model-space latents (N, 16, T_lat, H/8, W/8) (posterior
        sample, un-normalised -> ``to_model_space``)."""
        from vist3a.pipeline.wan import to_model_space

        c = self.config
        video = torch.stack([it["vae"] for it in items])  # (N, T, 3, H, W)
        if tuple(video.shape[1:]) != (c.num_frames, 3, c.height, c.width):
            raise ValueError(f"data clips are {tuple(video.shape[1:])} but the rollouts use ({c.num_frames}, 3, "
                             f"{c.height}, {c.width}); make --views/--size of the data match --frames/--height/--width")
        vae = self.pipe.vae
        param = next(vae.parameters())
        x = (video * 2 - 1).permute(0, 2, 1, 3, 4).to(device=param.device, dtype=param.dtype)
        dist = vae.encode(x).latent_dist
        noise = torch.randn(dist.mean.shape, generator=generator).to(dist.mean)
        raw = dist.mean + dist.std * noise
        return to_model_space(vae, raw.float())

    # ------------------------------------------------------------------------------------------ one step
    def train_step(self) -> StepResult:
        """One DRTune iteration at ``self.step`` (then ``self.step += 1``)."""
        c, ctx, step = self.config, self.ctx, self.step
        # T and the grad steps are shared by all ranks (FSDP2 needs the same collectives everywhere); prompts, CFG
        # scale and noise are drawn per rank
        steps, chosen = sample_plan(random.Random(_iteration_seed(c.seed, step, 0, "plan")), c, step)
        rng = random.Random(_iteration_seed(c.seed, step, ctx.rank, "rank"))
        guidance = rng.uniform(c.cfg_min, c.cfg_max)
        prompts = [rng.choice(self.prompts) for _ in range(c.batch_size)]
        gen = torch.Generator().manual_seed(_iteration_seed(c.seed, step, ctx.rank, "torch"))
        texts = [camera_prompt(p, rng) if c.camera_prompts else self.wan_text(p) for p in prompts]
        cond = self.text_embeddings(texts)
        uncond = self.text_embeddings([c.negative_prompt] * c.batch_size)
        noise = torch.randn((c.batch_size, *c.latent_shape), generator=gen).to(ctx.device)
        latent = drtune_rollout(self.model, noise, cond, uncond, steps=steps, grad_steps=chosen, guidance=guidance,
                                flow_shift=c.flow_shift)
        batch = RewardBatch(latent, prompts, self.scene, generator=gen)
        reward, parts = total_reward(self.rewards, batch)
        loss = -reward.mean()
        gen_loss = torch.zeros((), device=ctx.device)
        if c.gen_weight > 0:
            n = len(self.dataset)
            first = (step * ctx.world_size + ctx.rank) * c.gen_batch_size
            items = [self.dataset[(first + j) % n] for j in range(c.gen_batch_size)]
            x0 = self.encode_clips(items, gen)
            captions = [it.get("caption") or it.get("prompt") or c.gen_prompt for it in items]
            texts = [self.wan_text(t) if c.gen_template else t for t in captions]
            gen_loss = flow_matching_loss(self.model, x0, self.text_embeddings(texts), gen,
                                          c.flow_shift if c.gen_sigma == "shifted" else None)
            loss = loss + c.gen_weight * gen_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = list(self.params.values())
        if ctx.world_size > 1 and not self.fsdp:
            self._average_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        if c.skip_nonfinite and not torch.isfinite(_full(grad_norm)).item():
            logger.warning("step %d: gradient norm %s, update skipped (as the released training)", step,
                           float(_full(grad_norm)))
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            self.ema.update(self.params, step)
        self.scheduler.step()
        self.step += 1
        from .runtime import all_reduce_mean

        stats = all_reduce_mean(torch.stack([loss.detach().float(), reward.detach().float().mean(),
                                             gen_loss.detach().float()]), ctx).tolist()
        return StepResult(step=self.step, loss=stats[0], reward=stats[1], gen_loss=stats[2],
                          grad_norm=float(_full(grad_norm)), lr=self.optimizer.param_groups[0]["lr"], steps=steps,
                          grad_steps=chosen, guidance=guidance,
                          rewards={k: float(v.mean()) for k, v in parts.items()})

    def _any_rank(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is set on any (Ctrl-C reaches the ranks at different times; all must stop
        after the same step so that the checkpoint collectives line up)."""
        if self.ctx.world_size <= 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.ctx.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    @staticmethod
    def _average_gradients(params: Sequence[Tensor]) -> None:
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    # ------------------------------------------------------------------------------------------ state
    def adapter_tensors(self, ema: bool = True) -> dict[str, Tensor]:
        """Full CPU tensors of the EMA (or live) adapter, PeftModel names (collective under FSDP2: all ranks)."""
        src = self.ema.shadow if ema else {n: p.detach() for n, p in self.params.items()}
        return {n: _full(t).detach().cpu().clone() for n, t in src.items()}

    def _optimizer_state(self) -> _FixedState | torch.optim.Optimizer:
        if not self.fsdp:
            return self.optimizer
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return _FixedState(get_optimizer_state_dict(self.model, self.optimizer, options=opts))

    def save(self, output: Path) -> Path | None:
        """Checkpoint (every rank must call; rank 0 writes) + the EMA adapter export. Returns the checkpoint."""
        from .runtime import capture_rng_state, gather_objects, save_training_state

        live = self.adapter_tensors(ema=False)
        ema = self.adapter_tensors(ema=True)
        optim = self._optimizer_state()
        rng = gather_objects(capture_rng_state(), self.ctx)
        if not self.ctx.is_main:
            return None
        tensors = {**{f"lora/{n}": t for n, t in live.items()}, **{f"ema/{n}": t for n, t in ema.items()}}
        path = save_training_state(output / "checkpoints", step=self.step, tensors=tensors, optimizer=optim,
                                   scheduler=self.scheduler, rng=rng, keep_last=self.config.keep_last or None,
                                   extra={"config": asdict(self.config), "world_size": self.ctx.world_size})
        export_adapter(self.model, ema, output / "lora_ema")
        logger.info("step %d: checkpoint %s, EMA adapter %s", self.step, path, output / "lora_ema")
        return path

    def load(self, checkpoint: str | Path) -> int:
        """Restore LoRA, EMA, optimizer, lr schedule and step from a checkpoint (folder or output root)."""
        from .runtime import load_training_state, restore_rng_state

        optim = self.optimizer
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            optim = _FixedState(loader=lambda sd: set_optimizer_state_dict(self.model, self.optimizer, sd,
                                                                           options=opts))
        state = load_training_state(checkpoint, optimizer=optim, scheduler=self.scheduler)
        missing = [n for n in self.params if f"lora/{n}" not in state.tensors or f"ema/{n}" not in state.tensors]
        if missing:
            raise ValueError(f"{state.path}: no saved tensors for {missing[:3]}; resume with the same --lora-rank and "
                             "model")
        for n, p in self.params.items():
            _assign(p, state.tensors[f"lora/{n}"])
            _assign(self.ema.shadow[n], state.tensors[f"ema/{n}"].float())
        saved_world = state.extra.get("world_size")
        if isinstance(state.rng, list) and len(state.rng) == self.ctx.world_size and saved_world == self.ctx.world_size:
            restore_rng_state(state.rng[self.ctx.rank])
        self.step = state.step
        logger.info("resumed from %s at step %d", state.path, state.step)
        return state.step

    def export(self, folder: str | Path) -> Path | None:
        """The EMA adapter as a PEFT folder (every rank must call under FSDP2; rank 0 writes)."""
        ema = self.adapter_tensors(ema=True)
        return export_adapter(self.model, ema, folder) if self.ctx.is_main else None

    # ------------------------------------------------------------------------------------------ loop
    def fit(self, output: str | Path, stop_at: int | None = None, progress: bool = True) -> list[StepResult]:
        """Train from ``self.step`` to ``config.steps`` (or ``stop_at``), saving every ``save_every`` steps and at the
        end. The first Ctrl-C (SIGINT) finishes the current step, saves, and raises KeyboardInterrupt; a second one
        aborts at once (the last periodic checkpoint stays valid)."""
        from tqdm import tqdm

        output = Path(output)
        end = min(self.config.steps, stop_at) if stop_at is not None else self.config.steps
        results: list[StepResult] = []
        log = output / "metrics.jsonl"
        bar = tqdm(total=end, initial=self.step, desc="drtune", unit="step",
                   disable=not (progress and self.ctx.is_main))
        stop = _GracefulStop()
        with stop:
            while self.step < end and not stop.requested:
                t0 = time.perf_counter()
                res = self.train_step()
                results.append(res)
                if self.ctx.is_main:
                    with open(log, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps({**asdict(res), "seconds": round(time.perf_counter() - t0, 4)}) + "\n")
                    bar.set_postfix(reward=f"{res.reward:.4g}", loss=f"{res.loss:.4g}")
                bar.update(1)
                stop.requested = self._any_rank(stop.requested)
                if self.step % self.config.save_every == 0 and self.step < end and not stop.requested:
                    self.save(output)
        bar.close()
        self.save(output)
        if stop.requested:
            logger.warning("interrupted: saved the %d completed steps; rerun with --resume to continue", self.step)
            raise KeyboardInterrupt
        return results


# ============================================================================================ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.align_drtune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring (python -c 'import training.align_drtune as m; "
                                       "help(m)') for the algorithm and the conventions.")
    mdl = p.add_argument_group("models")
    mdl.add_argument("--preset", choices=("tiny",), default=None,
                     help="tiny: tiny random Wan + stitched AnySplat + CLIP built locally (offline CPU smoke test)")
    mdl.add_argument("--wan", default=None, help="diffusers Wan 2.1 T2V pipeline (hub id or folder)")
    mdl.add_argument("--decoder", default=None, help="stitched decoder for the render rewards (published .pth, "
                                                     "HJGO/VIST3A/anysplat_stitched.pth, or our folder)")
    mdl.add_argument("--base", default=None, help="base AnySplat for the published decoder (default lhjiang/anysplat)")
    mdl.add_argument("--clip", action="append", default=[], help="transformers CLIPModel (hub id or folder) for the "
                                                                   "quality rewards; repeatable")
    mdl.add_argument("--open-clip", action="append", default=[], metavar="ARCH[@PRETRAINED]",
                     help="open_clip scorer, e.g. hf-hub:apple/DFN5B-CLIP-ViT-H-14-378 (needs open_clip)")
    mdl.add_argument("--hps", default=None, help="HPSv2.1 checkpoint (open_clip ViT-H-14; needs open_clip): with a "
                                                 "CLIP scorer gives the paper's s_clip + s_hps - 2")
    mdl.add_argument("--no-lpips", action="store_true", help="consistency reward without LPIPS (L1 only)")
    mdl.add_argument("--pickscore", default=None, help="official reward: PickScore CLIPModel (hub id or folder; "
                                                       "default yuvalkirstain/PickScore_v1)")
    mdl.add_argument("--pickscore-processor", default=None, help="official reward: PickScore's tokenizer (default "
                                                                 "laion/CLIP-ViT-H-14-laion2B-s32B-b79K)")
    mdl.add_argument("--dfn-clip", default=None, help="official reward: DFN5B CLIP (hub id or folder; default "
                                                      "apple/DFN5B-CLIP-ViT-H-14-378; open_clip when installed)")
    mdl.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                     help="dtype of the frozen Wan weights (the LoRA stays float32)")
    mdl.add_argument("--device", default=None, help="default: cuda:<local rank> if available, else cpu")
    mdl.add_argument("--fsdp", choices=("auto", "on", "off"), default="auto",
                     help="FSDP2 for the transformer (auto: on with CUDA and more than one process)")
    alg = p.add_argument_group("DRTune")
    alg.add_argument("--recipe", choices=tuple(RECIPES), default="official",
                     help="official (default): the released train_vdm.py that produced the published adapters; paper: "
                          "the paper's Algorithm 1 and rewards (module docstring); explicit options override either")
    alg.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1000; tiny: 8)")
    alg.add_argument("--stop-at", type=int, default=None, help="stop (and checkpoint) after this step, e.g. to split "
                                                               "a run into jobs; --resume continues")
    alg.add_argument("--t-min", type=int, default=None, help="T1, fewest sampling steps (default 10; tiny: 3)")
    alg.add_argument("--t-max", type=int, default=None, help="T2, most sampling steps (default 50; tiny: 5)")
    alg.add_argument("--grad-steps", type=int, default=2, help="K, steps with gradients per rollout (default 2)")
    alg.add_argument("--grad-last", action=argparse.BooleanOptionalAction, default=None,
                     help="also keep gradients at the final step (official: on; paper: off)")
    alg.add_argument("--cfg-min", type=float, default=4.0, help="CFG scale drawn per rollout in [min, max] (4)")
    alg.add_argument("--cfg-max", type=float, default=6.0, help="(released code: 6)")
    alg.add_argument("--reward", default=None,
                     help=f"weighted rewards name:weight,... (official: {OFFICIAL_REWARDS}; paper: {DEFAULT_REWARDS}; "
                          "also toy_latent, brightness)")
    alg.add_argument("--gen-weight", type=float, default=1.0, help="weight of the flow-matching loss (0: reward only)")
    alg.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate of the LoRA (paper: 1e-4)")
    alg.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 0)")
    alg.add_argument("--warmup", type=int, default=0, help="linear lr warmup steps")
    alg.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    alg.add_argument("--grad-clip", type=float, default=None, help="gradient-norm clip (official 1.0, paper 0.1)")
    alg.add_argument("--ema-decay", type=float, default=0.99, help="EMA decay of the exported adapter (0.99)")
    alg.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (released: 8)")
    alg.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha (released: 16)")
    alg.add_argument("--batch-size", type=int, default=1, help="rollouts per process per step")
    alg.add_argument("--gen-batch-size", type=int, default=None,
                     help="data clips per process per step for L_gen (official 4, paper 1)")
    alg.add_argument("--gradient-checkpointing", action="store_true",
                     help="recompute the transformer blocks in backward (less memory, ~30%% slower)")
    alg.add_argument("--views", type=int, default=None,
                     help="views rendered per scene for the rewards (official: all frames; paper: 2)")
    alg.add_argument("--seed", type=int, default=0, help="every draw of step i comes from (seed, i, rank)")
    vid = p.add_argument_group("video and text")
    vid.add_argument("--frames", type=int, default=None, help="4k+1 (default 13; tiny: 9)")
    vid.add_argument("--height", type=int, default=None, help="multiple of 16 (default 512; tiny: 64)")
    vid.add_argument("--width", type=int, default=None, help="multiple of 16 (default 512; tiny: 64)")
    vid.add_argument("--flow-shift", type=float, default=None,
                     help="UniPC flow shift of the rollouts (official training 3; paper / inference 5)")
    vid.add_argument("--max-sequence-length", type=int, default=None,
                     help="text tokens (official 226, paper 512; tiny: 64)")
    vid.add_argument("--prompt", action="append", default=[], help="a training prompt (repeatable)")
    vid.add_argument("--prompts", default=None, help="text file, one prompt per line ('#' comments)")
    vid.add_argument("--prompt-template", default=None,
                     help="'{prompt}' template for Wan ('' for none; paper default: the orbit template; official: a "
                          "random camera phrase per rollout instead)")
    vid.add_argument("--negative-prompt", default=None, help="CFG negative prompt (official: empty; paper: the "
                                                              "published inference one)")
    vid.add_argument("--gen-prompt", default="a static scene", help="text for data clips without a caption")
    dat = p.add_argument_group("data for the flow-matching loss")
    dat.add_argument("--data", default=None, help="folder of scenes (training/data.py layouts) or a micro world")
    dat.add_argument("--synthetic", action="store_true", help="procedural synthetic scenes instead of --data")
    dat.add_argument("--samples", type=int, default=10000, help="clips in the dataset (drawn per index)")
    dat.add_argument("--window", type=int, default=50, help="frames per scene window")
    out = p.add_argument_group("output")
    out.add_argument("--output", required=True, help="output folder (checkpoints/, lora_ema/, metrics.jsonl)")
    out.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    out.add_argument("--save-every", type=int, default=100, help="checkpoint + adapter export every N steps")
    out.add_argument("--keep-last", type=int, default=3, help="checkpoints kept (0: all)")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _read_prompts(args) -> list[str]:
    prompts = [p.strip() for p in args.prompt if p.strip()]
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts {path}: no such file (one prompt per line)")
        prompts += [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()
                    if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts and args.preset == "tiny":
        prompts = list(TINY_PROMPTS)
    if not prompts:
        raise ValueError("no training prompts: pass --prompt TEXT (repeatable) or --prompts FILE")
    return prompts


def config_from_args(args) -> AlignConfig:
    """AlignConfig from the CLI: the recipe's settings (:data:`RECIPES`), overridden by every option given."""
    tiny = args.preset == "tiny"
    pick = (lambda v, t, d: v if v is not None else (t if tiny else d))
    names = {f.name for f in fields(AlignConfig)}
    recipe = {k: v for k, v in RECIPES[args.recipe].items() if k in names}
    values = {**recipe, **{k: v for k, v in vars(args).items() if k in names and v is not None}}
    values.update(recipe=args.recipe, steps=pick(args.steps, 8, 1000), t_min=pick(args.t_min, 3, 10),
                  t_max=pick(args.t_max, 5, 50), num_frames=pick(args.frames, 9, 13), height=pick(args.height, 64, 512),
                  width=pick(args.width, 64, 512),
                  max_sequence_length=pick(args.max_sequence_length, 64, recipe.get("max_sequence_length", 512)))
    values.setdefault("prompt_template", PROMPT_TEMPLATE)
    values.setdefault("negative_prompt", DEFAULT_NEGATIVE_PROMPT)
    values["prompt_template"] = values["prompt_template"] or ""
    if args.views is None and args.recipe == "official":
        values["views"] = values["num_frames"]  # the released reward renders every predicted camera
    return AlignConfig(**values).check()


def _build(args, config: AlignConfig, ctx):
    """(pipe, decoder, rewards, dataset) for the CLI."""
    from .data import FolderClips, SyntheticClips, is_micro_world, micro_world_clips
    from .rewards import ClipScorer, OpenClipScorer, official_scorers

    pairs = parse_reward_spec(args.reward or RECIPES[args.recipe].get("reward", DEFAULT_REWARDS))
    names = {n for n, _ in pairs}
    dtype = getattr(torch, args.dtype)
    if args.preset == "tiny":
        from vist3a.pipeline.presets import (
            TINY_WARNING,
            tiny_decoder,
            tiny_wan_pipeline,
        )

        logger.warning(TINY_WARNING)
        pipe = tiny_wan_pipeline(args.seed, config.flow_shift)
        decoder = tiny_decoder(args.seed) if names & {"quality_renders", "consistency", "official"} else None
        scorers = [ClipScorer.tiny(args.seed)]
        official = official_scorers(tiny=args.seed) if "official" in names else None
    else:
        if not args.wan:
            raise ValueError("pass --wan <Wan 2.1 T2V diffusers pipeline> (or --preset tiny)")
        from vist3a.pipeline.wan import load_wan_pipeline

        pipe = load_wan_pipeline(args.wan, dtype=torch.float32, flow_shift=config.flow_shift)
        decoder = None
        if names & {"quality_renders", "consistency", "official"}:
            from vist3a.pipeline.decoders import load_stitched_decoder

            decoder = load_stitched_decoder(args.decoder, base=args.base)
        official = (official_scorers(args.pickscore, args.pickscore_processor, args.dfn_clip)
                    if "official" in names else None)
        scorers = [ClipScorer.from_pretrained(s) for s in args.clip]
        for spec in args.open_clip:
            arch, _, pretrained = spec.partition("@")
            scorers.append(OpenClipScorer.from_pretrained(arch, pretrained or None))
        if args.hps:
            scorers.append(OpenClipScorer.hps(args.hps))
    if dtype != torch.float32:
        pipe.transformer.to(dtype)
        pipe.text_encoder.to(dtype)
    for s in [*scorers, *(official or ())]:
        s.to(ctx.device)
    lpips = None
    if "consistency" in names and not args.no_lpips:
        from .metrics import load_lpips

        lpips = load_lpips("alex", ctx.device)
        if lpips is not None:
            lpips.requires_grad_(False)
    rewards = build_rewards(pairs, scorers=scorers if names & {"quality_frames", "quality_renders"} else (),
                            lpips=lpips, official=official)
    dataset = None
    if config.gen_weight > 0:
        if args.data and is_micro_world(args.data):
            dataset = micro_world_clips(args.data, args.samples, views=config.num_frames, vae_size=config.height,
                                        model_size=config.height // 16 * 14, seed=args.seed)
        elif args.data:
            dataset = FolderClips(args.data, args.samples, views=config.num_frames, window=args.window,
                                  vae_size=config.height, model_size=config.height // 16 * 14, seed=args.seed,
                                  skip_short=True)
        elif args.synthetic or args.preset == "tiny":
            dataset = SyntheticClips(args.samples, views=config.num_frames, vae_size=config.height,
                                     model_size=config.height // 16 * 14, seed=args.seed)
        if dataset is not None and config.height != config.width:
            raise ValueError("the flow-matching data clips are square: use --height == --width, or --gen-weight 0")
    return pipe, decoder, rewards, dataset


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .runtime import cleanup_distributed, init_distributed, latest_checkpoint

    ctx = None
    try:
        config = config_from_args(args)
        prompts = _read_prompts(args)
        output = Path(args.output)
        if args.stop_at is not None and args.stop_at < 1:
            raise ValueError(f"--stop-at must be >= 1, got {args.stop_at}")
        found = latest_checkpoint(output / "checkpoints")
        if found is not None and not args.resume:
            raise ValueError(f"{output} already holds checkpoints ({found.name}); pass --resume to continue or "
                             "choose a new --output")
        ctx = init_distributed(args.device)
        if not ctx.is_main:
            logging.getLogger().setLevel(logging.WARNING)
        use_fsdp = args.fsdp == "on" or (args.fsdp == "auto" and ctx.world_size > 1 and ctx.device.type == "cuda")
        if use_fsdp and ctx.world_size < 2:
            raise ValueError("--fsdp on needs torchrun with more than one process")
        torch.manual_seed(config.seed)
        pipe, decoder, rewards, dataset = _build(args, config, ctx)
        trainer = DRTuneTrainer(pipe, rewards, prompts, config, ctx, decoder=decoder, dataset=dataset, fsdp=use_fsdp)
        if ctx.is_main:
            output.mkdir(parents=True, exist_ok=True)
            with atomic_write(output / "config.json", "w") as fh:
                json.dump({**vars(args), "config": asdict(config), "world_size": ctx.world_size, "fsdp": use_fsdp},
                          fh, indent=1, default=str)
        if args.resume and found is not None:
            trainer.load(found)
        elif args.resume:
            logger.info("--resume: no checkpoint in %s yet, starting at step 0", output)
        results = trainer.fit(output, stop_at=args.stop_at, progress=not args.quiet)
        if results and ctx.is_main:
            k = max(1, len(results) // 4)
            first = sum(r.reward for r in results[:k]) / k
            last = sum(r.reward for r in results[-k:]) / k
            logger.info("steps %d..%d: mean reward %.5g (first %d) -> %.5g (last %d); EMA adapter in %s",
                        results[0].step, results[-1].step, first, k, last, k, output / "lora_ema")
        return 0
    except KeyboardInterrupt:
        logger.warning("interrupted; completed steps are checkpointed in %s (rerun with --resume)", args.output)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    finally:
        if ctx is not None:
            cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
