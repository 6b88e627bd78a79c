"""Rewards for DRTune (training/rewards.py): spec parsing, weighting, the consistency reward's maximum, a tiny
transformers CLIP scorer (differentiable w.r.t. images) and the full decode -> stitched decoder -> render path."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("single_thread")


def test_parse_reward_spec_defaults_and_errors():
    from training.rewards import DEFAULT_REWARDS, parse_reward_spec

    assert parse_reward_spec(DEFAULT_REWARDS) == [("quality_frames", 0.0625), ("quality_renders", 0.0625),
                                                  ("consistency", 0.05)]
    assert parse_reward_spec(" toy_latent , brightness:2 ") == [("toy_latent", 1.0), ("brightness", 2.0)]
    for spec, message in [("nope:1", "unknown reward 'nope'"), ("consistency:0", "finite number > 0"),
                          ("consistency:nan", "finite number > 0"), ("consistency:x", "not a number"),
                          ("consistency,consistency:2", "listed twice"), ("", "empty"), (",", "no reward")]:
        with pytest.raises(ValueError, match=message):
            parse_reward_spec(spec)


def test_quality_rewards_need_a_scorer():
    from training.rewards import build_rewards

    with pytest.raises(ValueError, match="--clip"):
        build_rewards("quality_frames:1")


def test_consistency_is_zero_when_renders_equal_frames():
    from training.rewards import consistency_score

    frames = torch.rand(2, 2, 3, 8, 8)
    assert torch.equal(consistency_score(frames, frames.clone()), torch.zeros(2))

    def fake_lpips(a, b):
        return (a - b).pow(2).flatten(1).mean(1)

    assert torch.equal(consistency_score(frames, frames.clone(), fake_lpips), torch.zeros(2))
    other = frames.clone()
    other[1] = 1 - other[1]
    score = consistency_score(frames, other, fake_lpips)
    assert score[0] == 0 and score[1] < 0
    l1 = (frames[1] - other[1]).abs().mean()
    assert torch.allclose(score[1], -(l1 + 0.25 * fake_lpips(frames[1], other[1]).mean()))
    with pytest.raises(ValueError, match="differ"):
        consistency_score(frames, frames[:, :1])


def test_total_reward_applies_weights():
    from training.rewards import RewardBatch, build_rewards, total_reward

    latent = torch.randn(3, 16, 2, 4, 4, requires_grad=True)
    batch = RewardBatch(latent, ["a", "b", "c"])
    (one,) = build_rewards("toy_latent:1")
    rewards = build_rewards("toy_latent:0.25")
    total, parts = total_reward(rewards, batch)
    assert torch.allclose(total, 0.25 * one(batch)) and torch.allclose(parts["toy_latent"], one(batch))
    total.sum().backward()
    assert latent.grad is not None and float(latent.grad.abs().sum()) > 0


def test_tiny_clip_scorer_is_differentiable_wrt_images():
    from training.rewards import ClipScorer, QualityReward

    scorer = ClipScorer.tiny(0)
    images = torch.rand(2, 3, 40, 48, requires_grad=True)
    s = scorer(images, ["a red car", "a blue house"])
    assert s.shape == (2,) and bool(((s >= -1 - 1e-5) & (s <= 1 + 1e-5)).all())
    s.sum().backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in scorer.parameters())  # frozen
    # two scorers: R = s1 + s2 - 2 (the paper's s_clip + s_hps - 2)
    assert QualityReward([scorer, scorer]).weight == pytest.approx(1 / 16)


def test_rewards_through_vae_decoder_and_renders():
    from training.rewards import (
        ClipScorer,
        RewardBatch,
        SceneDecoder,
        build_rewards,
        total_reward,
    )
    from vist3a.pipeline.presets import tiny_decoder, tiny_wan_pipeline

    pipe = tiny_wan_pipeline(0)
    decoder = tiny_decoder(0).requires_grad_(False)
    pipe.vae.requires_grad_(False)
    rewards = build_rewards("quality_frames:0.0625,quality_renders:0.0625,consistency:0.05,brightness:1",
                            scorers=[ClipScorer.tiny(0)])
    latent = torch.randn(1, 16, 3, 8, 8, requires_grad=True)
    batch = RewardBatch(latent, ["a red car"], SceneDecoder(pipe.vae, decoder, views=2),
                        torch.Generator().manual_seed(0))
    total, parts = total_reward(rewards, batch)
    assert batch.frames.shape == (1, 9, 3, 64, 64)
    assert batch.renders.shape == (1, 2, 3, 56, 56) and batch.view_indices.shape == (2,)
    assert set(parts) == {"quality_frames", "quality_renders", "consistency", "brightness"}
    assert float(parts["consistency"]) <= 0 and -2 <= float(parts["quality_renders"]) <= 0
    expected = sum(r.weight * parts[r.name] for r in rewards)
    assert torch.allclose(total.detach(), expected)
    total.sum().backward()
    assert latent.grad is not None and float(latent.grad.abs().sum()) > 0


def test_official_reward_is_the_released_pickscore_dfn_loss():
    import torch.nn.functional as F

    from training.rewards import (
        DfnClipScorer,
        OfficialReward,
        _features,
        PickScoreScorer,
        RewardBatch,
        SceneDecoder,
        build_rewards,
        official_scorers,
        total_reward,
    )
    from vist3a.pipeline.presets import tiny_decoder, tiny_wan_pipeline

    pick, dfn = official_scorers(tiny=0)
    assert isinstance(pick, PickScoreScorer) and isinstance(dfn, DfnClipScorer)
    assert type(pick.model).__name__ == type(dfn.model).__name__ == "CLIPModel"  # the released classes
    # PickScore preprocessing: shorter side -> size, centre crop (non-square input)
    img = torch.rand(2, 3, 40, 64)
    assert pick.preprocess(img).shape == (2, 3, 32, 32) and dfn.preprocess(img).shape == (2, 3, 32, 32)
    # PickScore = logit_scale.exp() * cos / 100
    with torch.no_grad():
        tok = pick.tokenizer(["a red car"] * 2, padding=True, truncation=True, max_length=77, return_tensors="pt")
        t = F.normalize(_features(pick.model.get_text_features(**tok)), dim=-1)
        i = F.normalize(_features(pick.model.get_image_features(pixel_values=pick.preprocess(img))), dim=-1)
        want = pick.model.logit_scale.exp() * (t * i).sum(-1) / 100
    torch.testing.assert_close(pick(img, ["a red car"] * 2), want)

    pipe = tiny_wan_pipeline(0)
    decoder = tiny_decoder(0).requires_grad_(False)
    pipe.vae.requires_grad_(False)
    latent = torch.randn(1, 16, 3, 8, 8, requires_grad=True)
    scene = SceneDecoder(pipe.vae, decoder, views=9, background=torch.ones(3))
    rewards = build_rewards("official", official=(pick, dfn))
    assert isinstance(rewards[0], OfficialReward) and rewards[0].weight == 1.0
    batch = RewardBatch(latent, ["a red car"], scene, torch.Generator().manual_seed(0))
    total, parts = total_reward(rewards, batch)
    assert batch.renders.shape == (1, 9, 3, 56, 56)  # every predicted camera
    # the same value by hand: the frame index is the next draw of the batch generator
    g = torch.Generator().manual_seed(0)
    torch.randperm(9, generator=g)  # view_indices drew first
    k = int(torch.randint(0, 9, (1,), generator=g))

    def loss(images):
        return (0.25 * (1 - pick(images, ["a red car"] * len(images))).abs().mean()
                + 0.25 * (1 - dfn(images, ["a red car"] * len(images))).mean())

    with torch.no_grad():
        want = -(loss(batch.renders[0]) + loss(batch.frames3d[0, k:k + 1]))
    torch.testing.assert_close(total.detach()[0], want)
    total.sum().backward()
    assert latent.grad is not None and float(latent.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="PickScore and DFN5B"):
        build_rewards("official")
