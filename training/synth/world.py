"""The town: a grid of blocks lined with textured facades, street lamps and trees, and its ground.

Everything visible is a vertical primitive (a textured wall segment or a textured cylinder)
standing on a textured ground plane, which is exactly what a column raycaster draws fast. The
town is a pure function of its layout and seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.synth import textures


@dataclass(frozen=True)
class TownLayout:
    """Size of the town grid. Street centrelines lie at multiples of ``pitch`` in x and y."""

    blocks_x: int
    blocks_y: int
    block_m: float = 40.0
    street_m: float = 14.0  # facade to facade
    px_per_m: float = 8.0  # texture resolution
    franchise_share: float = 0.15  # facades that repeat elsewhere (perceptual aliasing)

    @property
    def pitch(self) -> float:
        return self.block_m + self.street_m

    @property
    def extent(self) -> tuple[float, float]:
        return self.blocks_x * self.pitch, self.blocks_y * self.pitch


@dataclass
class Primitives:
    """Vertical textured primitives, one row each. Segments have p0 -> p1; cylinders a centre.

    ``kind`` is 0 for a wall segment and 1 for a cylinder; ``a`` holds p0 (segments) or the centre
    (cylinders), ``b`` holds p1 (segments) or (radius, 0). Texture columns ``u0 .. u0 + tex_w`` of
    the atlas are stretched over the primitive; ``u0_snow`` is the texture used in winter.
    """

    kind: np.ndarray
    a: np.ndarray
    b: np.ndarray
    z0: np.ndarray
    z1: np.ndarray
    u0: np.ndarray
    u0_snow: np.ndarray
    tex_w: np.ndarray
    tex_h: np.ndarray

    @classmethod
    def empty(cls) -> Primitives:
        z = np.zeros(0)
        return cls(z.astype(np.int8), np.zeros((0, 2)), np.zeros((0, 2)), z, z, *(z.astype(np.int64),) * 4)

    @classmethod
    def concat(cls, parts: list[Primitives]) -> Primitives:
        names = cls.__dataclass_fields__
        return cls(**{n: np.concatenate([getattr(p, n) for p in parts]) for n in names})

    def select(self, mask: np.ndarray) -> Primitives:
        return Primitives(**{n: getattr(self, n)[mask] for n in self.__dataclass_fields__})

    def __len__(self) -> int:
        return len(self.kind)

    def centres(self) -> np.ndarray:
        """A point on each primitive (for culling by distance)."""
        return np.where((self.kind == 0)[:, None], (self.a + self.b) / 2, self.a)

    def half_extent(self) -> np.ndarray:
        return np.where(self.kind == 0, np.linalg.norm(self.b - self.a, axis=1) / 2, self.b[:, 0])


class Atlas:
    """All textures side by side in one RGBAE array, so the renderer samples them in one gather."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self._width = 0
        self.pixels = np.zeros((1, 1, textures.CHANNELS), np.uint8)

    def add(self, tex: np.ndarray) -> tuple[int, int, int]:
        """Store a texture; returns (first column, width, height) in atlas pixels."""
        u0 = self._width
        self._parts.append(tex)
        self._width += tex.shape[1]
        return u0, tex.shape[1], tex.shape[0]

    def freeze(self) -> None:
        height = max(p.shape[0] for p in self._parts)
        self.pixels = np.zeros((height, self._width, textures.CHANNELS), np.uint8)
        u = 0
        for p in self._parts:
            self.pixels[: p.shape[0], u : u + p.shape[1]] = p
            u += p.shape[1]
        self._parts = []


@dataclass
class Town:
    layout: TownLayout
    statics: Primitives
    atlas: Atlas
    ground: np.ndarray  # uint8 [Hg, Wg, 3] top-down albedo, row 0 at y = 0
    ground_snow: np.ndarray
    ground_glow: np.ndarray  # uint8 [Hg, Wg] light pools of street lamps (night)
    car_textures: list[tuple[int, int, int]]
    person_textures: list[tuple[int, int, int]]
    sun_azimuth: float


def _segment(p0, p1, z1, tex) -> dict:
    u0, w, h = tex
    return dict(kind=0, a=p0, b=p1, z0=0.0, z1=z1, u0=u0, u0_snow=u0, tex_w=w, tex_h=h)


def _cylinder(c, r, z0, z1, tex, tex_snow=None) -> dict:
    u0, w, h = tex
    return dict(kind=1, a=c, b=(r, 0.0), z0=z0, z1=z1, u0=u0, u0_snow=(tex_snow or tex)[0], tex_w=w, tex_h=h)


def _pack(rows: list[dict]) -> Primitives:
    if not rows:
        return Primitives.empty()
    col = {k: [r[k] for r in rows] for k in rows[0]}
    return Primitives(
        kind=np.asarray(col["kind"], np.int8),
        a=np.asarray(col["a"], np.float64).reshape(-1, 2),
        b=np.asarray(col["b"], np.float64).reshape(-1, 2),
        z0=np.asarray(col["z0"], np.float64),
        z1=np.asarray(col["z1"], np.float64),
        **{k: np.asarray(col[k], np.int64) for k in ("u0", "u0_snow", "tex_w", "tex_h")},
    )


def _block_edges(layout: TownLayout, i: int, j: int):
    """The four street-facing edges of block (i, j) as (p0, p1) with texture reading left to right
    for a viewer in the street (p0 -> p1 runs along (-n_y, n_x) for outward normal n)."""
    s = layout.street_m / 2
    x0, x1 = i * layout.pitch + s, (i + 1) * layout.pitch - s
    y0, y1 = j * layout.pitch + s, (j + 1) * layout.pitch - s
    return [
        ((x1, y0), (x0, y0)),  # south face, normal -y
        ((x1, y1), (x1, y0)),  # east face, normal +x
        ((x0, y1), (x1, y1)),  # north face, normal +y
        ((x0, y0), (x0, y1)),  # west face, normal -x
    ]


def build_town(layout: TownLayout, seed: int) -> Town:
    """Generate the town for ``seed``: facades (some repeated), lamps, trees and the ground."""
    rng = np.random.default_rng([seed, 1])
    ppm = layout.px_per_m
    atlas = Atlas()
    franchises = []
    for _ in range(4):
        w, h = rng.uniform(9, 14), rng.uniform(8, 16)
        franchises.append((w, h, atlas.add(textures.facade(rng, w, h, ppm))))
    rows: list[dict] = []
    for i in range(layout.blocks_x):
        for j in range(layout.blocks_y):
            for p0, p1 in _block_edges(layout, i, j):
                rows.extend(_facades_along(np.asarray(p0), np.asarray(p1), layout, franchises, atlas, rng))
    rows.extend(_street_furniture(layout, atlas, rng))
    cars = [atlas.add(textures.car(rng, 4.2, 1.5, ppm)) for _ in range(10)]
    people = [atlas.add(textures.person(rng, 1.9, 1.75, ppm)) for _ in range(10)]
    atlas.freeze()
    ground, ground_snow, glow = _ground(layout, [r for r in rows if r.get("lamp")], rng)
    for r in rows:
        r.pop("lamp", None)
    return Town(
        layout, _pack(rows), atlas, ground, ground_snow, glow, cars, people, rng.uniform(0, 2 * np.pi)
    )


def _facades_along(p0, p1, layout: TownLayout, franchises, atlas: Atlas, rng) -> list[dict]:
    length = float(np.linalg.norm(p1 - p0))
    direction = (p1 - p0) / length
    rows, s = [], 0.0
    while length - s > 4.0:
        if rng.random() < layout.franchise_share and length - s > 15.0:
            width, height, tex = franchises[rng.integers(len(franchises))]
        else:
            width = min(rng.uniform(7, 16), length - s)
            if length - s - width < 4.0:
                width = length - s
            height = rng.uniform(6, 24)
            tex = atlas.add(textures.facade(rng, width, height, layout.px_per_m))
        rows.append(_segment(p0 + s * direction, p0 + (s + width) * direction, height, tex))
        s += width
    return rows


def _street_furniture(layout: TownLayout, atlas: Atlas, rng) -> list[dict]:
    """Lamps every ~20 m and trees every ~11 m along both sidewalks of every street."""
    ppm = layout.px_per_m
    lamp_tex = atlas.add(textures.solid(rng, 0.8, 6.0, ppm, (0.25, 0.27, 0.3), glow_top_m=0.5))
    trunk_tex = atlas.add(textures.solid(rng, 1.3, 2.8, ppm, (0.35, 0.25, 0.18)))
    crowns = [
        (
            atlas.add(textures.canopy(rng, 12.0, 4.5, ppm, bare=False)),
            atlas.add(textures.canopy(rng, 12.0, 4.5, ppm, bare=True)),
        )
        for _ in range(6)
    ]
    width, height = layout.extent
    kerb = layout.street_m / 2 - 1.2
    rows = []
    for axis, n_lines, span in ((0, layout.blocks_y + 1, width), (1, layout.blocks_x + 1, height)):
        for k in range(n_lines):
            centre = k * layout.pitch
            for side in (-1.0, 1.0):
                for along in np.arange(rng.uniform(0, 10), span, 10.8):
                    if (
                        abs((along + layout.pitch / 2) % layout.pitch - layout.pitch / 2)
                        < layout.street_m / 2 + 3
                    ):
                        continue  # keep intersections clear
                    pos = (along, centre + side * kerb) if axis == 0 else (centre + side * kerb, along)
                    if round(along / 10.8) % 2 == 0:
                        rows.append(_cylinder(pos, 0.12, 0.0, 6.0, lamp_tex) | {"lamp": True})
                    elif rng.random() < 0.8:
                        r = rng.uniform(1.4, 2.0)
                        summer, winter = crowns[rng.integers(len(crowns))]
                        rows.append(_cylinder(pos, 0.2, 0.0, 2.8, trunk_tex))
                        rows.append(_cylinder(pos, r, 2.4, 2.4 + rng.uniform(3.5, 4.5), summer, winter))
    return rows


def _ground(layout: TownLayout, lamps: list[dict], rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-down ground albedo: asphalt, dashed centre lines, kerbs, paved sidewalks, courtyards."""
    ppm = layout.px_per_m
    width, height = layout.extent
    hg, wg = round(height * ppm), round(width * ppm)
    ys = (np.arange(hg) + 0.5) / ppm
    xs = (np.arange(wg) + 0.5) / ppm

    def to_street(v):  # distance to the nearest street centreline, and position along the pitch
        return np.abs((v + layout.pitch / 2) % layout.pitch - layout.pitch / 2)

    dy, dx = to_street(ys)[:, None], to_street(xs)[None, :]
    road_half = layout.street_m / 2 - 2.5
    in_road = (dx < road_half) | (dy < road_half)
    in_walk = ~in_road & ((dx < layout.street_m / 2) | (dy < layout.street_m / 2))
    grain = textures.smooth_noise(rng, (hg, wg), ppm)
    g = np.empty((hg, wg, 3), np.float32)
    g[:] = (0.32, 0.42, 0.22)  # courtyard grass
    g[in_road] = (0.3, 0.3, 0.31)
    g[in_walk] = (0.62, 0.6, 0.56)
    tiles = ((np.floor(xs * 2)[None, :] + np.floor(ys * 2)[:, None]) % 2 == 0) & in_walk
    g[tiles] *= 0.92
    dash_x = (xs % 6.0 < 3.0)[None, :] & (dy < 0.08) & (dx > road_half)
    dash_y = (ys % 6.0 < 3.0)[:, None] & (dx < 0.08) & (dy > road_half)
    g[dash_x | dash_y] = (0.9, 0.85, 0.55)
    kerb = in_walk & ((np.abs(dx - road_half) < 0.15) | (np.abs(dy - road_half) < 0.15))
    g[kerb] = (0.75, 0.75, 0.75)
    g *= (0.85 + 0.3 * grain)[..., None]
    snow = g.copy()
    snow_cover = (~in_road) | (textures.smooth_noise(rng, (hg, wg), ppm) > 0.7)
    snow[snow_cover] = (0.93, 0.94, 0.97)
    snow *= (0.95 + 0.1 * grain)[..., None]
    glow = np.zeros((hg, wg), np.float32)
    reach = round(10.0 * ppm)  # the light pool is negligible beyond 10 m
    for lamp in lamps:
        cx, cy = lamp["a"]
        r0, r1 = max(0, round(cy * ppm) - reach), min(hg, round(cy * ppm) + reach)
        c0, c1 = max(0, round(cx * ppm) - reach), min(wg, round(cx * ppm) + reach)
        r2 = (xs[None, c0:c1] - cx) ** 2 + (ys[r0:r1, None] - cy) ** 2
        np.maximum(glow[r0:r1, c0:c1], np.exp(-r2 / (2 * 3.5**2)), out=glow[r0:r1, c0:c1])
    return (
        np.clip(g * 255, 0, 255).astype(np.uint8),
        np.clip(snow * 255, 0, 255).astype(np.uint8),
        np.clip(glow * 255, 0, 255).astype(np.uint8),
    )
