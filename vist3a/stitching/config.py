"""Stitching-layer configuration: the official VIST3A string grammar, parsed into a frozen dataclass.

Grammar (case-insensitive)::

    conv{1|2|3}d_k<kernel>_o<out_channels>[_s<stride>][_p<padding>][_d<dilation>]

Each value is an int or an ``x``-joined tuple whose length is 1 or the conv's dimensionality (``5x3x3`` for a
Conv3d); a single int is broadcast to every dimension. Optional parts may come in any order, each at most once;
defaults: stride 1, padding 0, dilation 1. The released VIST3A layer is ``conv3d_k5x3x3_o1024_s1x2x2_p2x1x1``:
Conv3d(16 -> 1024, kernel (5, 3, 3), stride (1, 2, 2), padding (2, 1, 1)) with replicate padding and bias.

Dimension order of every tuple is the conv's own: (T, H, W) for conv3d, (H, W) for conv2d, (L,) for conv1d.

Example::

    >>> cfg = StitchingConfig.parse("conv3d_k5x3x3_o1024_s1x2x2_p2x1x1")
    >>> cfg.kernel, cfg.stride, cfg.padding
    ((5, 3, 3), (1, 2, 2), (2, 1, 1))
    >>> cfg.output_size((13, 64, 64))
    (13, 32, 32)
    >>> cfg.to_string()
    'conv3d_k5x3x3_o1024_s1x2x2_p2x1x1'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import ClassVar

__all__ = ["RELEASED_CONFIG", "StitchingConfig", "parse_config"]

RELEASED_CONFIG = "conv3d_k5x3x3_o1024_s1x2x2_p2x1x1"
_EXPECTED = ("expected 'conv{1|2|3}d_k<kernel>_o<out>[_s<stride>][_p<pad>][_d<dilation>]' with each value an int "
             "or an 'x'-joined tuple, e.g. 'conv3d_k5x3x3_o1024_s1x2x2_p2x1x1'")
_HEAD = re.compile(r"^conv([123])d$")
_PART = re.compile(r"^([kospd])(.*)$")
_VALUE = re.compile(r"^\d+(x\d+)*$")
_NAMES = {"k": "kernel", "o": "out_channels", "s": "stride", "p": "padding", "d": "dilation"}


def _tuple(values: tuple[int, ...] | int, dims: int, what: str) -> tuple[int, ...]:
    if isinstance(values, int):
        values = (values,)
    values = tuple(int(v) for v in values)
    if len(values) == 1:
        values = values * dims
    if len(values) != dims:
        raise ValueError(f"stitching config: {what} has {len(values)} values but a conv{dims}d needs 1 or {dims}")
    return values


@dataclass(frozen=True)
class StitchingConfig:
    """A stitching conv: ``Conv{dims}d(in_channels, out_channels, kernel, stride, padding, dilation,
    padding_mode="replicate", bias=True)``. Tuples are in the conv's dimension order ((T, H, W) for 3D)."""

    dims: int
    kernel: tuple[int, ...]
    out_channels: int
    stride: tuple[int, ...] = field(default=())
    padding: tuple[int, ...] = field(default=())
    dilation: tuple[int, ...] = field(default=())
    in_channels: int = 16

    EXPECTED_FORM: ClassVar[str] = _EXPECTED

    def __post_init__(self) -> None:
        if self.dims not in (1, 2, 3):
            raise ValueError(f"stitching config: dims must be 1, 2 or 3, got {self.dims}")
        d = self.dims
        set_ = object.__setattr__
        set_(self, "kernel", _tuple(self.kernel, d, "kernel"))
        set_(self, "stride", _tuple(self.stride or 1, d, "stride"))
        set_(self, "padding", _tuple(self.padding if self.padding != () else 0, d, "padding"))
        set_(self, "dilation", _tuple(self.dilation or 1, d, "dilation"))
        for name in ("kernel", "stride", "dilation"):
            if any(v < 1 for v in getattr(self, name)):
                raise ValueError(f"stitching config: every {name} value must be >= 1, got {getattr(self, name)}")
        if any(v < 0 for v in self.padding):
            raise ValueError(f"stitching config: padding must be >= 0, got {self.padding}")
        if self.out_channels < 1 or self.in_channels < 1:
            raise ValueError(f"stitching config: channel counts must be >= 1, got in={self.in_channels} "
                             f"out={self.out_channels}")

    # ----------------------------------------------------------------------------------------------- parsing
    @classmethod
    def parse(cls, text: str | StitchingConfig, in_channels: int | None = None) -> StitchingConfig:
        """Parse ``conv3d_k5x3x3_o1024_s1x2x2_p2x1x1`` (case-insensitive). Raises ValueError naming the problem.

        ``in_channels`` defaults to 16 for a string; an existing config keeps its own unless one is given."""
        if isinstance(text, StitchingConfig):
            if in_channels is None or text.in_channels == in_channels:
                return text
            return replace(text, in_channels=in_channels)
        in_channels = 16 if in_channels is None else in_channels
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"stitching config: got {text!r}; {_EXPECTED}")
        parts = text.strip().lower().split("_")
        head = _HEAD.match(parts[0])
        if head is None:
            raise ValueError(f"stitching config {text!r}: must start with 'conv1d', 'conv2d' or 'conv3d', got "
                             f"{parts[0]!r}; {_EXPECTED}")
        dims = int(head.group(1))
        values: dict[str, tuple[int, ...]] = {}
        for part in parts[1:]:
            m = _PART.match(part)
            if m is None:
                raise ValueError(f"stitching config {text!r}: unknown part {part!r} (parts are k, o, s, p, d); "
                                 f"{_EXPECTED}")
            key, raw = m.groups()
            if key in values:
                raise ValueError(f"stitching config {text!r}: {_NAMES[key]} ({key!r}) given twice; {_EXPECTED}")
            if not _VALUE.match(raw):
                raise ValueError(f"stitching config {text!r}: {_NAMES[key]} value {raw!r} is not an int or an "
                                 f"'x'-joined tuple of ints; {_EXPECTED}")
            vals = tuple(int(v) for v in raw.split("x"))
            if key == "o" and len(vals) != 1:
                raise ValueError(f"stitching config {text!r}: out_channels must be a single int, got {raw!r}")
            if len(vals) not in (1, dims):
                raise ValueError(f"stitching config {text!r}: {_NAMES[key]} {raw!r} has {len(vals)} values; a "
                                 f"conv{dims}d needs 1 or {dims}; {_EXPECTED}")
            values[key] = vals
        for key in ("k", "o"):
            if key not in values:
                raise ValueError(f"stitching config {text!r}: missing {_NAMES[key]} ('_{key}<...>'); {_EXPECTED}")
        return cls(dims=dims, kernel=values["k"], out_channels=values["o"][0], stride=values.get("s", (1,)),
                   padding=values.get("p", (0,)), dilation=values.get("d", (1,)), in_channels=in_channels)

    def to_string(self) -> str:
        """Canonical string (round-trips through :meth:`parse`); default stride/padding/dilation are omitted and a
        tuple whose values are all equal is written as one int."""

        def fmt(v: tuple[int, ...]) -> str:
            return str(v[0]) if len(set(v)) == 1 else "x".join(str(i) for i in v)

        s = f"conv{self.dims}d_k{fmt(self.kernel)}_o{self.out_channels}"
        if any(v != 1 for v in self.stride):
            s += f"_s{fmt(self.stride)}"
        if any(v != 0 for v in self.padding):
            s += f"_p{fmt(self.padding)}"
        if any(v != 1 for v in self.dilation):
            s += f"_d{fmt(self.dilation)}"
        return s

    def __str__(self) -> str:
        return self.to_string()

    # ------------------------------------------------------------------------------------------- arithmetic
    @property
    def receptive(self) -> tuple[int, ...]:
        """Effective kernel extent per dimension: dilation*(kernel-1)+1."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    @property
    def fan_in(self) -> int:
        """in_channels * prod(kernel): the column count of the im2col matrix (720 for the released layer)."""
        return self.in_channels * math.prod(self.kernel)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels, *self.kernel)

    def output_size(self, input_size: tuple[int, ...]) -> tuple[int, ...]:
        """Conv output size for an input of spatial size ``input_size`` (the conv's dims, e.g. (T, H, W))."""
        input_size = _tuple(tuple(input_size), self.dims, "input size")
        out = tuple((n + 2 * p - r) // s + 1
                    for n, p, r, s in zip(input_size, self.padding, self.receptive, self.stride))
        if any(o < 1 for o in out):
            raise ValueError(f"stitching conv {self.to_string()}: input size {input_size} is too small "
                             f"(output would be {out})")
        return out

    def input_size_for(self, output_size: tuple[int, ...]) -> tuple[int, ...]:
        """The smallest input size giving ``output_size`` (inverse of :meth:`output_size`):
        (out-1)*stride + receptive - 2*padding."""
        output_size = _tuple(tuple(output_size), self.dims, "output size")
        inp = tuple((o - 1) * s + r - 2 * p
                    for o, s, r, p in zip(output_size, self.stride, self.receptive, self.padding))
        if any(i < 1 for i in inp) or any(o < 1 for o in output_size):
            raise ValueError(f"stitching conv {self.to_string()}: cannot produce output size {output_size}")
        return inp


def parse_config(text: str | StitchingConfig, in_channels: int | None = None) -> StitchingConfig:
    """Alias of :meth:`StitchingConfig.parse` (also accepts an existing config)."""
    return StitchingConfig.parse(text, in_channels=in_channels)
