"""The micro world: seeded scenes of 1-3 coloured primitives on a textured ground under a sky, their captions, the
orbit cameras that film them, and their renders.

Conventions (stated once for ``training.micro``):

* World frame: **z up**, the ground is the plane z = 0, objects stand on it inside a disc of radius
  :data:`PLACEMENT_RADIUS` around the origin. Lengths are in world units (a large object is about 1.1 units wide).
* A scene is a :class:`SceneSpec` (pure data: objects, ground, sky, light; JSON-able), made by :func:`sample_scene`
  from ``(split, index, seed)`` alone, so every scene can be rebuilt anywhere. :func:`scene_gaussians` turns it
  into a :class:`vist3a.Gaussians` (surface-sampled flat discs, SH degree 0, Lambertian shading baked into the
  colour), with the sky as a dome of Gaussians so every pixel of every view has a finite depth.
* Cameras (:func:`orbit_cameras`): OpenCV pinholes on a horizontal circle around the point (0, 0, 0.3) at a
  constant distance, looking at it ("The camera rotates around the scene, maintaining constant distance", the
  published prompt template's motion): start azimuth uniform, elevation, radius and the swept angle jittered per
  scene, counter-clockwise seen from above. :data:`CLIP_FRAMES` orbit frames form the clip; :data:`TARGET_VIEWS`
  extra views at random azimuths inside the swept arc (and jittered elevation) are novel views for evaluation.
* Captions (:func:`caption`): a small grammar. Spatial words refer to the FIRST frame's view:
  "a small red cube to the left of a large blue sphere on grass under a blue sky"; three objects are listed left to
  right ("a red cube, a green cone and a blue torus from left to right ...").
* Held-out combinations: :data:`HELDOUT_COMBOS` (colour, shape) pairs never appear in the ``train`` and ``test``
  splits; every scene of the ``novel`` split holds at least one (part 2's generalisation test).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from vist3a import Cameras, Gaussians
from vist3a.cameras import look_at
from vist3a.rotations import matrix_to_quat
from vist3a.sh import rgb_to_sh_dc

__all__ = [
    "CLIP_FRAMES",
    "COLOURS",
    "GROUNDS",
    "HELDOUT_COMBOS",
    "MODEL_SIZE",
    "SHAPES",
    "SIZES",
    "SKIES",
    "SPLITS",
    "TARGET_VIEWS",
    "VIDEO_SIZE",
    "ObjectSpec",
    "SceneSpec",
    "caption",
    "orbit_cameras",
    "render_scene",
    "sample_scene",
    "scene_gaussians",
    "vocabulary",
]

SHAPES = ("sphere", "cube", "cone", "cylinder", "torus")
#: linear RGB in [0, 1] of the named object colours
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.09),
    "orange": (0.97, 0.50, 0.06),
    "yellow": (0.96, 0.86, 0.12),
    "green": (0.12, 0.68, 0.18),
    "blue": (0.10, 0.28, 0.92),
    "purple": (0.56, 0.18, 0.78),
    "white": (0.95, 0.95, 0.95),
    "black": (0.07, 0.07, 0.08),
}
#: half-extent (world units) of an object of each size
SIZES: dict[str, float] = {"small": 0.3, "large": 0.55}
#: ground name -> (two checker tones)
GROUNDS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "grass": ((0.34, 0.58, 0.22), (0.25, 0.46, 0.16)),
    "sand": ((0.86, 0.76, 0.55), (0.74, 0.63, 0.43)),
    "stone": ((0.58, 0.58, 0.60), (0.42, 0.42, 0.45)),
    "snow": ((0.93, 0.94, 0.97), (0.80, 0.83, 0.90)),
}
#: sky name -> (colour at the horizon, colour high up)
SKIES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "blue": ((0.78, 0.87, 0.97), (0.30, 0.52, 0.90)),
    "orange": ((0.99, 0.78, 0.50), (0.85, 0.40, 0.22)),
    "grey": ((0.80, 0.80, 0.82), (0.55, 0.56, 0.60)),
    "night": ((0.20, 0.22, 0.38), (0.03, 0.04, 0.12)),
}
#: (colour, shape) pairs kept out of the train and test splits (each colour and shape still appears otherwise)
HELDOUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("red", "torus"), ("blue", "cone"), ("green", "cube"), ("yellow", "cylinder"), ("purple", "sphere"))
SPLITS = ("train", "test", "novel")

VIDEO_SIZE = 64          # clip frames (the video VAE's input), square
MODEL_SIZE = 56          # the 3D model's frames: 64 / 16 == 56 / 14 == 4 tokens per side
CLIP_FRAMES = 9          # 4k + 1 (Wan VAE: 3 latent frames)
TARGET_VIEWS = 4         # novel views per scene
FOV_DEG = 55.0           # horizontal = vertical field of view
LOOK_AT = (0.0, 0.0, 0.3)
PLACEMENT_RADIUS = 0.85
GROUND_RADIUS = 9.0
DOME_RADIUS = 9.5
LIGHT_AMBIENT = 0.38


# ============================================================================================ scene specs
@dataclass
class ObjectSpec:
    shape: str
    colour: str
    size: str
    x: float
    y: float
    yaw: float  # radians about z

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass
class SceneSpec:
    split: str
    index: int
    seed: int
    objects: list[ObjectSpec]
    ground: str
    sky: str
    light_azimuth: float
    azimuth: float          # start azimuth of the orbit (radians)
    sweep: float            # swept angle over the clip (radians, counter-clockwise seen from above)
    elevation: float        # radians above the horizon
    radius: float           # camera distance to LOOK_AT
    target_azimuths: list[float] = field(default_factory=list)
    target_elevations: list[float] = field(default_factory=list)

    @property
    def caption(self) -> str:
        return caption(self)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SceneSpec:
        data = json.loads(text)
        data["objects"] = [ObjectSpec(**o) for o in data["objects"]]
        return cls(**data)


def _rng(split: str, index: int, seed: int) -> random.Random:
    if split not in SPLITS:
        raise ValueError(f"micro world: split must be one of {SPLITS}, got {split!r}")
    return random.Random(f"vist3a-micro:{seed}:{split}:{index}")  # str seeds hash deterministically (sha512)


def _bounding_radius(obj: ObjectSpec) -> float:
    return SIZES[obj.size] * (1.45 if obj.shape == "cube" else 1.05)


def sample_scene(split: str, index: int, seed: int = 0) -> SceneSpec:
    """Scene ``index`` of ``split`` ("train", "test" or "novel") for world ``seed``: deterministic in these three.

    1-3 objects (30 / 40 / 30 %) with distinct (colour, shape) pairs, placed without overlap and far enough apart in
    the first frame's view that the caption's spatial words are unambiguous; ``train`` / ``test`` never use
    :data:`HELDOUT_COMBOS`, ``novel`` always uses at least one.
    """
    rng = _rng(split, index, seed)
    heldout = set(HELDOUT_COMBOS)
    azimuth = rng.uniform(0, 2 * math.pi)
    elevation = math.radians(rng.uniform(15.0, 28.0))
    radius = rng.uniform(2.7, 3.1)
    sweep = math.radians(rng.uniform(100.0, 140.0))
    n = rng.choices((1, 2, 3), weights=(3, 4, 3))[0]
    for _attempt in range(1000):
        combos: list[tuple[str, str]] = []
        while len(combos) < n:
            if split == "novel" and not combos:
                c = rng.choice(HELDOUT_COMBOS)
            else:
                c = (rng.choice(list(COLOURS)), rng.choice(SHAPES))
                if split != "novel" and c in heldout:
                    continue
            if c not in combos:
                combos.append(c)
        objs = []
        for colour, shape in combos:
            size = rng.choice(list(SIZES))
            objs.append(ObjectSpec(shape, colour, size, 0.0, 0.0, rng.uniform(0, 2 * math.pi)))
        if _place(objs, rng, azimuth):
            break
    else:  # pragma: no cover - placement succeeds within a few tries for these sizes
        raise RuntimeError(f"micro world: could not place scene {split}/{index}")
    rng.shuffle(objs)
    t_az = [azimuth + rng.uniform(0.08, 0.92) * sweep for _ in range(TARGET_VIEWS)]
    t_el = [min(max(elevation + math.radians(rng.uniform(-6.0, 6.0)), math.radians(10.0)), math.radians(33.0))
            for _ in range(TARGET_VIEWS)]
    return SceneSpec(split, index, seed, objs, rng.choice(list(GROUNDS)), rng.choice(list(SKIES)),
                     rng.uniform(0, 2 * math.pi), azimuth, sweep, elevation, radius, t_az, t_el)


def _view_axes(azimuth: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """Ground-plane unit vectors (right, forward) of a camera at ``azimuth`` looking at the origin."""
    fwd = (-math.cos(azimuth), -math.sin(azimuth))
    right = (fwd[1], -fwd[0])  # z up: right = forward x up
    return right, fwd


def _place(objs: list[ObjectSpec], rng: random.Random, azimuth: float) -> bool:
    right, fwd = _view_axes(azimuth)
    for _ in range(200):
        for o in objs:
            r = PLACEMENT_RADIUS * math.sqrt(rng.random()) * (0.0 if len(objs) == 1 and rng.random() < 0.5 else 1.0)
            a = rng.uniform(0, 2 * math.pi)
            o.x, o.y = r * math.cos(a), r * math.sin(a)
        ok = all(math.hypot(a.x - b.x, a.y - b.y) > _bounding_radius(a) + _bounding_radius(b) + 0.12
                 for i, a in enumerate(objs) for b in objs[i + 1:])
        if ok and len(objs) >= 2:
            xs = sorted(o.x * right[0] + o.y * right[1] for o in objs)
            if len(objs) == 3:
                ok = min(b - a for a, b in itertools.pairwise(xs)) > 0.35
            else:
                dx = abs(xs[1] - xs[0])
                dz = abs((objs[0].x - objs[1].x) * fwd[0] + (objs[0].y - objs[1].y) * fwd[1])
                ok = max(dx, dz) > 0.5 and abs(dx - dz) > 0.2
        if ok:
            return True
    return False


# ============================================================================================ captions
def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def relation(a: ObjectSpec, b: ObjectSpec, azimuth: float) -> str:
    """Where ``a`` is relative to ``b`` in the first frame's view: "to the left of", "to the right of",
    "in front of" or "behind" (the dominant axis wins)."""
    right, fwd = _view_axes(azimuth)
    dx = (a.x - b.x) * right[0] + (a.y - b.y) * right[1]
    dz = (a.x - b.x) * fwd[0] + (a.y - b.y) * fwd[1]
    if abs(dx) >= abs(dz):
        return "to the left of" if dx < 0 else "to the right of"
    return "in front of" if dz < 0 else "behind"


def caption(spec: SceneSpec) -> str:
    """The scene's caption (grammar in the module docstring)."""
    objs = spec.objects
    if len(objs) == 1:
        head = _article(objs[0].phrase)
    elif len(objs) == 2:
        head = f"{_article(objs[0].phrase)} {relation(objs[0], objs[1], spec.azimuth)} {_article(objs[1].phrase)}"
    else:
        right, _ = _view_axes(spec.azimuth)
        ordered = sorted(objs, key=lambda o: o.x * right[0] + o.y * right[1])
        names = [_article(o.phrase) for o in ordered]
        head = f"{names[0]}, {names[1]} and {names[2]} from left to right"
    return f"{head} on {spec.ground} under {_article(spec.sky)} sky"


def vocabulary() -> list[str]:
    """Every word a caption of the micro world can contain, sorted."""
    words = set(SHAPES) | set(COLOURS) | set(SIZES) | set(GROUNDS) | set(SKIES)
    words |= {"a", "an", "to", "the", "left", "right", "of", "in", "front", "behind", "and", "from", "on", "under",
              "sky"}
    return sorted(words)


# ============================================================================================ geometry
def _tangent_frame_quats(normals: Tensor) -> Tensor:
    """wxyz quaternions (N, 4) of rotations whose local z axis is ``normals`` (N, 3) (unit)."""
    helper = torch.where(normals[:, 2:3].abs() < 0.9, torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0]))
    t1 = torch.nn.functional.normalize(torch.linalg.cross(helper, normals), dim=-1)
    t2 = torch.linalg.cross(normals, t1)
    return matrix_to_quat(torch.stack([t1, t2, normals], dim=-1))


def _shape_surface(shape: str, n: int, g: torch.Generator) -> tuple[Tensor, Tensor, float]:
    """``n`` area-uniform points (n, 3) on the unit-size shape (half-extent 1, resting on z = -1), their outward
    normals (n, 3), and the surface area."""
    u = lambda *s: torch.rand(*s, generator=g)
    if shape == "sphere":
        p = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
        return p, p.clone(), 4 * math.pi
    if shape == "cube":
        face = torch.randint(0, 6, (n,), generator=g)
        ab = u(n, 2) * 2 - 1
        axis, sign = face // 2, (face % 2).float() * 2 - 1
        p = torch.zeros(n, 3)
        nrm = torch.zeros(n, 3)
        for k in range(3):
            m = axis == k
            others = [j for j in range(3) if j != k]
            p[m, k] = sign[m]
            p[m, others[0]] = ab[m, 0]
            p[m, others[1]] = ab[m, 1]
            nrm[m, k] = sign[m]
        return p, nrm, 24.0
    if shape == "cylinder":  # radius 0.8, height 2
        r, side_area, cap_area = 0.8, 2 * math.pi * 0.8 * 2, math.pi * 0.64
        total = side_area + 2 * cap_area
        which = u(n)
        ang = u(n) * 2 * math.pi
        side = which < side_area / total
        z = torch.where(side, u(n) * 2 - 1, torch.where(which < (side_area + cap_area) / total, 1.0, -1.0))
        rad = torch.where(side, torch.full((n,), r), r * u(n).sqrt())
        p = torch.stack([rad * ang.cos(), rad * ang.sin(), z], -1)
        nrm = torch.where(side[:, None], torch.stack([ang.cos(), ang.sin(), torch.zeros(n)], -1),
                          torch.stack([torch.zeros(n), torch.zeros(n), z.sign()], -1))
        return p, nrm, total
    if shape == "cone":  # base radius 0.9 at z = -1, apex at z = 1
        r, h = 0.9, 2.0
        slant = math.hypot(r, h)
        side_area, base_area = math.pi * r * slant, math.pi * r * r
        total = side_area + base_area
        side = u(n) < side_area / total
        ang = u(n) * 2 * math.pi
        t = u(n).sqrt()  # fraction of the way from the apex down (area-uniform)
        rad = torch.where(side, r * t, r * u(n).sqrt())
        z = torch.where(side, 1 - h * t, torch.full((n,), -1.0))
        p = torch.stack([rad * ang.cos(), rad * ang.sin(), z], -1)
        side_n = torch.nn.functional.normalize(torch.stack([ang.cos() * h, ang.sin() * h, torch.full((n,), r)], -1),
                                               dim=-1)
        nrm = torch.where(side[:, None], side_n, torch.tensor([0.0, 0.0, -1.0]).expand(n, 3))
        return p, nrm, total
    if shape == "torus":  # lying flat: major radius 0.72, minor 0.28, scaled to half-extent 1 horizontally
        big, small = 0.72, 0.28
        pts = []
        need = n
        while need > 0:  # rejection sampling for area-uniform points: density ~ (big + small cos v)
            m = need * 2 + 16
            a, v, acc = u(m) * 2 * math.pi, u(m) * 2 * math.pi, u(m)
            keep = acc < (big + small * v.cos()) / (big + small)
            pts.append(torch.stack([a[keep], v[keep]], -1))
            need -= int(keep.sum())
        av = torch.cat(pts)[:n]
        a, v = av[:, 0], av[:, 1]
        nrm = torch.stack([v.cos() * a.cos(), v.cos() * a.sin(), v.sin()], -1)
        p = torch.stack([(big + small * v.cos()) * a.cos(), (big + small * v.cos()) * a.sin(), small * v.sin()], -1)
        p = p / (big + small)
        p[:, 2] = p[:, 2] - 1 + small / (big + small)  # rest on z = -1
        return p, nrm, 4 * math.pi ** 2 * big * small / (big + small) ** 2
    raise ValueError(f"micro world: unknown shape {shape!r}; shapes are {SHAPES}")


def _light_dir(spec: SceneSpec) -> Tensor:
    el = math.radians(55.0)
    return torch.tensor([math.cos(el) * math.cos(spec.light_azimuth), math.cos(el) * math.sin(spec.light_azimuth),
                         math.sin(el)])


def _shade(base: Tensor, normals: Tensor, light: Tensor) -> Tensor:
    lam = (normals @ light).clamp_min(0.0)
    return (base * (LIGHT_AMBIENT + (1 - LIGHT_AMBIENT) * lam[:, None])).clamp(0.0, 1.0)


def _discs(points: Tensor, normals: Tensor, colours: Tensor, radius: Tensor | float, flat: float = 0.15
           ) -> Gaussians:
    n = points.shape[0]
    rad = torch.as_tensor(radius, dtype=torch.float32).expand(n)
    scales = torch.stack([rad, rad, rad * flat], -1)
    return Gaussians(points.float(), scales.float(), _tangent_frame_quats(normals.float()),
                     torch.full((n,), 0.98), rgb_to_sh_dc(colours.float())[:, None, :])


def _object_gaussians(obj: ObjectSpec, light: Tensor, g: torch.Generator, density: float) -> Gaussians:
    half = SIZES[obj.size]
    p, nrm, area = _shape_surface(obj.shape, 1, g)
    n = max(200, int(area * half * half * density))
    p, nrm, _ = _shape_surface(obj.shape, n, g)
    c, s = math.cos(obj.yaw), math.sin(obj.yaw)
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    p = (p * half) @ rot.T + torch.tensor([obj.x, obj.y, half])
    nrm = nrm @ rot.T
    base = torch.tensor(COLOURS[obj.colour]).expand(n, 3)
    jitter = 1 + 0.04 * (torch.rand(n, 1, generator=g) * 2 - 1)
    spacing = math.sqrt(area * half * half / n)
    return _discs(p, nrm, (_shade(base, nrm, light) * jitter).clamp(0, 1), 0.65 * spacing)


def _ground_gaussians(spec: SceneSpec, light: Tensor, g: torch.Generator) -> Gaussians:
    """Rings of discs on z = 0 out to GROUND_RADIUS, spaced finer near the centre; a checker of 0.5-unit squares."""
    rings, r = [], 0.02
    while r < GROUND_RADIUS:
        dr = 0.05 + 0.05 * r
        count = max(6, int(2 * math.pi * r / dr))
        ang = (torch.arange(count) + torch.rand((), generator=g)) * (2 * math.pi / count)
        rr = r + (torch.rand(count, generator=g) - 0.5) * 0.5 * dr
        rings.append((torch.stack([rr * ang.cos(), rr * ang.sin(), torch.zeros(count)], -1),
                      torch.full((count,), 0.6 * dr)))
        r += dr
    p = torch.cat([x for x, _ in rings])
    rad = torch.cat([s for _, s in rings])
    a, b = (torch.tensor(t) for t in GROUNDS[spec.ground])
    checker = ((torch.floor(p[:, 0] / 0.5) + torch.floor(p[:, 1] / 0.5)) % 2)[:, None]
    base = a * (1 - checker) + b * checker
    base = base * (1 + 0.05 * (torch.rand(p.shape[0], 1, generator=g) * 2 - 1))
    nrm = torch.tensor([0.0, 0.0, 1.0]).expand_as(p)
    return _discs(p, nrm, _shade(base.clamp(0, 1), nrm, light), rad, flat=0.1)


def _sky_gaussians(spec: SceneSpec, g: torch.Generator) -> Gaussians:
    """A band of inward-facing discs on a dome of DOME_RADIUS from 3 degrees below to 20 degrees above the horizon,
    the colour blending from the horizon colour to the high colour."""
    horizon, high = (torch.tensor(t) for t in SKIES[spec.sky])
    els, step = [], 0.32 / DOME_RADIUS
    el = math.radians(-3.0)
    pts, cols = [], []
    while el < math.radians(20.0):
        count = int(2 * math.pi * math.cos(el) / step)
        az = (torch.arange(count) + torch.rand((), generator=g)) * (2 * math.pi / count)
        ring = torch.stack([math.cos(el) * az.cos(), math.cos(el) * az.sin(), torch.full((count,), math.sin(el))], -1)
        t = min(max(el / math.radians(20.0), 0.0), 1.0)
        pts.append(ring * DOME_RADIUS)
        cols.append((horizon * (1 - t) + high * t).expand(count, 3))
        els.append(el)
        el += step
    p = torch.cat(pts)
    return _discs(p, -torch.nn.functional.normalize(p, dim=-1), torch.cat(cols), 0.6 * step * DOME_RADIUS)


def scene_gaussians(spec: SceneSpec, density: float = 400.0) -> Gaussians:
    """The scene as Gaussians (SH degree 0; shading baked in): objects with about ``density`` discs per unit
    area, the ground, the sky dome. Deterministic in ``spec``."""
    g = torch.Generator().manual_seed(int(_rng(spec.split, spec.index, spec.seed).getrandbits(62)))
    light = _light_dir(spec)
    parts = [_object_gaussians(o, light, g, density) for o in spec.objects]
    parts += [_ground_gaussians(spec, light, g), _sky_gaussians(spec, g)]
    return Gaussians.cat(parts)


# ============================================================================================ cameras / renders
def _cameras(azimuths: list[float], elevations: list[float], radius: float, size: int) -> Cameras:
    az = torch.tensor(azimuths, dtype=torch.float64)
    el = torch.tensor(elevations, dtype=torch.float64)
    target = torch.tensor(LOOK_AT, dtype=torch.float64)
    eye = target + radius * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], -1)
    c2w = look_at(eye, target.expand_as(eye), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    f = (size / 2.0) / math.tan(math.radians(FOV_DEG) / 2)
    k = torch.tensor([[f, 0, size / 2.0], [0, f, size / 2.0], [0, 0, 1]], dtype=torch.float64)
    return Cameras(c2w.float(), k.float().expand(len(azimuths), 3, 3).contiguous(), size, size)


def orbit_cameras(spec: SceneSpec, size: int = VIDEO_SIZE, frames: int = CLIP_FRAMES) -> Cameras:
    """The clip's ``frames`` cameras (module docstring), ``size`` x ``size`` pixels."""
    az = [spec.azimuth + spec.sweep * i / max(frames - 1, 1) for i in range(frames)]
    return _cameras(az, [spec.elevation] * frames, spec.radius, size)


def target_cameras(spec: SceneSpec, size: int = VIDEO_SIZE) -> Cameras:
    """The scene's :data:`TARGET_VIEWS` novel-view cameras (inside the clip's arc)."""
    return _cameras(spec.target_azimuths, spec.target_elevations, spec.radius, size)


def render_scene(spec: SceneSpec, gaussians: Gaussians | None = None, *, size: int = VIDEO_SIZE,
                 depth_size: int = MODEL_SIZE) -> dict[str, Tensor]:
    """Render the clip and the target views.

    Returns ``{"frames": (F + T, size, size, 3) uint8, "depth": (F + T, depth_size, depth_size) float32,
    "c2w": (F + T, 4, 4), "K": (3, 3) pixel intrinsics at ``size``}``: the F = CLIP_FRAMES orbit frames first,
    then the T = TARGET_VIEWS novel views; depth is camera-space z (expected depth), area-resampled to ``depth_size`` (the 3D model's size).
    """
    from vist3a.render import render

    gs = gaussians if gaussians is not None else scene_gaussians(spec)
    cams = _cat_cameras(orbit_cameras(spec, size), target_cameras(spec, size))
    bg = torch.tensor(SKIES[spec.sky][0])
    with torch.no_grad():
        out = render(gs, cams, background=bg, backend="torch")
    frames = (out.rgb.clamp(0, 1) * 255).round().to(torch.uint8)
    # depth at the 3D model's size: area-resampled from the full-size render (one render per view)
    depth = torch.nn.functional.interpolate(out.depth.permute(0, 3, 1, 2), size=(depth_size, depth_size),
                                            mode="area")[:, 0]
    return {"frames": frames, "depth": depth, "c2w": cams.c2w, "K": cams.K[0]}


def _cat_cameras(a: Cameras, b: Cameras) -> Cameras:
    return Cameras(torch.cat([a.c2w, b.c2w]), torch.cat([a.K, b.K]), a.width, a.height)
