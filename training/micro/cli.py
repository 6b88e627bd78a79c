"""Command line of the micro world: ``python -m training.micro <stage> --out runs/micro``.

Stages (each resumable: run the same command again after an interruption; ``all`` runs them in order and skips
what is finished):

* ``world``     render the dataset into ``<out>/world`` (shards; training/micro/shards.py)
* ``vae``       train the micro video VAE -> ``<out>/vae/vae`` (diffusers ``AutoencoderKLWan`` folder)
* ``model3d``   train the micro AnySplat -> ``<out>/model3d/anysplat`` (config.json + model.safetensors)
* ``mvdust3r``  train the micro MVDUSt3R (the second 3D model: pointmaps + Gaussians, 64-px frames) ->
  ``<out>/mvdust3r/mvdust3r`` (training/micro/mvdust3r.py)
* ``stitch-mvdust3r``  layer search over its encoder blocks against the micro VAE's latents, then finetune the best
  and the worst layer -> ``<out>/mvdust3r/search``, ``<out>/mvdust3r/finetune/<layer>/decoder``
* ``search``    ``training.find_stitching_layer`` over every DINO block of the micro AnySplat against the micro
  VAE's latents -> ``<out>/search`` (ranking + a closed-form stitching layer per block)
* ``finetune``  ``training.train_stitched_decoder`` (LoRA, self-supervised by the micro AnySplat) for every searched
  layer from its closed-form initialisation, and for the best layer from a random initialisation ->
  ``<out>/finetune/<layer>`` and ``<out>/finetune/<best>_random``
* ``scorer``    train the micro reward model (a small transformers CLIP) -> ``<out>/scorer/clip``
* ``t2v``       cache the micro VAE's latents of the training clips, train the micro Wan (transformer + text encoder)
  by flow matching -> ``<out>/t2v/pipeline`` (a diffusers WanPipeline folder)
* ``align``     ``training.align_drtune`` on the micro models (rewards: the micro CLIP on decoded frames and on
  renders of the stitched decoder's Gaussians, 3D consistency) -> ``<out>/align/lora_ema``
* ``judge``     train the ground-truth judge (object count, colour and shape sets from one render; trained on the
  world's labels, never on the reward) used to measure text adherence -> ``<out>/judge``
* ``ablate-cameras``  why the micro AnySplat has one token entry per frame: its camera head trained alone with 2
  entries (AnySplat's) vs 9, rotation error on held-out scenes -> ``<out>/ablation/cameras.json``
* ``report``    the paper's claims measured on held-out scenes -> ``<out>/report`` (results.json, report.md, PNGs);
  ``--docs docs`` also writes ``docs/micro_world.md`` + ``docs/micro_world/*.png``
* ``ship``      copy the micro VAE, AnySplat and best stitched decoder (float16) with model cards into the
  package (``--to``, default ``vist3a/weights/micro``)
* ``clip``      write one scene's 9 orbit frames as PNGs (+ caption.txt) into ``--out`` (rendered on the fly, no
  dataset needed): ``python -m training.micro clip --split test --index 3 --out clip/`` then
  ``vist3a reconstruct clip/ --preset micro -o scene.ply``

Every training stage checkpoints into its folder and continues from there; Ctrl-C (or SIGTERM) finishes the
current step, writes a checkpoint and exits with 130 (143). Progress bars on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("vist3a.micro")

DEFAULT_COUNTS = {"train": 4000, "test": 200, "novel": 100}
MICRO_STITCHING = "conv3d_k5x3x3_o128_s1x2x2_p2x1x1"  # the released layer's shape at the micro width (128)
SIZES = ["--views", "9", "--vae-size", "64", "--model-size", "56"]


def _threads(args) -> None:
    import torch

    torch.set_num_threads(max(1, args.threads))


def _world_dir(args) -> Path:
    return Path(args.world) if args.world else Path(args.out) / "world"


def _paths(args) -> dict[str, Path]:
    out = Path(args.out)
    return {"vae": out / "vae" / "vae", "anysplat": out / "model3d" / "anysplat", "search": out / "search",
            "finetune": out / "finetune", "report": out / "report"}


def _need(path: Path, stage: str, args) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m training.micro {stage} --out {args.out}` first")


def _done(path: Path, stage: str) -> bool:
    """True (and logged) when a stage's final output exists: rerunning a finished stage does nothing (delete the
    output to redo it)."""
    if path.exists():
        logger.info("%s: done (%s exists; delete it to redo the stage)", stage, path)
        return True
    return False


# ============================================================================================ stages
def _world(args) -> int:
    from .shards import generate_world

    counts = {"train": args.train_scenes, "test": args.test_scenes, "novel": args.novel_scenes}
    generate_world(_world_dir(args), counts, seed=args.seed, shard_size=args.shard_size, workers=args.workers,
                   progress=not args.quiet)
    return 0


def _vae(args) -> int:
    if _done(Path(args.out) / "vae" / "vae" / "config.json", "vae"):
        return 0
    from .vae import VAETrainConfig, train_vae

    _threads(args)
    cfg = VAETrainConfig(steps=args.vae_steps, seed=args.seed)
    return train_vae(_world_dir(args), Path(args.out) / "vae", cfg, progress=not args.quiet,
                     stop_after=args.stop_after)


def _model3d(args) -> int:
    if _done(Path(args.out) / "model3d" / "anysplat" / "model.safetensors", "model3d"):
        return 0
    from .model3d import Model3DTrainConfig, train_model3d

    _threads(args)
    cfg = Model3DTrainConfig(steps=args.model3d_steps, seed=args.seed)
    return train_model3d(_world_dir(args), Path(args.out) / "model3d", cfg, progress=not args.quiet,
                         stop_after=args.stop_after)


def _mvdust3r(args) -> int:
    if _done(Path(args.out) / "mvdust3r" / "mvdust3r" / "model.safetensors", "mvdust3r"):
        return 0
    from .mvdust3r import MVDUSt3RTrainConfig, train_mvdust3r

    _threads(args)
    cfg = MVDUSt3RTrainConfig(steps=args.mvdust3r_steps, seed=args.seed)
    return train_mvdust3r(_world_dir(args), Path(args.out) / "mvdust3r", cfg, progress=not args.quiet,
                          stop_after=args.stop_after)


def _search(args) -> int:
    from .. import find_stitching_layer

    p = _paths(args)
    _need(p["vae"], "vae", args)
    _need(p["anysplat"], "model3d", args)
    if (p["search"] / "ranking.json").is_file():
        logger.info("search: %s/ranking.json exists; delete the folder to search again", p["search"])
        return 0
    _threads(args)
    argv = ["--data", str(_world_dir(args)), "--model", "anysplat", "--model-path", str(p["anysplat"]),
            "--vae", "wan", "--vae-path", str(p["vae"]), "--config", MICRO_STITCHING, "--layers", "enc",
            *SIZES, "--samples", str(args.search_samples), "--heldout", str(args.search_heldout),
            "--seed", str(args.seed), "--numerics", "ours", "--out", str(p["search"])] + (["--quiet"] if args.quiet
                                                                                          else [])
    return find_stitching_layer.main(argv)


def ranking(search_dir: Path) -> list[dict]:
    """The search's ranking (best first): [{"layer", "train_mse", "heldout_mse", ...}]."""
    return json.loads((search_dir / "ranking.json").read_text())["ranking"]


def finetuned_layers(ranked: list[str]) -> list[str]:
    """The layers the finetune stage trains from their closed-form initialisation: the best, those at a third and
    two thirds of the ranking, and the worst (4 layers spread over the ranking, for the MSE-vs-quality comparison;
    all of them when there are 4 or fewer)."""
    n = len(ranked)
    picks = [ranked[0], ranked[n // 3], ranked[(2 * n) // 3], ranked[-1]] if n > 4 else list(ranked)
    return list(dict.fromkeys(picks))


def finetune_runs(search_dir: Path, finetune_dir: Path, every_layer: bool = False) -> dict[str, dict]:
    """name -> {"layer", "init": "closed-form" | "random", "output"} for every finetuning run of the stage:
    :func:`finetuned_layers` (or every searched layer when ``every_layer``) from the closed-form initialisation,
    and the best layer from a random initialisation (``<best>_random``)."""
    ranked = [r["layer"] for r in ranking(search_dir)]
    layers = ranked if every_layer else finetuned_layers(ranked)
    runs = {name: {"layer": name, "init": "closed-form", "output": finetune_dir / name} for name in layers}
    best = ranked[0]
    runs[f"{best}_random"] = {"layer": best, "init": "random", "output": finetune_dir / f"{best}_random"}
    return runs


def _finetune(args) -> int:
    from .. import train_stitched_decoder
    from ..runtime import latest_checkpoint

    p = _paths(args)
    _need(p["search"] / "ranking.json", "search", args)
    _threads(args)
    every = args.layers == "all"
    runs = finetune_runs(p["search"], p["finetune"], every_layer=every)
    only = set(args.layers.split(",")) if args.layers and not every else None
    for name, run in runs.items():
        if only is not None and name not in only:
            continue
        out = run["output"]
        if (out / "decoder" / "model.safetensors").is_file():
            logger.info("finetune %s: done (%s)", name, out / "decoder")
            continue
        init = (["--init-stitching", str(p["search"] / f"stitching_layer_{run['layer']}.safetensors")]
                if run["init"] == "closed-form" else ["--cut", run["layer"], "--config", MICRO_STITCHING])
        argv = ["--recipe", "paper", "--data", str(_world_dir(args)), "--model", "anysplat", "--model-path",
                str(p["anysplat"]), "--vae-path", str(p["vae"]), *init, *SIZES, "--frames", "real", "--steps", str(args.finetune_steps),
                "--warmup", str(max(1, args.finetune_steps // 15)), "--lora-rank", "16", "--lora-alpha", "8",
                "--seed", str(args.seed), "--save-every", "250", "--keep-last", "1", "--log-every", "250",
                "--output", str(out)] + (["--quiet"] if args.quiet else [])
        if latest_checkpoint(out / "checkpoints") is not None:
            argv.append("--resume")
        if args.stop_after is not None:
            argv += ["--stop-after", str(args.stop_after)]
        logger.info("finetune %s (%s init)", name, run["init"])
        code = train_stitched_decoder.main(argv)
        if code:
            return code
    return 0


MVDUST3R_STITCHING = "conv3d_k5x3x3_o128_s1x2x2_p2x1x1"  # 8x8 latent -> the micro MVDUSt3R's 4x4 grid (64 px)
MVDUST3R_SIZES = ["--views", "9", "--vae-size", "64", "--model-size", "64"]


def _stitch_mvdust3r(args) -> int:
    """Layer search over the micro MVDUSt3R's 6 encoder blocks, then finetuning of the best and the worst layer from
    their closed-form initialisation -> ``<out>/mvdust3r/{search,finetune/<layer>}``."""
    from .. import find_stitching_layer, train_stitched_decoder
    from ..runtime import latest_checkpoint

    p = _paths(args)
    root = Path(args.out) / "mvdust3r"
    model = root / "mvdust3r"
    _need(p["vae"], "vae", args)
    _need(model / "model.safetensors", "mvdust3r", args)
    _threads(args)
    quiet = ["--quiet"] if args.quiet else []
    if not (root / "search" / "ranking.json").is_file():
        code = find_stitching_layer.main(
            ["--data", str(_world_dir(args)), "--model", "mvdust3r", "--model-path", str(model), "--vae", "wan",
             "--vae-path", str(p["vae"]), "--config", MVDUST3R_STITCHING, "--layers", "enc", *MVDUST3R_SIZES,
             "--samples", str(args.search_samples), "--heldout", str(args.search_heldout), "--seed", str(args.seed),
             "--numerics", "ours", "--out", str(root / "search")] + quiet)
        if code:
            return code
    ranked = [r["layer"] for r in ranking(root / "search")]
    for layer in dict.fromkeys([ranked[0], ranked[-1]]):
        out = root / "finetune" / layer
        if (out / "decoder" / "model.safetensors").is_file():
            logger.info("stitch-mvdust3r %s: done (%s)", layer, out / "decoder")
            continue
        argv = ["--recipe", "paper", "--data", str(_world_dir(args)), "--model", "mvdust3r", "--model-path",
                str(model), "--vae-path", str(p["vae"]), "--init-stitching",
                str(root / "search" / f"stitching_layer_{layer}.safetensors"), *MVDUST3R_SIZES, "--frames", "real",
                "--steps", str(args.finetune_steps), "--warmup", str(max(1, args.finetune_steps // 15)),
                "--lora-rank", "16", "--lora-alpha", "8", "--seed", str(args.seed), "--save-every", "250",
                "--keep-last", "1", "--log-every", "250", "--output", str(out)] + quiet
        if latest_checkpoint(out / "checkpoints") is not None:
            argv.append("--resume")
        if args.stop_after is not None:
            argv += ["--stop-after", str(args.stop_after)]
        logger.info("stitch-mvdust3r: finetune %s", layer)
        code = train_stitched_decoder.main(argv)
        if code:
            return code
    return 0


def _scorer(args) -> int:
    if _done(Path(args.out) / "scorer" / "clip" / "config.json", "scorer"):
        return 0
    from .scorer import ScorerTrainConfig, train_scorer

    _threads(args)
    cfg = ScorerTrainConfig(steps=args.scorer_steps, seed=args.seed)
    return train_scorer(_world_dir(args), Path(args.out) / "scorer", cfg, progress=not args.quiet,
                        stop_after=args.stop_after)


def _judge(args) -> int:
    if _done(Path(args.out) / "judge" / "judge.safetensors", "judge"):
        return 0
    from .judge import JudgeTrainConfig, train_judge

    _threads(args)
    return train_judge(_world_dir(args), Path(args.out) / "judge", JudgeTrainConfig(steps=args.judge_steps, seed=args.seed),
                       progress=not args.quiet, stop_after=args.stop_after)


def _ablate_cameras(args) -> int:
    if _done(Path(args.out) / "ablation" / "cameras.json", "ablate-cameras"):
        return 0
    from vist3a.io.atomic import atomic_write

    from .model3d import camera_ablation

    _threads(args)
    out = Path(args.out) / "ablation" / "cameras.json"
    res = [camera_ablation(_world_dir(args), k, steps=args.ablation_steps, seed=args.seed, progress=not args.quiet)
           for k in (2, 9)]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "w") as fh:
        json.dump(res, fh, indent=1)
    logger.info("camera ablation: %s", "; ".join(f"{r['frame_tokens']} entries: {r['rotation_error_deg'][-1][1]:.1f} "
                                                 "deg" for r in res))
    return 0


def _t2v(args) -> int:
    if _done(Path(args.out) / "t2v" / "pipeline" / "model_index.json", "t2v"):
        return 0
    from .t2v import T2VTrainConfig, train_t2v

    p = _paths(args)
    _need(p["vae"], "vae", args)
    _threads(args)
    cfg = T2VTrainConfig(steps=args.t2v_steps, seed=args.seed)
    return train_t2v(_world_dir(args), p["vae"], Path(args.out) / "t2v", cfg, progress=not args.quiet,
                     stop_after=args.stop_after)


ALIGN_PROMPTS = "prompts.txt"


def _align(args) -> int:
    from .. import align_drtune
    from ..runtime import latest_checkpoint
    from .world import sample_scene

    p = _paths(args)
    out = Path(args.out) / "align"
    best = ranking(p["search"])[0]["layer"]
    for need, stage in ((Path(args.out) / "t2v" / "pipeline", "t2v"), (Path(args.out) / "scorer" / "clip", "scorer"),
                        (p["finetune"] / best / "decoder", "finetune")):
        _need(need, stage, args)
    if (out / "lora_ema" / "adapter_model.safetensors").is_file() and (out / "done").is_file():
        logger.info("align: done (%s)", out / "lora_ema")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / ALIGN_PROMPTS
    if not prompts.is_file():  # training captions (never the test or novel splits)
        from vist3a.io.atomic import atomic_write

        with atomic_write(prompts, "w") as fh:
            fh.write("".join(sample_scene("train", i, args.seed).caption + "\n" for i in range(args.align_prompts)))
    _threads(args)
    argv = ["--recipe", "paper", "--wan", str(Path(args.out) / "t2v" / "pipeline"), "--decoder", str(p["finetune"] / best / "decoder"),
            "--clip", str(Path(args.out) / "scorer" / "clip"), "--data", str(_world_dir(args)), "--prompts",
            str(prompts), "--frames", "9", "--height", "64", "--width", "64", "--max-sequence-length", "64",
            "--negative-prompt", "", "--t-min", "10", "--t-max", "20", "--steps", str(args.align_steps),
            "--reward", "quality_frames:0.0625,quality_renders:0.0625,consistency:0.05", "--gen-weight", "1.0",
            "--save-every", "50", "--seed", str(args.seed), "--output", str(out)] + (["--quiet"] if args.quiet
                                                                                   else [])
    if latest_checkpoint(out / "checkpoints") is not None:
        argv.append("--resume")
    code = align_drtune.main(argv)
    if code == 0:
        (out / "done").write_text("finished\n")
    return code


def _report(args) -> int:
    from .report import write_report

    _threads(args)
    write_report(args.out, _world_dir(args), scenes=args.report_scenes, noise_scenes=args.noise_scenes,
                 docs=args.docs, progress=not args.quiet, t2v_prompts=args.t2v_prompts,
                 part=args.part)
    return 0


def _ship(args) -> int:
    from .ship import ship

    ship(args.out, args.to)
    return 0


def _clip(args) -> int:
    from PIL import Image

    from vist3a.io.atomic import atomic_path, atomic_write

    from .world import CLIP_FRAMES, render_scene, sample_scene

    _threads(args)
    spec = sample_scene(args.split, args.index, args.seed)
    frames = render_scene(spec)["frames"][:CLIP_FRAMES]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        with atomic_path(out / f"frame_{i:02d}.png") as tmp:
            Image.fromarray(frame.numpy()).save(tmp, format="PNG")
    with atomic_write(out / "caption.txt", "w") as fh:
        fh.write(spec.caption + "\n")
    logger.info("%s scene %d: \"%s\" -> %d frames in %s", args.split, args.index, spec.caption, len(frames), out)
    return 0


def _all(args) -> int:
    for stage in ("world", "vae", "model3d", "search", "finetune", "mvdust3r", "stitch-mvdust3r", "scorer", "t2v", "align", "judge",
                  "ablate-cameras", "report"):
        logger.info("== stage %s", stage)
        code = STAGES[stage](args)
        if code:
            return code
    return 0


STAGES = {"world": _world, "vae": _vae, "model3d": _model3d, "mvdust3r": _mvdust3r, "stitch-mvdust3r": _stitch_mvdust3r, "search": _search, "finetune": _finetune,
          "scorer": _scorer, "t2v": _t2v, "align": _align, "judge": _judge, "ablate-cameras": _ablate_cameras,
          "report": _report, "ship": _ship, "clip": _clip, "all": _all}


# ============================================================================================ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.micro", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=list(STAGES), help="what to run")
    p.add_argument("--out", required=True, help="run folder (everything is written below it)")
    p.add_argument("--seed", type=int, default=0, help="world and training seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--world", default=None, help="world folder (default <out>/world)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads (default 2)")
    p.add_argument("--stop-after", type=int, default=None, metavar="K",
                   help="training stages: stop after K steps of this run (checkpoint, exit 0)")
    w = p.add_argument_group("world")
    w.add_argument("--train-scenes", type=int, default=DEFAULT_COUNTS["train"])
    w.add_argument("--test-scenes", type=int, default=DEFAULT_COUNTS["test"])
    w.add_argument("--novel-scenes", type=int, default=DEFAULT_COUNTS["novel"])
    w.add_argument("--shard-size", type=int, default=100)
    w.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="render processes")
    t = p.add_argument_group("training")
    t.add_argument("--vae-steps", type=int, default=3000)
    t.add_argument("--model3d-steps", type=int, default=3500)
    t.add_argument("--mvdust3r-steps", type=int, default=2400)
    t.add_argument("--search-samples", type=int, default=800, help="training clips of the layer search")
    t.add_argument("--search-heldout", type=int, default=200, help="held-out clips of the layer search")
    t.add_argument("--finetune-steps", type=int, default=1000)
    t.add_argument("--layers", default=None, help="finetune: only these runs (comma list of run names, e.g. enc_blocks_1,enc_blocks_1_random), "
                        "or 'all' for every searched layer (default: the best, 3 more spread over the ranking, "
                        "and the best from a random initialisation)")
    t.add_argument("--scorer-steps", type=int, default=2000)
    t.add_argument("--ablation-steps", type=int, default=500, help="ablate-cameras: camera-only steps per variant")
    t.add_argument("--judge-steps", type=int, default=800)
    t.add_argument("--t2v-steps", type=int, default=6000)
    t.add_argument("--align-steps", type=int, default=300)
    t.add_argument("--align-prompts", type=int, default=500, help="training captions used as DRTune prompts")
    r = p.add_argument_group("report / ship")
    r.add_argument("--report-scenes", type=int, default=60, help="held-out scenes for the NVS tables")
    r.add_argument("--noise-scenes", type=int, default=24, help="held-out scenes for the noise curves")
    r.add_argument("--part", choices=["all", "2", "text", "mvdust3r"], default="all",
                   help="report: 'all' measures everything; '2' keeps the earlier report's part-1 numbers and adds "
                        "the text-to-3D part (after the t2v, scorer, judge and align stages); 'text' rewrites the "
                        "markdown from the saved results.json; 'mvdust3r' keeps them and measures the MVDUSt3R "
                        "section (after the mvdust3r and stitch-mvdust3r stages)")
    r.add_argument("--t2v-prompts", type=int, default=24, help="held-out prompts per split for text to 3D")
    r.add_argument("--docs", default=None, help="also write <docs>/micro_world.md and <docs>/micro_world/*.png")
    r.add_argument("--to", default=None, help="ship: destination (default vist3a/weights/micro of this checkout)")
    c = p.add_argument_group("clip")
    c.add_argument("--split", choices=("train", "test", "novel"), default="test")
    c.add_argument("--index", type=int, default=0, help="scene index within the split")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return STAGES[args.stage](args)
    except KeyboardInterrupt:
        logger.warning("interrupted; run the same command again to continue (finished parts are kept)")
        return 130
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
