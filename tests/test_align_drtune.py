"""DRTune alignment (training/align_drtune.py) on tiny random models: gradients only through the chosen steps, the
flow-matching sign convention, a toy reward that rises, the exported adapter loading like the published ones (peft
and the ComfyUI key conversion), exact resume, Ctrl-C handling and argument errors."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

pytestmark = pytest.mark.usefixtures("single_thread")


def _ctx():
    from training.runtime import DistContext

    return DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


def _config(**kw):
    from training.align_drtune import AlignConfig

    base = {"steps": 50, "t_min": 4, "t_max": 5, "num_frames": 9, "height": 64, "width": 64,
            "max_sequence_length": 64, "gen_weight": 0.0, "save_every": 1000, "seed": 0}
    base.update(kw)
    return AlignConfig(**base)


def _trainer(reward="toy_latent:1", dataset=None, decoder=None, **kw):
    from training.align_drtune import DRTuneTrainer
    from training.rewards import ClipScorer, build_rewards
    from vist3a.pipeline.presets import tiny_wan_pipeline

    scorers = [ClipScorer.tiny(0)] if "quality" in reward else ()
    return DRTuneTrainer(tiny_wan_pipeline(0), build_rewards(reward, scorers=scorers), ["a red car", "a blue house"],
                         _config(**kw), _ctx(), decoder=decoder, dataset=dataset)


def _synthetic():
    from training.data import SyntheticClips

    return SyntheticClips(16, views=9, vae_size=64, model_size=56, seed=0)


class _Recorder:
    """Forward hook on the Wan transformer: per call, whether grad mode was on and whether the input required grad;
    a tensor hook on grad-carrying outputs counts the backward passes through the transformer."""

    def __init__(self, module):
        self.calls: list[tuple[bool, bool]] = []
        self.backward = 0
        self.handle = module.register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs, output):
        x = kwargs.get("hidden_states", args[0] if args else None)
        self.calls.append((torch.is_grad_enabled(), bool(x.requires_grad)))
        out = output[0] if isinstance(output, tuple) else output.sample
        if out.requires_grad:
            out.register_hook(self.count)

    def count(self, grad):
        self.backward += 1


@pytest.mark.parametrize("grad_last", [False, True])
def test_gradients_only_through_the_chosen_steps(grad_last):
    tr = _trainer(grad_steps=2, grad_last=grad_last, t_min=5, t_max=6)
    rec = _Recorder(tr.transformer)
    res = tr.train_step()
    rec.handle.remove()
    k = 2 + (1 if grad_last else 0)
    assert len(rec.calls) == res.steps  # one batched (CFG) forward per sampling step
    enabled = [i for i, (g, _) in enumerate(rec.calls) if g]
    assert enabled == res.grad_steps and len(enabled) == k
    if grad_last:
        assert res.steps - 1 in enabled
    assert not any(req for _, req in rec.calls), "the transformer input must be detached at every step"
    assert rec.backward == k
    grads = [p.grad for n, p in tr.params.items() if "lora_B" in n]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


def test_gradient_checkpointing_gives_the_same_step():
    plain, ckpt = _trainer(lr=1e-2), _trainer(lr=1e-2, gradient_checkpointing=True)
    rec = _Recorder(ckpt.transformer)
    plain.train_step()
    res = ckpt.train_step()
    rec.handle.remove()
    assert rec.backward == len(res.grad_steps) == 2
    a, b = plain.adapter_tensors(ema=False), ckpt.adapter_tensors(ema=False)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_rollout_and_flow_loss_follow_the_diffusers_flow_sign():
    """With the exact velocity of a known x0 (v = (x_t - x0) / sigma = eps - x0), UniPC lands on x0 and the
    flow-matching loss is 0: our target convention is the scheduler's."""
    from training.align_drtune import drtune_rollout, flow_matching_loss

    x0 = torch.randn(1, 16, 3, 8, 8)

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
            sigma = (timestep.float() / 1000).view(-1, 1, 1, 1, 1)
            return ((hidden_states - x0) / sigma + self.p,)

    oracle = Oracle()
    text = torch.zeros(1, 4, 8)
    noise = torch.randn(1, 16, 3, 8, 8)
    out = drtune_rollout(oracle, noise, text, None, steps=6, grad_steps=[2], guidance=1.0)
    # the transformer sees the integer timestep round(1000 sigma) (as in WanPipeline), hence ~1e-3, not exact
    assert (out - x0).abs().max() < 1e-2
    with torch.no_grad():
        oracle.p.fill_(0.5)  # a biased velocity lands elsewhere: the check is not vacuous
    assert (drtune_rollout(oracle, noise, text, None, steps=6, grad_steps=[], guidance=1.0) - x0).abs().max() > 0.1
    oracle.p.data.zero_()
    loss = flow_matching_loss(oracle, x0, text, torch.Generator().manual_seed(0), 5.0)
    assert float(loss.detach()) < 1e-8


def test_reward_rises_on_a_toy_reward():
    tr = _trainer(lr=1e-2, grad_clip=1.0, batch_size=2, t_min=3, t_max=4)
    rewards = [tr.train_step().reward for _ in range(24)]
    first, last = sum(rewards[:6]) / 6, sum(rewards[-6:]) / 6
    print(f"toy reward: first 6 mean {first:.4f}, last 6 mean {last:.4f}")
    assert last > first + 0.05, rewards


def _lora_outputs(model):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 3, 8, 8, generator=g)
    text = torch.randn(2, 64, 32, generator=g)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([700.0, 200.0]), encoder_hidden_states=text,
                     return_dict=False)[0]


def test_exported_adapter_loads_like_the_published_ones(tmp_path):
    from nodes.wan_lora import diffusers_to_wan_name, load_peft_adapter, peft_to_comfy
    from vist3a.pipeline.presets import tiny_wan_pipeline
    from vist3a.pipeline.wan import load_vist3a_lora

    tr = _trainer(lr=1e-2, ema_decay=0.5, gen_weight=0.1, dataset=_synthetic(), t_min=3, t_max=3)
    for _ in range(3):
        tr.train_step()
    folder = tr.export(tmp_path / "lora_ema")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16 and sorted(cfg["target_modules"]) == sorted(
        ["to_q", "to_k", "to_v", "to_out.0"])
    with tr.ema.applied(tr.params):
        expected = _lora_outputs(tr.model)
    assert not torch.allclose(expected, _lora_outputs(tiny_wan_pipeline(0).transformer), atol=1e-4)

    merged = load_vist3a_lora(tiny_wan_pipeline(0).transformer, folder)  # the published adapters' loader
    assert torch.allclose(_lora_outputs(merged), expected, atol=1e-5)

    # ComfyUI path: PEFT -> ComfyUI keys, applied as ComfyUI's LoRA patch does (W += alpha / rank * B @ A)
    state, alpha = load_peft_adapter(folder)
    comfy = peft_to_comfy(state, alpha)
    base = tiny_wan_pipeline(0).transformer
    by_wan = {}
    for name, mod in base.named_modules():
        if isinstance(mod, torch.nn.Linear):
            by_wan[f"diffusion_model.{diffusers_to_wan_name(name)}"] = mod
    modules = {k[:-len(".lora_A.weight")] for k in comfy if k.endswith(".lora_A.weight")}
    assert len(modules) == 2 * 2 * 4  # 2 blocks x (self, cross) x (q, k, v, o)
    assert all(".self_attn." in m or ".cross_attn." in m for m in modules)
    with torch.no_grad():
        for m in modules:
            a, b = comfy[f"{m}.lora_A.weight"], comfy[f"{m}.lora_B.weight"]
            by_wan[m].weight += float(comfy[f"{m}.alpha"]) / a.shape[0] * (b @ a)
    assert torch.allclose(_lora_outputs(base), expected, atol=1e-5)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    kw = {"lr": 1e-2, "t_min": 3, "t_max": 4, "gen_weight": 0.1, "ema_decay": 0.9}
    full = _trainer(dataset=_synthetic(), **kw)
    for _ in range(4):
        full.train_step()

    first = _trainer(dataset=_synthetic(), **kw)
    for _ in range(2):
        first.train_step()
    first.save(tmp_path)
    resumed = _trainer(dataset=_synthetic(), **kw)
    assert resumed.load(tmp_path / "checkpoints") == 2
    for _ in range(2):
        resumed.train_step()
    for ema in (False, True):
        a, b = full.adapter_tensors(ema=ema), resumed.adapter_tensors(ema=ema)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"ema={ema}"
    assert float(sum(t.abs().sum() for n, t in full.adapter_tensors().items() if "lora_B" in n)) > 0


def test_cli_tiny_run_interrupt_and_resume(tmp_path, monkeypatch, caplog):
    from training import align_drtune

    out = tmp_path / "run"
    common = ["--preset", "tiny", "--output", str(out), "--t-min", "2", "--t-max", "3", "--quiet",
              "--reward", "quality_frames:0.0625,quality_renders:0.0625,consistency:0.05", "--save-every", "1"]
    original = align_drtune.DRTuneTrainer.train_step

    def interrupted(self):
        res = original(self)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during step 2: the step completes, then it saves
        return res

    monkeypatch.setattr(align_drtune.DRTuneTrainer, "train_step", interrupted)
    assert align_drtune.main(common + ["--steps", "3"]) == 130
    assert (out / "checkpoints" / "step_000002").is_dir()
    assert (out / "lora_ema" / "adapter_model.safetensors").is_file()
    monkeypatch.setattr(align_drtune.DRTuneTrainer, "train_step", original)
    assert align_drtune.main(common + ["--steps", "3"]) == 2  # refuses to overwrite without --resume
    assert align_drtune.main(common + ["--steps", "3", "--resume"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert set(lines[-1]["rewards"]) == {"quality_frames", "quality_renders", "consistency"}
    written = {p.resolve() for p in tmp_path.rglob("*")}
    assert all(p.is_relative_to(out.resolve()) for p in written)


@pytest.mark.parametrize("argv, message", [
    (["--t-min", "6", "--t-max", "4"], "--t-min (6) > --t-max (4)"),
    (["--t-min", "2", "--t-max", "4", "--grad-steps", "3"], "--grad-steps K=3"),
    (["--reward", "aesthetic:1"], "unknown reward 'aesthetic'"),
    (["--reward", "consistency:-1"], "finite number > 0"),
    (["--reward", "consistency:abc"], "is not a number"),
    (["--frames", "10"], "4k + 1"),
])
def test_cli_argument_errors(tmp_path, caplog, argv, message):
    from training.align_drtune import main

    assert main(["--preset", "tiny", "--output", str(tmp_path / "o")] + argv) == 2
    assert message in caplog.text
    assert not (tmp_path / "o").exists()


def test_help_describes_the_algorithm():
    from training.align_drtune import build_parser

    text = build_parser().format_help()
    for flag in ("--t-min", "--grad-steps", "--grad-last", "--reward", "--fsdp", "--resume", "--preset"):
        assert flag in text


# ============================================================================================ recipes
def test_official_plan_long_rollouts_and_the_last_step():
    import random

    from training.align_drtune import sample_plan

    c = _config(t_min=10, t_max=50, plan="official", grad_last=True)
    c.check()
    for step in range(40):
        steps, chosen = sample_plan(random.Random(step), c, step)
        assert 10 <= steps <= 50 and (steps == 50 if step % 10 == 0 else True)
        assert steps - 1 in chosen and len(chosen) in (2, 3) and all(0 <= i < steps for i in chosen)
    # the two random steps are drawn from ALL T steps, so the last is sometimes one of them (then 2 in total)
    sizes = {len(sample_plan(random.Random(s), _config(t_min=3, t_max=3, plan="official"), 1)[1]) for s in range(60)}
    assert sizes == {2, 3}
    # the paper plan never forces T2 and never draws the final step among the K
    paper = _config(t_min=10, t_max=50, grad_last=True)
    plans = [sample_plan(random.Random(s), paper, 0) for s in range(30)]
    assert any(t < 50 for t, _ in plans) and all(len(c) == 3 and c[-1] == t - 1 and c[-2] < t - 1 for t, c in plans)


def test_ema_warmup_and_uniform_flow_sigma():
    from training.align_drtune import AdapterEMA, flow_matching_loss

    p = {"w": torch.zeros(3)}
    ema = AdapterEMA(p, 0.99, warmup=True)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(1000) == 0.99
    ema.update({"w": torch.ones(3)}, step=0)
    assert torch.allclose(ema.shadow["w"], torch.full((3,), 0.9))
    assert AdapterEMA(p, 0.99).decay_at(0) == 0.99

    seen = []

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
            seen.append(timestep.clone())
            return (hidden_states * 0,)

    x0 = torch.randn(2, 16, 1, 2, 2)
    for shift in (None, 3.0):
        flow_matching_loss(Oracle(), x0, torch.zeros(2, 4, 8), torch.Generator().manual_seed(5), shift)
    g = torch.Generator().manual_seed(5)
    torch.randn(x0.shape, generator=g)
    u = torch.rand(2, generator=g)
    torch.testing.assert_close(seen[0], 1000 * u)  # no shift: sigma = u
    torch.testing.assert_close(seen[1], 1000 * (3 * u / (1 + 2 * u)))


def test_camera_prompts():
    import random

    from training.align_drtune import CAMERA_TEMPLATES, camera_prompt

    assert len(CAMERA_TEMPLATES) == 81 and len(set(CAMERA_TEMPLATES)) == 81
    assert all(t.count("{p}") == 1 for t in CAMERA_TEMPLATES)
    texts = {camera_prompt("a red car", random.Random(i)) for i in range(200)}
    assert len(texts) > 50 and all("`a red car`" in t for t in texts)


def test_recipes_set_the_released_or_the_paper_settings(tmp_path):
    from training.align_drtune import build_parser, config_from_args

    def cfg(*argv):
        return config_from_args(build_parser().parse_args(["--preset", "tiny", "--output", str(tmp_path), *argv]))

    off = cfg()
    assert off.recipe == "official" and off.flow_shift == 3.0 and off.plan == "official" and off.grad_last
    assert off.grad_clip == 1.0 and off.negative_prompt == "" and off.camera_prompts and off.prompt_template == ""
    assert off.gen_sigma == "uniform" and not off.gen_template and off.betas == (0.9, 0.95) and off.ema_warmup
    assert off.weight_decay == 0.0 and off.gen_batch_size == 4 and off.views == off.num_frames == 9
    assert off.render_background == (1.0, 1.0, 1.0)
    assert config_from_args(build_parser().parse_args(["--output", "x"])).max_sequence_length == 226
    paper = cfg("--recipe", "paper")
    assert paper.flow_shift == 5.0 and paper.plan == "paper" and not paper.grad_last and paper.grad_clip == 0.1
    assert paper.views == 2 and paper.gen_sigma == "shifted" and paper.betas == (0.9, 0.999) and paper.prompt_template
    assert cfg("--grad-clip", "0.5", "--views", "3", "--flow-shift", "5").grad_clip == 0.5  # explicit options win


def test_cli_official_recipe_tiny_run(tmp_path):
    from training import align_drtune

    out = tmp_path / "run"
    assert align_drtune.main(["--preset", "tiny", "--output", str(out), "--steps", "1", "--t-min", "2", "--t-max",
                              "2", "--quiet", "--samples", "8"]) == 0
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(line["rewards"]) == {"official"} and line["rewards"]["official"] < 0 and line["gen_loss"] > 0
    assert line["steps"] == 2 and line["grad_steps"][-1] == 1
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["recipe"] == "official" and cfg["negative_prompt"] == ""
