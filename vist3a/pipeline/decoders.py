"""Stitched-decoder sources for the pipelines: the published ``HJGO/VIST3A`` file, a local ``.pth``, or a folder /
hub repo in our format (:func:`vist3a.stitching.save_decoder`)."""

from __future__ import annotations

from pathlib import Path

import torch

from .settings import DEFAULT_DECODER, DEFAULT_DECODER_FILE

__all__ = ["load_stitched_decoder"]


def load_stitched_decoder(source: str | Path | None = None, base: str | Path | None = None,
                          dtype: torch.dtype | None = None, check: bool = True, per_pixel: bool = False):
    """Load a :class:`~vist3a.stitching.StitchedDecoder` (CPU, eval mode).

    ``source``:
      * None -> ``HJGO/VIST3A/anysplat_stitched.pth`` (published) on ``lhjiang/anysplat`` (or ``base``);
      * a local ``.pth`` / ``.pt`` file or ``HJGO/VIST3A/<file>.pth`` -> the published import;
      * a local folder, ``decoder_config.json`` / ``model.safetensors`` or a hub repo id -> our format.
    ``base``: base AnySplat for the published import (hub id, folder or weights file); default ``lhjiang/anysplat``.
    ``per_pixel``: one Gaussian per pixel even when the base config voxelises (default: follow it, like the
    official loader).
    Missing files offline raise OSError naming the repository/file and how to pass a local path. ``check`` runs the
    pre-flight check of every file it needs (decoder and base) first, so all missing ones are named at once.
    """
    from ..stitching import load_decoder, load_published_stitched

    if check:
        from ..checks import check_model_sources
        from .sources import decoder_sources

        check_model_sources(decoder_sources(source, base), "load_stitched_decoder")

    if source is None:
        return load_published_stitched(DEFAULT_DECODER_FILE, base=base, dtype=dtype, per_pixel=per_pixel)
    text = str(source)
    local = Path(text).expanduser()
    if text.endswith((".pth", ".pt")):
        if not local.is_file() and not text.startswith(DEFAULT_DECODER + "/"):
            raise FileNotFoundError(f"--decoder {text!r}: no such file; pass a published VIST3A .pth (e.g. "
                                    f"{DEFAULT_DECODER}/{DEFAULT_DECODER_FILE}) or a decoder folder")
        return load_published_stitched(local if local.is_file() else text, base=base, dtype=dtype,
                                       per_pixel=per_pixel)
    return load_decoder(local if local.exists() else text, dtype=dtype, per_pixel=per_pixel)
