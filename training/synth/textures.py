"""Procedural textures: building facades, tree canopies, poles, cars and people.

Textures are RGBAE uint8 images (E = emissive: lit windows and lamps that glow at night) in
which one pixel covers 1/px_per_m metres, so detail keeps its real size on screen. Each texture
is drawn from its own random generator, so a facade looks the same in every traverse and under
every condition; only the lighting applied by the renderer changes.
"""

from __future__ import annotations

import numpy as np

CHANNELS = 5  # R, G, B, alpha, emissive


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Periodic smooth noise in [0, 1]: white noise low-passed in the Fourier domain.

    Periodicity lets the sky's cloud layer wrap around 360 degrees of azimuth without a seam.
    """
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    gain = np.exp(-((fx**2 + fy**2) * (np.pi * scale_px) ** 2))
    field = np.fft.ifft2(np.fft.fft2(white) * gain).real
    field -= field.min()
    peak = field.max()
    return field / peak if peak > 0 else field


def _blank(h: int, w: int, rgb: np.ndarray) -> np.ndarray:
    tex = np.zeros((h, w, CHANNELS), np.float32)
    tex[..., :3] = rgb
    tex[..., 3] = 1.0
    return tex


def _to_uint8(tex: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(tex * 255.0), 0, 255).astype(np.uint8)


def _random_colour(rng: np.random.Generator, palette: list[tuple[float, float, float]]) -> np.ndarray:
    base = np.asarray(palette[rng.integers(len(palette))], np.float32)
    return np.clip(base + rng.normal(0.0, 0.04, 3), 0.0, 1.0).astype(np.float32)


WALL_PALETTE = [
    (0.62, 0.30, 0.24),  # brick
    (0.80, 0.72, 0.58),  # sandstone
    (0.55, 0.55, 0.55),  # concrete
    (0.90, 0.88, 0.82),  # white render
    (0.55, 0.66, 0.74),  # blue-grey
    (0.78, 0.62, 0.42),  # ochre
    (0.42, 0.50, 0.38),  # green
    (0.70, 0.45, 0.50),  # pink
]
SIGN_PALETTE = [(0.85, 0.1, 0.1), (0.1, 0.3, 0.8), (0.95, 0.8, 0.1), (0.1, 0.6, 0.3), (0.95, 0.5, 0.1)]


def facade(rng: np.random.Generator, width_m: float, height_m: float, ppm: float) -> np.ndarray:
    """A building front: wall colour and grain, floors of windows, a shop floor with a door and sign.

    Roughly half the windows are lit at night (emissive channel), chosen per window so the
    night pattern is as distinctive as the day one.
    """
    h, w = max(2, round(height_m * ppm)), max(2, round(width_m * ppm))
    wall = _random_colour(rng, WALL_PALETTE)
    tex = _blank(h, w, wall)
    grain = smooth_noise(rng, (h, w), 0.6 * ppm)[..., None]
    tex[..., :3] *= 0.85 + 0.3 * grain
    if rng.random() < 0.4:  # brick or panel courses
        course = max(1, round(rng.uniform(0.25, 1.0) * ppm))
        tex[::course, :, :3] *= 0.8

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice]:
        """Metres from the facade's top-left corner to a pixel slice."""
        return (
            slice(max(0, round(y0 * ppm)), max(0, round(y1 * ppm))),
            slice(max(0, round(x0 * ppm)), max(0, round(x1 * ppm))),
        )

    shop_m = rng.uniform(3.5, 4.5)
    floor_m = rng.uniform(2.8, 3.4)
    spacing = rng.uniform(2.2, 3.8)
    win_w = rng.uniform(0.8, min(1.8, spacing - 0.5))
    win_h = rng.uniform(1.1, min(2.0, floor_m - 0.7))
    glass = np.asarray([0.18, 0.24, 0.32], np.float32) + rng.normal(0, 0.03, 3).astype(np.float32)
    frame = np.asarray(rng.choice([0.95, 0.25, 0.6]), np.float32)
    n_cols = max(1, int((width_m - 0.6) // spacing))
    margin = (width_m - n_cols * spacing) / 2
    shutters = rng.random() < 0.3
    shutter_colour = _random_colour(rng, [(0.2, 0.4, 0.2), (0.5, 0.2, 0.15), (0.3, 0.3, 0.5)])
    top = height_m - shop_m
    n_floors = max(0, int(top // floor_m))
    for f in range(n_floors):
        y0 = top - (f + 1) * floor_m + (floor_m - win_h) / 2
        for c in range(n_cols):
            x0 = margin + c * spacing + (spacing - win_w) / 2
            outer = box(x0 - 0.1, y0 - 0.1, x0 + win_w + 0.1, y0 + win_h + 0.1)
            inner = box(x0, y0, x0 + win_w, y0 + win_h)
            tex[outer][..., :3] = frame
            tex[inner][..., :3] = glass
            if rng.random() < 0.5:
                tex[inner][..., 4] = rng.uniform(0.6, 1.0)
            if shutters:
                tex[box(x0 - 0.45, y0, x0 - 0.1, y0 + win_h)][..., :3] = shutter_colour
                tex[box(x0 + win_w + 0.1, y0, x0 + win_w + 0.45, y0 + win_h)][..., :3] = shutter_colour
    # Shop floor: a large window, a door and a sign with glyph-like marks.
    shop_top = height_m - shop_m
    door_x = rng.uniform(0.5, max(0.6, width_m - 1.7))
    tex[box(0.4, shop_top + 1.2, width_m - 0.4, height_m - 0.6)][..., :3] = glass * 1.2
    tex[box(0.4, shop_top + 1.2, width_m - 0.4, height_m - 0.6)][..., 4] = 0.45 * (rng.random() < 0.6)
    tex[box(door_x, height_m - 2.3, door_x + 1.1, height_m)][..., :3] = _random_colour(
        rng, [(0.3, 0.18, 0.1), (0.1, 0.1, 0.1), (0.5, 0.1, 0.1)]
    )
    tex[box(door_x, height_m - 2.3, door_x + 1.1, height_m)][..., 4] = 0.0
    sign_w = rng.uniform(0.4, 0.9) * width_m
    sign_x = rng.uniform(0.0, width_m - sign_w)
    sign = box(sign_x, shop_top + 0.2, sign_x + sign_w, shop_top + 1.0)
    sign_colour = _random_colour(rng, SIGN_PALETTE)
    tex[sign][..., :3] = sign_colour
    tex[sign][..., 4] = 0.9
    letter = 1.0 - sign_colour
    for gx in np.arange(sign_x + 0.2, sign_x + sign_w - 0.4, rng.uniform(0.35, 0.6)):
        gh = rng.uniform(0.25, 0.5)
        tex[box(gx, shop_top + 0.6 - gh / 2, gx + 0.25, shop_top + 0.6 + gh / 2)][..., :3] = letter
    tex[..., :3] *= 0.9 + 0.2 * smooth_noise(rng, (h, w), 2.0 * ppm)[..., None]  # weathering
    return _to_uint8(tex)


def canopy(rng: np.random.Generator, circumference_m: float, height_m: float, ppm: float, bare: bool):
    """Tree crown wrapped around a cylinder: leafy blobs in summer, sparse branches when bare."""
    h, w = max(2, round(height_m * ppm)), max(2, round(circumference_m * ppm))
    leaves = np.asarray([0.18, 0.42, 0.14], np.float32) + rng.normal(0, 0.04, 3).astype(np.float32)
    if bare:
        tex = _blank(h, w, np.asarray([0.32, 0.24, 0.18], np.float32))
        tex[..., 3] = smooth_noise(rng, (h, w), 0.15 * ppm) > 0.72
    else:
        tex = _blank(h, w, leaves)
        n = smooth_noise(rng, (h, w), 0.35 * ppm)
        tex[..., :3] *= (0.6 + 0.8 * n)[..., None]
        rows = np.linspace(-1.0, 1.0, h)[:, None]
        tex[..., 3] = (n + 0.45 * (1 - rows**2)) > 0.55  # denser in the middle of the crown
    return _to_uint8(tex)


def solid(
    rng: np.random.Generator,
    width_m: float,
    height_m: float,
    ppm: float,
    colour: tuple[float, float, float],
    glow_top_m: float = 0.0,
) -> np.ndarray:
    """A plain textured surface (poles, trunks); ``glow_top_m`` makes a lamp head at the top."""
    h, w = max(2, round(height_m * ppm)), max(2, round(width_m * ppm))
    tex = _blank(h, w, np.asarray(colour, np.float32))
    tex[..., :3] *= 0.85 + 0.3 * smooth_noise(rng, (h, w), 0.3 * ppm)[..., None]
    if glow_top_m > 0:
        lamp = slice(0, max(1, round(glow_top_m * ppm)))
        tex[lamp, :, :3] = (0.95, 0.92, 0.8)
        tex[lamp, :, 4] = 1.0
    return _to_uint8(tex)


def car(rng: np.random.Generator, length_m: float, height_m: float, ppm: float) -> np.ndarray:
    """Car body: paint, a window band, wheels, and glowing lights (lights on at dusk and night)."""
    body = _random_colour(
        rng, [(0.8, 0.1, 0.1), (0.1, 0.1, 0.12), (0.9, 0.9, 0.9), (0.2, 0.3, 0.6), (0.6, 0.6, 0.62)]
    )
    h, w = max(2, round(height_m * ppm)), max(2, round(length_m * ppm))
    tex = _blank(h, w, body)
    band = slice(round(0.08 * h), round(0.42 * h))
    tex[band, round(0.2 * w) : round(0.8 * w), :3] = (0.12, 0.15, 0.2)
    tex[round(0.8 * h) :, round(0.1 * w) : round(0.3 * w), :3] = 0.05
    tex[round(0.8 * h) :, round(0.7 * w) : round(0.9 * w), :3] = 0.05
    tex[round(0.5 * h) : round(0.65 * h), : max(1, round(0.06 * w)), 4] = 1.0
    tex[round(0.5 * h) : round(0.65 * h), -max(1, round(0.06 * w)) :, 4] = 1.0
    return _to_uint8(tex)


def person(rng: np.random.Generator, circumference_m: float, height_m: float, ppm: float) -> np.ndarray:
    """A pedestrian wrapped on a thin cylinder: head, shirt and trousers in random colours."""
    h, w = max(2, round(height_m * ppm)), max(2, round(circumference_m * ppm))
    tex = _blank(h, w, _random_colour(rng, [(0.15, 0.15, 0.2), (0.3, 0.25, 0.2), (0.2, 0.25, 0.45)]))
    tex[: round(0.15 * h), :, :3] = _random_colour(rng, [(0.85, 0.65, 0.5), (0.45, 0.3, 0.2)])
    tex[round(0.15 * h) : round(0.55 * h), :, :3] = _random_colour(rng, SIGN_PALETTE + WALL_PALETTE)
    return _to_uint8(tex)
