"""Offline presets: ``tiny`` (small RANDOM models of the real architectures, plumbing only) and ``micro`` (small
models TRAINED on the micro world, shipped inside the package under ``vist3a/weights/micro``).

``--preset micro`` (see ``vist3a/weights/micro/README.md``, the model cards): the micro video VAE (diffusers
``AutoencoderKLWan``, 9 frames of 64x64 -> a (16, 3, 8, 8) latent), the micro AnySplat (56-px frames) and the micro
stitched decoder (the micro AnySplat stitched into the micro VAE's latent space; stored as LoRA on the shipped
micro AnySplat). They know the micro world only: a few coloured primitives on a textured ground under a sky,
filmed by a camera orbiting at constant distance (``python -m training.micro`` makes and retrains all of it).

``--preset tiny`` details:

Tiny Wan transformer / VAE / UMT5 text encoder with a character-level tokenizer built with the ``tokenizers``
library, and a tiny AnySplat stitched at ``enc_blocks_2`` through the released stitching-layer shape (at the tiny
width 64). The whole text-to-3D path runs on a CPU in seconds. The weights are random: the output shows the
plumbing only, never a meaningful scene.
"""

from __future__ import annotations

import logging
import string
from pathlib import Path

import torch

from .settings import GenerationSettings

__all__ = [
    "MICRO_SETTINGS",
    "MICRO_WEIGHTS",
    "TINY_SETTINGS",
    "TINY_STITCHING",
    "TINY_WARNING",
    "micro_anysplat",
    "micro_decoder",
    "micro_decoder_parts",
    "micro_mvdust3r",
    "micro_path",
    "micro_prompt_note",
    "micro_video_vae",
    "micro_vocabulary",
    "micro_wan_pipeline",
    "tiny_decoder",
    "tiny_tokenizer",
    "tiny_wan_pipeline",
    "word_tokenizer",
]

logger = logging.getLogger(__name__)

TINY_WARNING = ("--preset tiny: the models are tiny and UNTRAINED (random weights); the output shows the pipeline's "
                "plumbing only, not a real scene")
TINY_STITCHING = "conv3d_k5x3x3_o64_s1x2x2_p2x1x1"  # the released layer at the tiny AnySplat's width (64)
#: 64x64 video <-> 56x56 3D frames (the tiny AnySplat's image size), 9 frames, 4 steps, a short text length.
TINY_SETTINGS = GenerationSettings(num_frames=9, height=64, width=64, num_inference_steps=4, max_sequence_length=64)
_TEXT_DIM = 32


def tiny_tokenizer():
    """A character-level fast tokenizer (letters, digits, punctuation; ``<pad>``=0, ``</s>``=1, ``<unk>``=2)
    built in memory: every prompt maps to distinct ids, nothing is downloaded."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    vocab = {tok: i for i, tok in enumerate(specials + chars + ["##" + c for c in chars])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=200))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def word_tokenizer(texts):
    """A word-level fast tokenizer over every word and punctuation group in ``texts`` (lower-cased; ``<pad>``=0,
    ``</s>``=1 appended to every sequence, ``<unk>``=2), built in memory: the micro models' tokenizer (their
    vocabulary is the micro world's words plus the prompt template's)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t.lower())})
    vocab = {tok: i for i, tok in enumerate(["<pad>", "</s>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_wan_pipeline(seed: int = 0, flow_shift: float = 5.0):
    """A ``WanPipeline`` of tiny random models (runs 64x64, 9 frames, 4 steps in about a second on a CPU)."""
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from .wan import make_scheduler

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=_TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=_TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), transformer=transformer.eval(),
                       vae=vae.eval(), scheduler=make_scheduler(flow_shift))


#: the tiny MVDUSt3R decoder's stitching layer: the paper's geometry (k 5x7x7, stride 1x3x3) at width 64
TINY_MVDUST3R_STITCHING = "conv3d_k5x7x7_o64_s1x3x3_p2x0x0"


def tiny_decoder(seed: int = 0, kind: str = "anysplat", latent_channels: int = 16, temporal_factor: int = 4):
    """A tiny stitched decoder: tiny AnySplat (or VGGT) cut at ``enc_blocks_2`` + the tiny stitching layer; tiny
    MVDUSt3R (``kind="mvdust3r"``, MV-DUSt3R+ with 4 paths) cut at ``enc_blocks_1`` + the paper's layer geometry.
    ``latent_channels`` / ``temporal_factor``: the video VAE's (16 / 4 for Wan; SVD: 4 / 1)."""
    from ..models import tiny_model
    from ..stitching import StitchedDecoder, StitchingLayer

    model = tiny_model(kind, seed)  # seeds torch: the stitching layer below is seeded too
    cut, conf = ("enc_blocks_1", TINY_MVDUST3R_STITCHING) if kind == "mvdust3r" else ("enc_blocks_2", TINY_STITCHING)
    return StitchedDecoder(model, cut, StitchingLayer(conf, in_channels=latent_channels,
                                                      temporal_factor=temporal_factor)).eval()


# ============================================================================================ micro (trained)
#: where the shipped micro models live (package data)
MICRO_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "micro"
#: the micro world's video: 9 frames of 64x64 (3D model: 56x56)
MICRO_SETTINGS = GenerationSettings(num_frames=9, height=64, width=64, num_inference_steps=20, guidance_scale=5.0,
                                    negative_prompt="", max_sequence_length=64)
_MICRO_PARTS = {"vae": "diffusion_pytorch_model.safetensors", "anysplat": "model.safetensors",
                "decoder": "model.safetensors", "transformer": "diffusion_pytorch_model.safetensors",
                "text_encoder": "model.safetensors", "tokenizer": "tokenizer.json",
                "lora": "adapter_model.safetensors", "mvdust3r": "model.safetensors",
                "decoder_mvdust3r": "model.safetensors"}
#: the shipped micro 3D models a micro decoder can stitch: AnySplat (splats + cameras, the default) or MVDUSt3R
#: (splats + pointmap; its cameras are estimated from the pointmap)
MICRO_MODELS = ("anysplat", "mvdust3r")


def micro_path(part: str) -> Path:
    """The folder of a shipped micro model (``"vae"``, ``"anysplat"``, ``"decoder"``, ``"mvdust3r"``,
    ``"decoder_mvdust3r"``, ...); FileNotFoundError naming the fix when it is not installed."""
    if part not in _MICRO_PARTS:
        raise ValueError(f"micro_path: unknown part {part!r}; one of {sorted(_MICRO_PARTS)}")
    folder = MICRO_WEIGHTS / part
    if not (folder / _MICRO_PARTS[part]).is_file():
        raise FileNotFoundError(f"the micro {part} weights are not installed ({folder / _MICRO_PARTS[part]} is "
                                "missing): reinstall vist3a (pip install .), or rebuild them with `python -m "
                                "training.micro all --out runs/micro` then `python -m training.micro ship --out "
                                "runs/micro`")
    return folder


def micro_video_vae():
    """The shipped micro video VAE (diffusers ``AutoencoderKLWan``, float32, eval)."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(str(micro_path("vae")), torch_dtype=torch.float32).eval()


def micro_anysplat():
    """The shipped micro AnySplat (:class:`vist3a.models.AnySplat`, float32, eval)."""
    from ..models import from_pretrained

    return from_pretrained(micro_path("anysplat"), model="anysplat", dtype=torch.float32)


def micro_mvdust3r():
    """The shipped micro MVDUSt3R (:class:`vist3a.models.MVDUSt3R`, 64-px frames, float32, eval)."""
    from ..models import from_pretrained

    return from_pretrained(micro_path("mvdust3r"), model="mvdust3r", dtype=torch.float32)


def micro_decoder_parts(model3d: str = "anysplat") -> tuple[str, str]:
    """(base model part, decoder part) of the shipped micro decoder stitching ``model3d`` (:data:`MICRO_MODELS`)."""
    if model3d not in MICRO_MODELS:
        raise ValueError(f"micro decoder: unknown 3D model {model3d!r}; the micro world ships {', '.join(MICRO_MODELS)}")
    return (model3d, "decoder" if model3d == "anysplat" else f"decoder_{model3d}")


def micro_decoder(model3d: str = "anysplat"):
    """The shipped micro stitched decoder of ``model3d``: the micro AnySplat (default; splats + cameras) or the micro
    MVDUSt3R (splats + pointmap), with its LoRA and stitching layer merged; eval."""
    from ..stitching import load_decoder

    base, part = micro_decoder_parts(model3d)
    micro_path(base)
    return load_decoder(micro_path(part), dtype=torch.float32)


def micro_wan_pipeline(lora: bool = True):
    """The shipped micro text-to-video model as a diffusers ``WanPipeline`` (micro transformer, text encoder,
    word-level tokenizer, micro VAE, the VIST3A UniPC scheduler), with the DRTune-aligned EMA LoRA applied when
    ``lora`` (and shipped)."""
    from diffusers import WanPipeline, WanTransformer3DModel
    from transformers import PreTrainedTokenizerFast, UMT5EncoderModel

    from .wan import load_vist3a_lora, make_scheduler

    transformer = WanTransformer3DModel.from_pretrained(str(micro_path("transformer")), torch_dtype=torch.float32)
    text = UMT5EncoderModel.from_pretrained(str(micro_path("text_encoder")), dtype=torch.float32)
    tok = PreTrainedTokenizerFast.from_pretrained(str(micro_path("tokenizer")))
    pipe = WanPipeline(tokenizer=tok, text_encoder=text.eval(), transformer=transformer.eval(),
                       vae=micro_video_vae(), scheduler=make_scheduler(MICRO_SETTINGS.flow_shift))
    if lora and (MICRO_WEIGHTS / "lora" / _MICRO_PARTS["lora"]).is_file():
        pipe.transformer = load_vist3a_lora(pipe.transformer, micro_path("lora"))
    return pipe


def micro_vocabulary() -> dict[str, list[str]]:
    """What the micro world knows, by kind (shapes, colours, sizes, grounds, skies, words), from the shipped
    ``vocabulary.json``."""
    import json

    path = MICRO_WEIGHTS / "vocabulary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall vist3a or re-ship the micro models")
    return json.loads(path.read_text())


def micro_prompt_note(prompt: str) -> str | None:
    """None when every word of ``prompt`` is in the micro world's vocabulary; otherwise a message naming the
    unknown words and listing what the micro world knows (unknown words are not an error: the model ignores
    them, so the user must be told)."""
    import re

    vocab = micro_vocabulary()
    known = {w for words in vocab.values() for w in words}
    words = re.findall(r"[a-z0-9]+", prompt.lower())
    unknown = sorted({w for w in words if w not in known})
    if not unknown:
        return None
    kinds = "; ".join(f"{k}: {', '.join(v)}" for k, v in vocab.items() if k != "words")
    return (f"--preset micro knows only the micro world; these words mean nothing to it and are ignored: "
            f"{', '.join(unknown)}. It knows {kinds}; and spatial words (to the left of, to the right of, in front "
            f"of, behind, from left to right). Example: \"a small red cube to the left of a large blue sphere on "
            f"grass under a blue sky\"")
