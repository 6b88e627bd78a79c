"""Small PNG line plots drawn with PIL (no matplotlib), written atomically: the layer-search MSE curve
(:func:`plot_layer_mse`) and value-spaced curves such as the latent-noise robustness plot (:func:`plot_curves`)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence

from vist3a.io.atomic import atomic_path

__all__ = ["PALETTE", "plot_curves", "plot_layer_mse"]

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
_MARGINS = (80, 20, 40, 90)  # left, right, top, bottom


def _nice_step(span: float, ticks: int = 6) -> float:
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def _positive(v) -> bool:
    return _finite(v) and v > 0


class _Axes:
    """A white canvas with one framed plot area; y runs over [lo, hi] padded by 5 % (a flat range is widened)."""

    def __init__(self, lo: float, hi: float, width: int = 900, height: int = 480) -> None:
        from PIL import Image, ImageDraw, ImageFont

        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        pad = 0.05 * (hi - lo)
        self.lo, self.hi = lo - pad, hi + pad
        self.left, right, self.top, bottom = _MARGINS
        self.pw, self.ph = width - self.left - right, height - self.top - bottom
        self.img = Image.new("RGB", (width, height), "white")
        self.draw = ImageDraw.Draw(self.img)
        self.font = ImageFont.load_default()
        self.draw.rectangle([self.left, self.top, self.left + self.pw, self.top + self.ph], outline="black")

    def y(self, v: float) -> float:
        return self.top + self.ph * (self.hi - v) / (self.hi - self.lo)

    def y_ticks(self, label: str, fmt: str = "{:.4g}") -> None:
        """About six "nice" horizontal grid lines with labels, and the axis label above the frame."""
        step = _nice_step(self.hi - self.lo)
        t = math.ceil(self.lo / step) * step
        while t <= self.hi + 1e-12:
            y = self.y(t)
            self.draw.line([self.left, y, self.left + self.pw, y], fill=(225, 225, 225))
            self.draw.line([self.left - 5, y, self.left, y], fill="black")
            self.draw.text((self.left - 8, y), fmt.format(t), fill="black", font=self.font, anchor="rm")
            t += step
        self.draw.text((8, self.top - 12), label, fill="black", font=self.font, anchor="lm")

    def x_tick(self, x: float, label: str | None) -> None:
        bottom = self.top + self.ph
        self.draw.line([x, bottom, x, bottom + 4], fill="black")
        if label is not None:
            self.draw.text((x, bottom + 8), label, fill="black", font=self.font, anchor="mt")

    def titles(self, title: str, xlabel: str) -> None:
        mid = self.left + self.pw / 2
        self.draw.text((mid, self.top + self.ph + 28), xlabel, fill="black", font=self.font, anchor="mt")
        self.draw.text((mid, 14), title, fill="black", font=self.font, anchor="mt")

    def series(self, points: Sequence[tuple[float, float]], color, label: str, slot: int, slot_width: int) -> None:
        """A polyline with dots at (pixel x, data y) and its legend entry in legend slot ``slot``."""
        pts = [(x, self.y(v)) for x, v in points]
        if len(pts) > 1:
            self.draw.line(pts, fill=color, width=2)
        for x, y in pts:
            self.draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        lx, ly = self.left + 10 + slot_width * slot, self.top + self.ph + 52
        self.draw.line([lx, ly, lx + 24, ly], fill=color, width=3)
        self.draw.text((lx + 30, ly), label, fill="black", font=self.font, anchor="lm")

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            self.img.save(tmp, format="PNG")


def plot_curves(path: str | os.PathLike, xs: Sequence[float], series: Mapping[str, Sequence[float | None]], *,
                title: str = "", xlabel: str = "", ylabel: str = "", width: int = 900, height: int = 480) -> None:
    """Line plot of several series over the same x values (None / non-finite points are skipped) -> PNG at
    ``path``. x positions are spaced by value (linear axis)."""
    if not xs:
        raise ValueError("plot_curves: no x values")
    ys = [float(v) for vals in series.values() for v in vals if _finite(v)]
    ax = _Axes(*((min(ys), max(ys)) if ys else (0.0, 1.0)), width=width, height=height)
    x0, x1 = min(xs), max(xs)
    if x1 - x0 < 1e-12:
        x0, x1 = x0 - 0.5, x1 + 0.5

    def xpos(x: float) -> float:
        return ax.left + 10 + (ax.pw - 20) * (x - x0) / (x1 - x0)

    ax.y_ticks(ylabel)
    for x in xs:
        ax.x_tick(xpos(x), f"{x:g}")
    ax.titles(title, xlabel)
    for k, (label, vals) in enumerate(series.items()):
        pts = [(xpos(x), float(v)) for x, v in zip(xs, vals) if _finite(v)]
        ax.series(pts, PALETTE[k % len(PALETTE)], label, k, 220)
    ax.save(path)


def plot_layer_mse(path: str | os.PathLike, layers: Sequence[str], train: Sequence[float],
                   heldout: Sequence[float | None] | None = None, best: str | None = None,
                   title: str = "stitching MSE per layer") -> None:
    """log10 MSE per layer (train blue, held-out orange, best layer ringed) as a PNG."""
    series = [("train", train)]
    if heldout is not None and any(v is not None for v in heldout):
        series.append(("held-out", heldout))
    logs = [math.log10(v) for _, vals in series for v in vals if _positive(v)]
    ax = _Axes(*((min(logs), max(logs)) if logs else (0.0, 1.0)))
    n = len(layers)

    def xpos(i: int) -> float:
        return ax.left + (ax.pw * (i + 0.5) / n)

    ax.y_ticks("log10 MSE", "{:g}")
    # x ticks: layer labels (trailing number; with several families, its first letter too)
    every = max(1, math.ceil(n / 30))
    families = list(dict.fromkeys(re.sub(r"_?\d+$", "", name) for name in layers))
    for i, name in enumerate(layers):
        m = re.search(r"(\d+)$", name)
        label = (m.group(1) if m else name) if len(families) == 1 else (name[0] + m.group(1) if m else name)
        ax.x_tick(xpos(i), label if i % every == 0 else None)
    legend = f"{families[0]}_k" if len(families) == 1 else ", ".join(f"{f[0]}k = {f}_k" for f in families)
    ax.titles(title, f"layer k ({legend})")
    for k, (label, vals) in enumerate(series):
        pts = [(xpos(i), math.log10(v)) for i, v in enumerate(vals) if _positive(v)]
        ax.series(pts, PALETTE[k], label, k, 110)
    if best is not None and best in layers:
        i = list(layers).index(best)
        v = series[-1][1][i]
        if _positive(v):
            x, y = xpos(i), ax.y(math.log10(v))
            ax.draw.ellipse([x - 8, y - 8, x + 8, y + 8], outline=PALETTE[3], width=2)
            ax.draw.text((ax.left + 250, ax.top + ax.ph + 52), f"best: {best}", fill=PALETTE[3], font=ax.font,
                         anchor="lm")
    ax.save(path)
