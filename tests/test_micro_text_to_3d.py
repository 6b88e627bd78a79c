"""The shipped micro text-to-3D path (vist3a/weights/micro): `--preset micro` writes scenes whose renders show the
prompt's objects (judged against the world's ground truth: the judge trained on ground-truth labels, and the
rendered pixels' colours against the world's palette, never the reward model), DRTune on the micro models raises
the micro reward on a fixed batch, and the shipped aligned adapter loads through the CLI's loader and through
ComfyUI's LoRA key conversion with equal outputs."""

from __future__ import annotations

import pytest
import torch

from training.micro import world as W
from vist3a.pipeline.presets import MICRO_WEIGHTS

pytestmark = pytest.mark.usefixtures("single_thread")

#: held-out prompts (captions of the first test scenes, never trained on) and the views the judge reads
PROMPTS = 8
VIEWS = (0, 4, 8)


def _palette() -> tuple[torch.Tensor, list[str]]:
    """Every colour a micro-world render is made of: the 8 object colours, both tones of every ground and both ends
    of every sky, as (N, 3) sRGB-ish rows (the renders' space) and their names."""
    rows, names = [], []
    for name, rgb in W.COLOURS.items():
        rows.append(rgb)
        names.append(name)
    for kind, table in (("ground", W.GROUNDS), ("sky", W.SKIES)):
        for name, tones in table.items():
            for tone in tones:
                rows.append(tone)
                names.append(f"{kind}:{name}")
    return torch.tensor(rows), names


def _shares(images: torch.Tensor) -> dict[str, float]:
    """Share of the pixels of ``images`` (V, 3, H, W) in [0, 1] nearest to each palette entry, summed by name
    (``red``, ..., ``ground:grass``, ..., ``sky:night``); distance on chromaticity plus brightness, so that shading
    (which scales a surface's colour) matters less and black / white / grey stay apart."""
    pal, names = _palette()
    px = images.permute(0, 2, 3, 1).reshape(-1, 3).float()

    def feat(x):
        return torch.cat([x / x.norm(dim=-1, keepdim=True).clamp_min(1e-3), x.mean(-1, keepdim=True)], -1)

    nearest = torch.cdist(feat(px), feat(pal)).argmin(-1)
    counts = torch.bincount(nearest, minlength=len(names)).float() / len(px)
    out: dict[str, float] = {}
    for n, c in zip(names, counts):
        out[n] = out.get(n, 0.0) + float(c)
    return out


def _best(shares: dict[str, float], kind: str) -> str:
    return max((v, n.split(":", 1)[1]) for n, v in shares.items() if n.startswith(kind + ":"))[1]


@pytest.fixture(scope="module")
def micro_pipe():
    from vist3a.pipeline import TextTo3DPipeline

    torch.set_num_threads(1)
    return TextTo3DPipeline.micro()


def _render(scene) -> torch.Tensor:
    from training.eval_nvs import render_views

    cams = scene.cameras[torch.tensor(VIEWS)]
    return render_views(scene.gaussians.to(dtype=torch.float32), cams.to("cpu", torch.float32)).clamp(0, 1)


def test_micro_generate_shows_the_prompts_scene(micro_pipe):
    """8 held-out prompts, seeds 0-7. Ground truth, read two ways from the renders of each generated scene at its
    own cameras: (1) pixels: the ground and the sky whose palette colours cover most pixels are the prompt's;
    (2) the judge (a CNN trained on the world's ground-truth renders and labels, never on the reward): the colour
    set it reads matches the scene's own prompt clearly better than the other prompts (a scene that ignored its
    prompt would match all prompts alike), and the object count is right more often than chance (1 in 3).
    Measured when the weights were shipped: ground 7/8, sky 7/8, colour F1 0.34 own vs 0.17 other prompts, count
    4/8 (the report's table has the same judge on 24 prompts per split)."""
    from training.micro.adherence import held_out_specs
    from training.micro.judge import load_judge, readings, score_readings

    judge = load_judge(MICRO_WEIGHTS / "judge" / "judge.safetensors")
    specs = held_out_specs("test", PROMPTS)
    reads, grounds, skies = [], 0, 0
    for k, spec in enumerate(specs):
        scene = micro_pipe(spec.caption, seed=k, progress=False)
        renders = _render(scene)
        assert renders.shape == (len(VIEWS), 3, 56, 56)
        reads.append(readings(judge, renders))
        shares = _shares(renders)
        grounds += _best(shares, "ground") == spec.ground
        skies += _best(shares, "sky") == spec.sky
    own = [score_readings(r, s) for r, s in zip(reads, specs)]
    other = [score_readings(r, s) for i, r in enumerate(reads) for j, s in enumerate(specs) if i != j]

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    assert grounds >= PROMPTS - 2 and skies >= PROMPTS - 2, (grounds, skies)
    assert mean(own, "colour_f1") >= mean(other, "colour_f1") + 0.08, (own, mean(other, "colour_f1"))
    assert mean(own, "count") >= 0.375, own


def test_unknown_words_get_a_message_listing_the_world(micro_pipe, caplog):
    from vist3a.pipeline.presets import micro_prompt_note

    assert micro_prompt_note("a small red cube to the left of a large blue sphere on grass under a blue sky") is None
    note = micro_prompt_note("a red sports car")
    assert note and "sports" in note and "car" in note and "sphere" in note and "purple" in note


def _fixed_reward(trainer, prompts, seed: int = 123) -> float:
    """The total reward of the live adapter on a fixed batch (prompts, noise, 10 steps, CFG 5), no gradients."""
    from training.align_drtune import drtune_rollout
    from training.rewards import RewardBatch, total_reward

    c = trainer.config
    rewards = []
    with torch.no_grad():
        for i, p in enumerate(prompts):
            gen = torch.Generator().manual_seed(seed + i)
            cond = trainer.text_embeddings([trainer.wan_text(p)])
            uncond = trainer.text_embeddings([c.negative_prompt])
            noise = torch.randn((1, *c.latent_shape), generator=gen)
            latent = drtune_rollout(trainer.model, noise, cond, uncond, steps=10, grad_steps=[], guidance=5.0,
                                    flow_shift=c.flow_shift)
            reward, _ = total_reward(trainer.rewards, RewardBatch(latent, [p], trainer.scene, generator=gen))
            rewards.append(float(reward.mean()))
    return sum(rewards) / len(rewards)


def test_drtune_on_the_micro_models_raises_the_micro_reward(tmp_path):
    """8 DRTune steps (training.align_drtune's trainer, unchanged) on the shipped micro Wan (without its LoRA), the
    micro stitched decoder and the micro CLIP raise the micro reward (CLIP on the decoded frames and on renders of
    the decoded Gaussians) on a fixed batch (fixed prompts and noise). Measured: -0.738 -> -0.554 (+0.18); stated
    margin +0.05. (The shipped LoRA's 300 steps used the paper's lr 1e-4; here lr 1e-3 so that 8 steps show it.)"""
    from training.align_drtune import AlignConfig, DRTuneTrainer
    from training.rewards import ClipScorer, build_rewards
    from training.runtime import DistContext
    from vist3a.pipeline.presets import micro_decoder, micro_wan_pipeline

    prompts = [W.sample_scene("train", i, 0).caption for i in range(2)]
    cfg = AlignConfig(steps=8, t_min=8, t_max=10, num_frames=9, height=64, width=64, max_sequence_length=64,
                      negative_prompt="", gen_weight=0.0, lr=1e-3, grad_clip=1.0, lora_rank=8, lora_alpha=16,
                      save_every=1000, seed=0)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    scorer = ClipScorer.from_pretrained(str(MICRO_WEIGHTS / "scorer"))
    rewards = build_rewards("quality_frames:1,quality_renders:1", scorers=[scorer])
    trainer = DRTuneTrainer(micro_wan_pipeline(lora=False), rewards, prompts, cfg, ctx, decoder=micro_decoder())
    before = _fixed_reward(trainer, prompts)
    for _ in range(cfg.steps):
        trainer.train_step()
    after = _fixed_reward(trainer, prompts)
    assert after > before + 0.05, (before, after)


def test_shipped_adapter_loads_in_the_cli_and_in_comfyui_alike():
    from nodes.wan_lora import diffusers_to_wan_name, load_peft_adapter, peft_to_comfy
    from vist3a.pipeline.presets import micro_path, micro_wan_pipeline

    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 3, 8, 8, generator=g)
    text = torch.randn(1, 64, 128, generator=g)

    def out(model):
        with torch.no_grad():
            return model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text,
                         return_dict=False)[0]

    merged = micro_wan_pipeline(lora=True).transformer      # the CLI's loader (load_vist3a_lora)
    base = micro_wan_pipeline(lora=False).transformer
    plain = out(base)
    expected = out(merged)
    assert not torch.allclose(plain, expected, atol=1e-5)  # the adapter changes the model
    state, alpha = load_peft_adapter(micro_path("lora"))
    comfy = peft_to_comfy(state, alpha)
    by_wan = {f"diffusion_model.{diffusers_to_wan_name(n)}": m for n, m in base.named_modules()
              if isinstance(m, torch.nn.Linear)}
    modules = {k[: -len(".lora_A.weight")] for k in comfy if k.endswith(".lora_A.weight")}
    assert modules and modules <= set(by_wan)
    with torch.no_grad():
        for m in modules:
            a, b = comfy[f"{m}.lora_A.weight"], comfy[f"{m}.lora_B.weight"]
            by_wan[m].weight += float(comfy[f"{m}.alpha"]) / a.shape[0] * (b @ a)
    assert torch.allclose(out(base), expected, atol=1e-4)


def test_readme_prompt_is_in_the_micro_world():
    from conftest import REPO_ROOT

    from vist3a.pipeline.presets import micro_prompt_note

    text = (REPO_ROOT / "README.md").read_text()
    block = text.split("<!-- main-command -->", 1)[1].split("```", 2)[1]
    prompt = block.split('generate "', 1)[1].split('"', 1)[0]
    assert micro_prompt_note(prompt) is None, prompt
