"""``python -m training.micro report``: the paper's stitching claims measured in the micro world.

Everything is measured on the world's ``test`` split (scenes never trained on) with the models of one run folder
(``--out``), by :mod:`training.micro.evaluate`:

* the micro VAE's reconstruction PSNR and the micro AnySplat's novel-view synthesis (NVS);
* (a) NVS of the best stitched decoder from latents vs the micro AnySplat from frames (paper Table 3);
* (b) the layer search's held-out MSE per layer vs the finetuned decoders' NVS PSNR (paper Fig. 5), with the
  Spearman rank correlation;
* (c) closed-form vs random initialisation of the stitching layer at equal finetuning steps: loss curves and NVS
  before and after finetuning;
* (d) latent-noise robustness: NVS of the stitched decoder on ``z + a ||z|| eps`` vs VAE-decode-then-AnySplat;
* an example figure (ground-truth novel views next to each method's renders) and the wall times of every stage.

Writes ``<out>/report/{results.json, report.md, *.png}`` atomically; with ``docs`` also ``<docs>/micro_world.md``
and ``<docs>/micro_world/*.png`` (the same content, image links relative to the markdown file).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from vist3a.io.atomic import atomic_path, atomic_write

from ..plots import plot_curves
from .evaluate import nvs_scores, predict, spearman
from .mvdust3r_report import collect_mvdust3r, markdown_mvdust3r
from .shards import MANIFEST, TIMING, MicroScenes, to_model_size

__all__ = ["NOISE_ALPHAS", "collect", "document", "write_report"]

logger = logging.getLogger("vist3a.micro")

NOISE_ALPHAS = (0.0, 0.1, 0.25, 0.5, 1.0)
EXAMPLE_SCENES = (0, 1, 2, 3, 4, 5)


def _load_models(run: Path) -> dict[str, Any]:
    from diffusers import AutoencoderKLWan

    from vist3a.models import from_pretrained
    from vist3a.stitching.checkpoint import load_decoder

    from .cli import finetune_runs, ranking

    vae = AutoencoderKLWan.from_pretrained(str(run / "vae" / "vae")).eval()
    model = from_pretrained(run / "model3d" / "anysplat").eval()
    decoders = {}
    default = finetune_runs(run / "search", run / "finetune")
    for name, info in finetune_runs(run / "search", run / "finetune", every_layer=True).items():
        path = info["output"] / "decoder"
        if (path / "model.safetensors").is_file():
            decoders[name] = load_decoder(path).eval()
        elif name in default:
            logger.warning("report: %s has no finetuned decoder yet (%s)", name, path)
    return {"vae": vae, "model": model, "decoders": decoders, "ranking": ranking(run / "search")}


def _metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stage_time(path: Path) -> float | None:
    rows = _metrics(path)
    return float(rows[-1]["time"]) if rows and "time" in rows[-1] else None


def _world_time(world: Path) -> dict[str, Any]:
    t = world / TIMING
    if t.is_file():
        doc = json.loads(t.read_text())
        return {"wall_s": doc.get("wall"), "workers": doc.get("workers"), "source": TIMING}
    shards = sorted(world.glob("*/shard_*.safetensors"), key=lambda p: p.stat().st_mtime)
    if not shards:
        return {}
    start = (world / MANIFEST).stat().st_mtime
    return {"wall_s": round(shards[-1].stat().st_mtime - start, 1), "workers": None,
            "source": "file times (world.json written -> last shard written)"}


def _smooth(values: list[float], window: int = 50) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _initial_decoder(run: Path, model, layer: str, init: str, seed: int = 0):
    """The stitched decoder at finetuning step 0: the micro AnySplat cut at ``layer`` with the closed-form
    stitching layer of the search, or a randomly initialised one (seeded as the finetuning run seeds it)."""
    import copy

    from vist3a.stitching import StitchedDecoder, StitchingLayer

    from ..train_stitched_decoder import load_stitching_init
    from .cli import MICRO_STITCHING

    if init == "closed-form":
        layer_mod, _ = load_stitching_init(run / "search" / f"stitching_layer_{layer}.safetensors", 16)
    else:
        torch.manual_seed(seed)
        layer_mod = StitchingLayer(MICRO_STITCHING, in_channels=16)
    return StitchedDecoder(copy.deepcopy(model), layer, layer_mod).eval()


def _example_figure(path: Path, scenes: MicroScenes, models: dict, best: str, lpips=None) -> None:
    """Rows: test scenes; columns: ground-truth novel view, AnySplat (frames), stitched (latent, input frames),
    stitched (latent, decoded frames), decode-then-AnySplat; 56-px renders upscaled 3x."""
    from PIL import Image, ImageDraw

    from ..eval_nvs import map_targets, render_views

    cols = [("ground truth", None, {}), ("AnySplat", "anysplat", {}),
            ("stitched", "stitched", {"head_frames": "input"}),
            ("stitched, decoded", "stitched", {"head_frames": "decoded"}),
            ("decode+AnySplat", "decode_reconstruct", {})]
    tile, pad, top = 56 * 3, 6, 22
    img = Image.new("RGB", (len(cols) * (tile + pad) + pad, len(EXAMPLE_SCENES) * (tile + pad) + pad + top), "white")
    draw = ImageDraw.Draw(img)
    for c, (name, _, _) in enumerate(cols):
        draw.text((pad + c * (tile + pad) + tile // 2, 6), name, fill="black", anchor="mt")
    for r, i in enumerate(EXAMPLE_SCENES[: len(scenes)]):
        item = scenes[i]
        f = int(item["clip_frames"])
        for c, (_, method, kw) in enumerate(cols):
            if method is None:
                pic = to_model_size(item["frames"][f], 56)
            else:
                pred = predict(method, item, model=models["model"], decoder=models["decoders"][best],
                               vae=models["vae"], seed=1000 + i, **kw)
                cams = MicroScenes.cameras(item, size=56)
                tgt, _ = map_targets(pred.cameras[0].to("cpu", torch.float64), cams[slice(0, f)],
                                     cams[slice(f, f + 1)])
                pic = render_views(pred.gaussians[0].to(dtype=torch.float32), tgt)[0]
            arr = (pic.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
            im = Image.fromarray(arr).resize((tile, tile), Image.NEAREST)
            img.paste(im, (pad + c * (tile + pad), top + pad + r * (tile + pad)))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def collect(run: str | Path, world: str | Path, *, scenes: int = 200, noise_scenes: int = 60,
            progress: bool = True, out_dir: Path | None = None) -> dict[str, Any]:
    """Run every measurement; returns the results dict (figures go to ``out_dir`` when given)."""
    from ..metrics import load_lpips
    from .vae import evaluate_vae

    run, world = Path(run), Path(world)
    t_start = time.perf_counter()
    models = _load_models(run)
    test = MicroScenes(world, "test")
    idx = list(range(min(scenes, len(test))))
    lpips = load_lpips("alex")
    res: dict[str, Any] = {"scenes": len(idx), "split": "test", "lpips": lpips is not None}
    m, vae = models["model"], models["vae"]
    res["vae"] = evaluate_vae(vae, test, limit=len(idx))
    logger.info("report: VAE reconstruction PSNR %.2f dB on %d held-out clips", res["vae"]["psnr"], len(idx))
    order = [r["layer"] for r in models["ranking"]]
    best = order[0]
    dec = models["decoders"].get(best)
    if dec is None:
        raise FileNotFoundError(f"report: the best layer's decoder ({best}) is not finetuned yet; run the finetune "
                                "stage")
    kw = {"model": m, "vae": vae, "lpips": lpips, "progress": progress}

    def strip(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "per_scene"}

    nvs = {"anysplat": nvs_scores("anysplat", test, idx, desc="AnySplat", **kw),
           "stitched": nvs_scores("stitched", test, idx, decoder=dec, head_frames="input", desc="stitched", **kw),
           "stitched_decoded": nvs_scores("stitched", test, idx, decoder=dec, head_frames="decoded",
                                          desc="stitched (decoded)", **kw),
           "decode_reconstruct": nvs_scores("decode_reconstruct", test, idx, desc="decode+AnySplat", **kw)}
    res["nvs"] = {k: strip(v) for k, v in nvs.items()}
    res["nvs_per_scene"] = {k: [round(p["psnr"], 4) for p in v["per_scene"]] for k, v in nvs.items()}
    wins = sum(a["psnr"] >= b["psnr"] for a, b in zip(nvs["stitched"]["per_scene"], nvs["anysplat"]["per_scene"]))
    res["nvs"]["stitched_wins"] = wins
    logger.info("report (a): NVS PSNR AnySplat %.2f, stitched %.2f", nvs["anysplat"]["psnr"], nvs["stitched"]["psnr"])

    # (b) layer search ranking vs finetuned quality
    layers = []
    for r in models["ranking"]:
        d = models["decoders"].get(r["layer"])
        if d is None:
            continue
        score = nvs if r["layer"] == best else {"stitched": nvs_scores("stitched", test, idx, decoder=d,
                                                                       head_frames="input", desc=r["layer"], **kw)}
        layers.append({"layer": r["layer"], "heldout_mse": r["heldout_mse"], "train_mse": r["train_mse"],
                       **{k: score["stitched"].get(k) for k in ("psnr", "ssim", "lpips")}})
    res["layers"] = layers
    if len(layers) >= 2:
        res["spearman_mse_psnr"] = spearman([x["heldout_mse"] for x in layers], [x["psnr"] for x in layers])
    # (c) closed-form vs random initialisation
    init = {}
    for name, kind in ((best, "closed-form"), (f"{best}_random", "random")):
        rows = _metrics(run / "finetune" / name / "metrics.jsonl")
        d0 = _initial_decoder(run, m, best, kind)
        entry = {"init": kind, "steps": rows[-1]["step"] if rows else 0,
                 "loss_first": rows[0]["loss"] if rows else None, "loss_last": rows[-1]["loss"] if rows else None,
                 "nvs_step0": strip(nvs_scores("stitched", test, idx, decoder=d0, head_frames="input",
                                               desc=f"{kind} init, step 0", **kw))}
        if name in models["decoders"]:
            entry["nvs_final"] = (res["nvs"]["stitched"] if name == best else
                                  strip(nvs_scores("stitched", test, idx, decoder=models["decoders"][name],
                                                   head_frames="input", desc=f"{kind} init, final", **kw)))
        entry["curve"] = [(row["step"], row["loss"]) for row in rows]
        init[kind] = entry
    res["init"] = init
    # (d) latent-noise robustness
    nidx = idx[: min(noise_scenes, len(idx))]
    noise = {"alphas": list(NOISE_ALPHAS), "scenes": len(nidx), "stitched": [], "decode_reconstruct": []}
    for a in NOISE_ALPHAS:
        for method in ("stitched", "decode_reconstruct"):
            r = nvs_scores(method, test, nidx, decoder=dec, head_frames="decoded", alpha=a,
                           desc=f"noise {a:g} {method}", **kw)
            noise[method].append(strip(r))
    res["noise"] = noise
    # times
    res["times"] = {"world": _world_time(world), "vae_s": _stage_time(run / "vae" / "metrics.jsonl"),
                    "model3d_s": _stage_time(run / "model3d" / "metrics.jsonl"),
                    "search_s": _search_seconds(run / "search"),
                    "finetune_s": {n: _stage_time(run / "finetune" / n / "metrics.jsonl")
                                   for n in sorted(models["decoders"])}}
    res["machine"] = {"cpus": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
                      "processor": platform.processor() or platform.machine()}
    res["best_layer"] = best
    res["params"] = {"vae": sum(p.numel() for p in vae.parameters()),
                     "anysplat": sum(p.numel() for p in m.parameters()),
                     "decoder": sum(p.numel() for p in dec.parameters())}
    if out_dir is not None:
        _figures(out_dir, res, test, models, best, lpips)
    res["report_seconds"] = round(time.perf_counter() - t_start, 1)
    return res


def collect_t2v(run: str | Path, world: str | Path, *, prompts: int = 40, progress: bool = True) -> dict[str, Any]:
    """Part 2: text-to-3D adherence and 3D consistency before / after DRTune, stitched vs decode + AnySplat, on
    held-out prompts (training.micro.adherence), plus the judge's and the scorer's own accuracy."""
    from diffusers import WanPipeline

    from vist3a.models import from_pretrained
    from vist3a.pipeline import TextTo3DPipeline
    from vist3a.pipeline.presets import MICRO_SETTINGS
    from vist3a.pipeline.wan import load_vist3a_lora, make_scheduler
    from vist3a.stitching.checkpoint import load_decoder

    from ..rewards import ClipScorer
    from .adherence import evaluate_prompts, held_out_specs, judge_ground_truth
    from .cli import ranking
    from .judge import load_judge
    from .scorer import evaluate_scorer

    run, world = Path(run), Path(world)
    best = ranking(run / "search")[0]["layer"]
    decoder = load_decoder(run / "finetune" / best / "decoder")
    model3d = from_pretrained(run / "model3d" / "anysplat").eval()
    judge = load_judge(run / "judge" / "judge.safetensors")
    test = MicroScenes(world, "test")
    res: dict[str, Any] = {"judge_on_ground_truth": judge_ground_truth(judge, test),
                           "scorer_retrieval": evaluate_scorer(ClipScorer.from_pretrained(str(run / "scorer" / "clip")),
                                                               test)}
    specs = {"test": held_out_specs("test", prompts), "novel": held_out_specs("novel", prompts)}
    for name, lora in (("before", None), ("after", run / "align" / "lora_ema")):
        wan = WanPipeline.from_pretrained(str(run / "t2v" / "pipeline"))
        wan.scheduler = make_scheduler(MICRO_SETTINGS.flow_shift)
        if lora is not None:
            wan.transformer = load_vist3a_lora(wan.transformer, lora)
        pipe = TextTo3DPipeline(wan, decoder, MICRO_SETTINGS)
        res[name] = {split: evaluate_prompts(pipe, model3d, judge, sp, progress=progress,
                                             desc=f"{name} DRTune, {split} prompts") for split, sp in specs.items()}
    res["align_steps"] = _metrics(run / "align" / "metrics.jsonl")[-1]["step"] if _metrics(
        run / "align" / "metrics.jsonl") else 0
    res["t2v_s"] = _stage_time(run / "t2v" / "metrics.jsonl")
    res["scorer_s"] = _stage_time(run / "scorer" / "metrics.jsonl")
    res["judge_s"] = _stage_time(run / "judge" / "metrics.jsonl")
    return res


def markdown_t2v(res: dict, command: str) -> str:
    """Part 2 of the report (text to 3D) as markdown."""
    j = res["judge_on_ground_truth"]
    sc = res["scorer_retrieval"]
    lines = ["## Text to 3D: the micro Wan, DRTune alignment, stitched vs decode-then-reconstruct", "",
             (f"Made by `{command}`. Prompts: the captions of the first {res['before']['test']['prompts']} held-out "
             "`test` scenes and of the first "
             f"{res['before']['novel']['prompts']} `novel` scenes (each holds a colour x shape pair never trained "
             "on); one seed per prompt. Each sampled latent is decoded twice: by the stitched decoder, and by the "
             "micro VAE followed by the micro AnySplat. The scenes are rendered at their own predicted cameras "
             "(views 0, 4, 8) and read by a ground-truth judge: a CNN trained on the world's ground-truth renders "
             "and labels, never on the reward. On ground-truth renders of held-out scenes it reads the object count "
             f"right {100 * j['count']:.0f} % of the time, colour-set F1 {j['colour_f1']:.2f}, shape-set F1 "
             f"{j['shape_f1']:.2f} (its ceiling). The reward model (micro CLIP) retrieves the right caption among "
             f"{sc['scenes']} held-out scenes for {100 * sc['image_to_text']:.0f} % of their images. 3D "
             "consistency is the PSNR between the decoded frames and the renders of the decoded 3D scene at the "
             f"same views. DRTune: {res['align_steps']} steps."), "",
             "| prompts | DRTune | decoder | count right | colour F1 | shape F1 | all right | consistency PSNR |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for split in ("test", "novel"):
        for when in ("before", "after"):
            for method, label in (("stitched", "stitched"), ("decode_reconstruct", "decode + AnySplat")):
                r = res[when][split][method]
                lines.append(f"| {split} | {when} | {label} | {100 * r['count']:.0f} % | {r['colour_f1']:.2f} | "
                             f"{r['shape_f1']:.2f} | {100 * r['exact']:.0f} % | {r['consistency_psnr']:.2f} |")
    return "\n".join(lines) + "\n"


def _search_seconds(folder: Path) -> float | None:
    p = folder / "ranking.json"
    if not p.is_file():
        return None
    return json.loads(p.read_text()).get("seconds")


def _figures(out: Path, res: dict, test: MicroScenes, models: dict, best: str, lpips) -> None:
    out.mkdir(parents=True, exist_ok=True)
    layers = res["layers"]
    if layers:
        xs = list(range(1, len(layers) + 1))
        plot_curves(out / "layers.png", xs, {
            "log10 held-out MSE (search)": [math.log10(x["heldout_mse"]) for x in layers],
        }, title="layer search: held-out stitching MSE, layers in search order (best first)",
            xlabel="search rank (" + ", ".join(f"{i}={x['layer'].replace('enc_blocks_', 'b')}"
                                               for i, x in zip(xs, layers)) + ")", ylabel="log10 MSE")
        plot_curves(out / "layers_nvs.png", xs, {"finetuned NVS PSNR (dB)": [x["psnr"] for x in layers]},
                    title=f"finetuned stitched decoders: NVS PSNR by search rank (Spearman MSE vs PSNR "
                          f"{res.get('spearman_mse_psnr', float('nan')):.2f})",
                    xlabel="search rank (same order as layers.png)", ylabel="PSNR dB")
    init = res["init"]
    curves = {k: v["curve"] for k, v in init.items() if v["curve"]}
    if curves:
        n = min(len(c) for c in curves.values())
        step = max(1, n // 60)
        first = next(iter(curves.values()))
        xs = [first[i][0] for i in range(0, n, step)]
        series = {f"{k} init": _smooth([y for _, y in c[:n]])[::step] for k, c in curves.items()}
        plot_curves(out / "init.png", xs, series, title=f"finetuning loss at {best} (moving mean of 50 steps)",
                    xlabel="step", ylabel="loss")
    noise = res["noise"]
    plot_curves(out / "noise.png", noise["alphas"], {
        "stitched (latent)": [r["psnr"] for r in noise["stitched"]],
        "VAE decode + AnySplat": [r["psnr"] for r in noise["decode_reconstruct"]]},
        title=f"novel views under latent noise z + a||z||eps ({noise['scenes']} held-out scenes)", xlabel="a",
        ylabel="NVS PSNR dB")
    _example_figure(out / "examples.png", test, models, best, lpips)


def _f(v, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def markdown(res: dict, img: str, command: str) -> str:
    """The report as markdown; ``img`` is the folder of the PNGs relative to the markdown file."""
    nvs = res["nvs"]
    lp = res["lpips"]
    head = "| method | input | PSNR | SSIM |" + (" LPIPS |" if lp else "")
    sep = "| --- | --- | ---: | ---: |" + (" ---: |" if lp else "")

    def row(name, inp, r):
        return f"| {name} | {inp} | {_f(r['psnr'])} | {_f(r['ssim'], 3)} |" + (f" {_f(r.get('lpips'), 3)} |" if lp
                                                                             else "")

    t = res["times"]
    lines = [
        "# The micro world: VIST3A's stitching reproduced on a 2-core CPU",
        "",
        (f"Made by `{command}` from the run folder's models; every number below is measured on the {res['scenes']} "
        "held-out `test` scenes of the micro world (never trained on), every figure is written by that command."),
        "",
        "## What reproduces",
        "",
        *findings(res),
        "",
        "## Models and data",
        "",
        f"- World: {_world_line(t['world'])}.",
        (f"- Micro video VAE (diffusers `AutoencoderKLWan`, base width 16, 16 latent channels): reconstruction PSNR "
        f"**{_f(res['vae']['psnr'])} dB** on {res['vae']['clips']} held-out 9-frame 64x64 clips (posterior mean); "
        f"trained {_mins(t['vae_s'])}."),
        (f"- Micro AnySplat (this pack's `AnySplat`, width 128, 6+6 blocks, 56x56 frames): NVS PSNR "
        f"**{_f(nvs['anysplat']['psnr'])} dB** on the 4 novel views per scene; trained {_mins(t['model3d_s'])}."),
        f"- Layer search over the 6 DINO blocks: {_mins(t['search_s'])}; best layer "
        f"**{res['best_layer']}**. Finetuning per layer: "
        + ", ".join(f"{k} {_mins(v)}" for k, v in t["finetune_s"].items() if v) + ".",
        "",
        "## (a) Stitched decoder from latents vs AnySplat from frames (paper Table 3)",
        "",
        head, sep,
        row("micro AnySplat", "9 frames", nvs["anysplat"]),
        row(f"stitched at {res['best_layer']}", "latent + input frames for the heads", nvs["stitched"]),
        row(f"stitched at {res['best_layer']}", "latent + VAE-decoded frames (text-to-3D setting)",
            nvs["stitched_decoded"]),
        row("VAE decode, then AnySplat", "latent", nvs["decode_reconstruct"]),
        "",
        (f"The stitched decoder matches or beats AnySplat on {nvs['stitched_wins']} of {res['scenes']} scenes "
        "(per-scene PSNR)."),
        "",
        "![examples](" + img + "/examples.png)",
        "",
        "Rows: held-out scenes; columns: the ground-truth novel view, then each method's render at that view.",
        "",
        "## (b) Layer-search MSE vs finetuned quality (paper Fig. 5)",
        "",
        "| search rank | layer | held-out MSE | finetuned PSNR | SSIM |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for i, x in enumerate(res["layers"], 1):
        lines.append(f"| {i} | {x['layer']} | {x['heldout_mse']:.4g} | {_f(x['psnr'])} | {_f(x['ssim'], 3)} |")
    lines += ["", (f"Spearman rank correlation between held-out MSE and finetuned PSNR over {len(res['layers'])} "
              f"layers: **{_f(res.get('spearman_mse_psnr'))}** (the paper's claim predicts a negative value: lower "
              "MSE, better decoder)."), "", f"![layers]({img}/layers.png)", "", f"![layers]({img}/layers_nvs.png)", "",
              "## (c) Closed-form vs random initialisation of the stitching layer", "",
              "| init | NVS PSNR at step 0 | NVS PSNR after finetuning | loss first -> last step |",
              "| --- | ---: | ---: | --- |"]
    for kind, e in res["init"].items():
        lines.append(f"| {kind} | {_f(e['nvs_step0']['psnr'])} | {_f(e.get('nvs_final', {}).get('psnr'))} | "
                     f"{_f(e['loss_first'], 3)} -> {_f(e['loss_last'], 3)} ({e['steps']} steps) |")
    noise = res["noise"]
    lines += ["", f"![init]({img}/init.png)", "", "## (d) Robustness to latent noise", "",
              (f"z' = z + a ||z|| eps (||z|| the per-sample RMS), NVS PSNR on {noise['scenes']} held-out scenes; both "
              "methods read the VAE decoding of z' for their pixel inputs."), "",
              "| a | " + " | ".join(f"{a:g}" for a in noise["alphas"]) + " |",
              "| --- |" + " ---: |" * len(noise["alphas"]),
              "| stitched (latent) | " + " | ".join(_f(r["psnr"]) for r in noise["stitched"]) + " |",
              "| VAE decode + AnySplat | " + " | ".join(_f(r["psnr"]) for r in noise["decode_reconstruct"]) + " |",
              "", f"![noise]({img}/noise.png)", ""]
    abl = res.get("camera_ablation")
    if abl:
        lines += ["## Why the micro AnySplat has one token entry per frame", "",
                  ("AnySplat (like VGGT) gives its aggregator 2 learned camera / register token entries: one for the "
                   "first frame, one shared by all others. Trained on the micro world, the micro AnySplat's camera "
                   "head with 2 entries collapsed to the mean orbit pose; with one entry per frame (`frame_tokens: 9`) "
                   "it learns the poses. Measured by `python -m training.micro ablate-cameras`: a fresh micro "
                   f"AnySplat's aggregator and camera head trained on the camera loss alone ({abl[0]['steps']} steps, "
                   f"AdamW {abl[0]['lr']:g}), mean rotation error of the predicted poses on {abl[0]['eval_scenes']} "
                   "held-out scenes:"), "",
                  "| token entries | " + " | ".join(f"step {s}" for s, _ in abl[0]["rotation_error_deg"]) + " |",
                  "| --- |" + " ---: |" * len(abl[0]["rotation_error_deg"])]
        for r in abl:
            lines.append(f"| {r['frame_tokens']} | " + " | ".join(f"{e:.1f} deg" for _, e in r["rotation_error_deg"])
                         + " |")
        lines.append("")
    return "\n".join(lines)


def findings(res: dict) -> list[str]:
    """One line per claim of the paper: what the numbers below say about it (derived from the numbers, so the text
    cannot drift from them)."""
    nvs, noise, init = res["nvs"], res["noise"], res["init"]
    d = nvs["stitched"]["psnr"] - nvs["anysplat"]["psnr"]
    out = [(f"- (a) Stitching keeps AnySplat's quality: **{'yes' if d >= 0 else ('nearly' if d > -0.5 else 'no')}** "
            f"({d:+.2f} dB PSNR, stitched from latents vs AnySplat from frames; better or equal on "
            f"{nvs['stitched_wins']} of {res['scenes']} scenes).")]
    rho = res.get("spearman_mse_psnr")
    if rho is not None:
        out.append(f"- (b) The search's MSE predicts the finetuned quality: **{'yes' if rho < 0 else 'no'}** "
                   f"(Spearman {rho:+.2f} over {len(res['layers'])} layers; negative means lower MSE, better decoder).")
    cf, rd = init.get("closed-form", {}), init.get("random", {})
    if cf.get("nvs_final") and rd.get("nvs_final"):
        a0, b0 = cf["nvs_step0"]["psnr"], rd["nvs_step0"]["psnr"]
        a1, b1 = cf["nvs_final"]["psnr"], rd["nvs_final"]["psnr"]
        out.append(f"- (c) Closed-form initialisation beats random: **{'yes' if a1 >= b1 and a0 > b0 else 'no'}** "
                   f"({a0:.2f} vs {b0:.2f} dB before finetuning, {a1:.2f} vs {b1:.2f} dB after {cf['steps']} steps).")
    st, dr = noise["stitched"][-1]["psnr"], noise["decode_reconstruct"][-1]["psnr"]
    s0, d0 = noise["stitched"][0]["psnr"], noise["decode_reconstruct"][0]["psnr"]
    robust = (s0 - st) <= (d0 - dr)
    line = (f"- (d) The stitched decoder is more robust to latent noise than decode-then-reconstruct: "
            f"**{'yes' if robust else 'no'}** (at a = {noise['alphas'][-1]:g} it loses {s0 - st:.2f} dB, "
            f"decode + AnySplat {d0 - dr:.2f} dB).")
    if not robust:
        line += (" A likely reason (a hypothesis, not measured here): the micro VAE's decoder, trained on latents of a "
                 "very simple world, maps noisy latents back to clean-looking frames, while the stitching layer is "
                 "linear in the latent, so the noise reaches the 3D model's features undamped; the paper measured "
                 "the real Wan decoder at 480p and beyond. The noise level is relative to the per-sample RMS of z "
                 "(the Frobenius norm of the paper's formula would make every a > 0.02 drown the latent here).")
    out.append(line)
    t2 = res.get("t2v")
    if t2:
        b, a = t2["before"]["test"]["stitched"], t2["after"]["test"]["stitched"]
        out.append(f"- Text to 3D with DRTune ({t2['align_steps']} steps): 3D consistency "
                   f"{b['consistency_psnr']:.2f} -> {a['consistency_psnr']:.2f} dB, colour F1 {b['colour_f1']:.2f} "
                   f"-> {a['colour_f1']:.2f}, count right {100 * b['count']:.0f} -> {100 * a['count']:.0f} % "
                   "(held-out prompts, stitched decoder; table at the end).")
    return out


def _mins(seconds) -> str:
    return "-" if not seconds else f"{seconds / 60:.0f} min"


def _world_line(w: dict) -> str:
    if not w:
        return "generation time unknown"
    return f"generated in {_mins(w.get('wall_s'))} of wall time ({w.get('source')})"


def document(res: dict, images: str, command: str) -> str:
    """The whole report as markdown: part 1 (:func:`markdown`), then the text-to-3D part and the MVDUSt3R section
    when ``res`` holds them; ``images``: the PNG folder relative to the markdown file."""
    text = markdown(res, images, command)
    if res.get("t2v"):
        text += "\n" + markdown_t2v(res["t2v"], command)
    if res.get("mvdust3r"):
        text += "\n" + markdown_mvdust3r(res["mvdust3r"], command)
    return text


def write_report(run: str | Path, world: str | Path, *, scenes: int = 200, noise_scenes: int = 60,
                 docs: str | Path | None = None, progress: bool = True, t2v_prompts: int = 40,
                 part: str = "all") -> Path:
    """Measure, then write ``<run>/report`` (and ``<docs>/micro_world.md`` + ``<docs>/micro_world/``).

    ``part``: ``"all"`` measures everything; ``"2"`` keeps the part-1 measurements of an earlier report
    (``<run>/report/results.json``, e.g. made before the text-to-video stages finished) and measures part 2 only;
    ``"text"`` measures nothing and rewrites the markdown from the saved results; ``"mvdust3r"`` keeps the saved
    results and measures the MVDUSt3R section only (:mod:`training.micro.mvdust3r_report`)."""
    run = Path(run)
    out = run / "report"
    if part not in ("all", "2", "text", "mvdust3r"):
        raise ValueError(f"write_report: part must be 'all', '2', 'text' or 'mvdust3r', not {part!r}")
    if part in ("text", "mvdust3r"):  # the saved results; 'text' measures nothing, 'mvdust3r' that section only
        if not (out / "results.json").is_file():
            raise FileNotFoundError(f"{out / 'results.json'} is missing: run the report once with --part all")
        res = json.loads((out / "results.json").read_text())
    elif part == "2":
        if not (out / "results.json").is_file():
            raise FileNotFoundError(f"{out / 'results.json'} is missing: run the report once with --part all")
        res = json.loads((out / "results.json").read_text())
        res.pop("t2v", None)
    else:
        res = collect(run, world, scenes=scenes, noise_scenes=noise_scenes, progress=progress, out_dir=out)
    ablation = run / "ablation" / "cameras.json"
    if ablation.is_file():
        res["camera_ablation"] = json.loads(ablation.read_text())
    command = f"python -m training.micro report --out {run}" + (f" --docs {docs}" if docs else "")
    if part in ("all", "mvdust3r"):
        mvd = collect_mvdust3r(run, world, scenes=scenes, progress=progress)
        if mvd is not None:
            res["mvdust3r"] = mvd
    if part in ("all", "2"):
        if (run / "align" / "lora_ema" / "adapter_model.safetensors").is_file() and (run / "judge" /
                                                                                     "judge.safetensors").is_file():
            res["t2v"] = collect_t2v(run, world, prompts=t2v_prompts, progress=progress)
        else:
            logger.info("report: no aligned micro Wan / judge yet in %s: the text-to-3D part is left out", run)
    with atomic_write(out / "results.json", "w") as fh:
        json.dump(res, fh, indent=1)
        fh.write("\n")
    with atomic_write(out / "report.md", "w") as fh:
        fh.write(document(res, ".", command))
    if docs:
        d = Path(docs)
        (d / "micro_world").mkdir(parents=True, exist_ok=True)
        for png in out.glob("*.png"):
            shutil.copyfile(png, d / "micro_world" / png.name)
        with atomic_write(d / "micro_world" / "results.json", "w") as fh:
            json.dump({k: v for k, v in res.items() if k != "init"} | {"init": {
                k: {kk: vv for kk, vv in e.items() if kk != "curve"} for k, e in res["init"].items()}}, fh, indent=1)
            fh.write("\n")
        with atomic_write(d / "micro_world.md", "w") as fh:
            fh.write(document(res, "micro_world", command))
    logger.info("report written to %s", out)
    return out
