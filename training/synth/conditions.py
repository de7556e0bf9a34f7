"""Appearance conditions of a traverse: light, sky, weather, season, traffic and sensor quality.

Each condition is a small set of numbers the renderer applies; nothing here draws pixels. The
values are chosen so that the same place looks clearly different across conditions (a test
measures it) while its structure (facades, windows, signs) stays recognisable, which is the
situation long-term VPR datasets such as MSLS capture.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from training.errors import UserError

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Condition:
    name: str
    light: RGB  # colour of the ambient + sun light multiplying albedo
    sun_strength: float  # directional (Lambert) share of the light, 0 = overcast
    emissive: float  # how bright lit windows and street lamps glow (night > dusk > day)
    sky_horizon: RGB
    sky_zenith: RGB
    cloud_cover: float  # 0..1, how much of the sky the cloud layer covers
    fog_distance_m: float  # e-folding distance of the fog; inf = clear air
    fog_colour: RGB
    snow: bool  # snow on the ground, bare trees
    occluders_per_100m: float  # moving cars and pedestrians near the route
    noise_sigma: float  # Gaussian sensor noise, in 8-bit levels
    blur_sigma_px: float  # optical/motion blur
    exposure: float  # global gain before clipping
    night: bool  # MSLS "night" flag


_DAY = Condition(
    name="day",
    light=(1.0, 0.98, 0.94),
    sun_strength=0.45,
    emissive=0.0,
    sky_horizon=(0.78, 0.86, 0.95),
    sky_zenith=(0.35, 0.55, 0.88),
    cloud_cover=0.25,
    fog_distance_m=float("inf"),
    fog_colour=(0.8, 0.85, 0.9),
    snow=False,
    occluders_per_100m=0.6,
    noise_sigma=1.5,
    blur_sigma_px=0.0,
    exposure=1.0,
    night=False,
)

CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        _DAY,
        Condition(
            name="dusk",
            light=(0.62, 0.42, 0.32),
            sun_strength=0.3,
            emissive=0.35,
            sky_horizon=(0.98, 0.55, 0.3),
            sky_zenith=(0.25, 0.2, 0.45),
            cloud_cover=0.4,
            fog_distance_m=float("inf"),
            fog_colour=(0.6, 0.4, 0.35),
            snow=False,
            occluders_per_100m=0.6,
            noise_sigma=3.0,
            blur_sigma_px=0.0,
            exposure=1.0,
            night=False,
        ),
        Condition(
            name="night",
            light=(0.10, 0.11, 0.16),
            sun_strength=0.0,
            emissive=1.0,
            sky_horizon=(0.06, 0.07, 0.12),
            sky_zenith=(0.01, 0.01, 0.04),
            cloud_cover=0.0,
            fog_distance_m=float("inf"),
            fog_colour=(0.05, 0.05, 0.08),
            snow=False,
            occluders_per_100m=0.3,
            noise_sigma=6.0,
            blur_sigma_px=0.6,
            exposure=1.25,
            night=True,
        ),
        Condition(
            name="fog",
            light=(0.78, 0.8, 0.83),
            sun_strength=0.0,
            emissive=0.1,
            sky_horizon=(0.8, 0.81, 0.83),
            sky_zenith=(0.7, 0.72, 0.75),
            cloud_cover=1.0,
            fog_distance_m=28.0,
            fog_colour=(0.8, 0.81, 0.83),
            snow=False,
            occluders_per_100m=0.6,
            noise_sigma=2.0,
            blur_sigma_px=0.0,
            exposure=1.0,
            night=False,
        ),
        Condition(
            name="winter",
            light=(0.86, 0.9, 1.0),
            sun_strength=0.25,
            emissive=0.05,
            sky_horizon=(0.86, 0.88, 0.92),
            sky_zenith=(0.62, 0.68, 0.8),
            cloud_cover=0.6,
            fog_distance_m=160.0,
            fog_colour=(0.88, 0.9, 0.94),
            snow=True,
            occluders_per_100m=0.6,
            noise_sigma=2.0,
            blur_sigma_px=0.0,
            exposure=1.05,
            night=False,
        ),
        replace(_DAY, name="occluders", occluders_per_100m=15.0),
        replace(_DAY, name="noise", noise_sigma=14.0, blur_sigma_px=1.0, exposure=1.3),
    )
}


def get_condition(name: str) -> Condition:
    """The condition called ``name``; a ValueError lists the known ones otherwise."""
    try:
        return CONDITIONS[name]
    except KeyError:
        raise UserError(f"unknown condition {name!r} (known: {', '.join(CONDITIONS)})") from None
