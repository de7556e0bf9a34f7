"""Graded and binary similarity labels between camera poses (GCL paper, Sec. 3 "Graded similarity").

Each camera's 2D field of view is the circular sector centred at its position t with radius r,
spanning the angles [alpha - theta/2, alpha + theta/2] (GCL paper, Fig. 2a). The paper calls the
overlap of two such sectors an intersection-over-union, but the values it states (r = 50 m,
theta = 90 deg: 55.63 % for two cameras at one spot 40 deg apart, 45.01 % for two cameras 25 m
apart side by side with the same heading; theta = 80 deg gives 50 % for the former) are those of
the intersection area divided by the area of ONE sector: exactly (90 - 40) / 90 = 55.56 %,
44.97 % and (80 - 40) / 80 = 50.00 %; IoU would give 38.5 % and 29.0 %. The paper's last-digit
differences come from approximating the arc by a polygon. Both sectors have the same area, so the
measure is symmetric. We implement intersection / sector area.

The intersection area is integrated in polar coordinates around camera A's position: every ray
from A at angle phi crosses B's sector (a disk intersected with two half-planes, convex for
theta <= 180 deg) in one interval [lo, hi], and the area is the integral of (hi^2 - lo^2) / 2
over phi in A's opening. Between the polar angles of the vertices of the two sectors' arrangement
(apexes, arc ends, edge/edge, edge/arc and arc/arc intersections, tangents from A to B's circle,
directions parallel to B's edges) each of lo and hi follows one curve: 0, A's arc, B's circle, or
one of B's edge lines. The integral of rho^2 / 2 along each has a closed form (Green's theorem), so
the overlap is exact up to rounding (checked against fine shapely polygons in the tests and in
benchmarks/fov_labels.py).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

from training.datasets.base import PlaceSet
from training.errors import UserError

_CHUNK = 4096  # pairs per vectorised block: about 40 MB of temporaries


def _unit(angle: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _segment_segment(p, p2, q, q2) -> np.ndarray:
    """Intersection point of segments p-p2 and q-q2 (NaN where they do not cross)."""
    d, e = p2 - p, q2 - q
    denom = _cross(d, e)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = _cross(q - p, e) / denom
        t = _cross(q - p, d) / denom
    ok = (s >= 0) & (s <= 1) & (t >= 0) & (t <= 1)
    return np.where(ok[..., None], p + s[..., None] * d, np.nan)


def _segment_circle(p, p2, centre, radius) -> list[np.ndarray]:
    """The (up to two) points where segment p-p2 crosses the circle (NaN where absent)."""
    d = p2 - p
    f = p - centre
    a = np.einsum("...i,...i->...", d, d)
    b = 2 * np.einsum("...i,...i->...", f, d)
    c = np.einsum("...i,...i->...", f, f) - radius**2
    disc = b * b - 4 * a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    out = []
    for sign in (-1.0, 1.0):
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (-b + sign * root) / (2 * a)
        ok = (disc >= 0) & (s >= 0) & (s <= 1)
        out.append(np.where(ok[..., None], p + s[..., None] * d, np.nan))
    return out


def _circle_circle(c1, c2, radius) -> list[np.ndarray]:
    """The two intersection points of equal circles (NaN where they do not meet)."""
    delta = c2 - c1
    dist = np.linalg.norm(delta, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = np.sqrt(np.maximum(radius**2 - (dist / 2) ** 2, 0.0))
        mid = c1 + delta / 2
        normal = np.stack([-delta[..., 1], delta[..., 0]], axis=-1) / dist[..., None]
    ok = (dist > 0) & (dist <= 2 * radius)
    return [np.where(ok[..., None], mid + s * half[..., None] * normal, np.nan) for s in (-1.0, 1.0)]


def _breakpoints(pa, ya, pb, yb, radius, half) -> np.ndarray:
    """Polar angles (from A, relative to A's first edge) where the integrand may be non-smooth."""
    ea = [pa + radius * _unit(ya + s * half) for s in (-1.0, 1.0)]
    eb = [pb + radius * _unit(yb + s * half) for s in (-1.0, 1.0)]
    points = [pb, *eb]
    for a_end in ea:
        points += [_segment_segment(pa, a_end, pb, b_end) for b_end in eb]
        points += _segment_circle(pa, a_end, pb, radius)
    for b_end in eb:
        points += _segment_circle(pb, b_end, pa, radius)
    points += _circle_circle(pa, pb, radius)
    rel = np.stack(points, axis=1) - pa[:, None, :]
    angles = [np.arctan2(rel[..., 1], rel[..., 0])]
    w = pb - pa
    dist = np.linalg.norm(w, axis=-1)
    towards = np.arctan2(w[:, 1], w[:, 0])
    with np.errstate(invalid="ignore", divide="ignore"):
        tangent = np.arcsin(np.clip(radius / dist, -1.0, 1.0))
    angles.append(np.stack([towards - tangent, towards + tangent], axis=1))
    angles.append(np.stack([yb - half, yb + half, yb - half + np.pi, yb + half + np.pi], axis=1))
    start = ya - half
    rel_angle = np.mod(np.concatenate(angles, axis=1) - start[:, None], 2 * np.pi)
    rel_angle = np.where(np.isfinite(rel_angle) & (rel_angle < 2 * half[:, None]), rel_angle, 0.0)
    ends = np.stack([np.zeros_like(start), 2 * half], axis=1)
    return np.sort(np.concatenate([ends, rel_angle], axis=1), axis=1)


# Curves that bound a ray's interval inside B's sector (see _ray_interval).
_ZERO, _ARC_A, _CIRCLE_IN, _CIRCLE_OUT, _EDGE_LEFT, _EDGE_RIGHT = range(6)


def _edges(yb: np.ndarray, half: np.ndarray) -> list[np.ndarray]:
    """Inward unit normals of B's two edges (at yb + half and yb - half)."""
    return [_unit(yb + half - np.pi / 2), _unit(yb - half + np.pi / 2)]


def _ray_interval(phi, pa, pb, yb, radius, half):
    """For rays from A at angles ``phi`` [N, M]: which curve bounds the part inside B from below
    and from above, and whether that part is empty. Used at interval midpoints only."""
    u = _unit(phi)
    w = (pa - pb)[:, None, :]
    uw = np.einsum("nmi,nmi->nm", u, np.broadcast_to(w, u.shape))
    disc = uw**2 - np.einsum("ni,ni->n", pa - pb, pa - pb)[:, None] + radius**2
    root = np.sqrt(np.maximum(disc, 0.0))
    lows = [np.zeros_like(uw), -uw - root]
    highs = [np.full_like(uw, radius), -uw + root]
    empty = disc < 0
    for normal in _edges(yb, half):
        s = np.einsum("nmi,ni->nm", u, normal)
        c = np.einsum("ni,ni->n", pa - pb, normal)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = -c / s
        lows.append(np.where(s > 0, bound, -np.inf))
        highs.append(np.where(s < 0, bound, np.inf))
        empty |= (s == 0) & (c < 0)
    lo_kind = np.array([_ZERO, _CIRCLE_IN, _EDGE_LEFT, _EDGE_RIGHT])[np.argmax(np.stack(lows), axis=0)]
    hi_kind = np.array([_ARC_A, _CIRCLE_OUT, _EDGE_LEFT, _EDGE_RIGHT])[np.argmin(np.stack(highs), axis=0)]
    empty |= np.max(np.stack(lows), axis=0) >= np.min(np.stack(highs), axis=0)
    return lo_kind, hi_kind, empty


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _swept_area(kind, phi1, phim, phi2, pa, pb, yb, radius, half) -> np.ndarray:
    """Integral over [phi1, phi2] of rho(phi)^2 / 2 for the bounding curve ``kind`` [N, I]."""
    area = np.zeros_like(phi1)
    area = np.where(kind == _ARC_A, radius**2 / 2 * (phi2 - phi1), area)
    # An edge line at signed distance p along its normal angle beta: rho = p / cos(phi - beta),
    # so the integral is p^2 / 2 * (tan(phi2 - beta) - tan(phi1 - beta)).
    for k, normal in zip((_EDGE_LEFT, _EDGE_RIGHT), _edges(yb, half)):
        p = -np.einsum("ni,ni->n", pa - pb, normal)[:, None]
        beta = np.arctan2(normal[:, 1], normal[:, 0])[:, None]
        with np.errstate(invalid="ignore", over="ignore"):
            edge = p**2 / 2 * (np.tan(phi2 - beta) - np.tan(phi1 - beta))
        area = np.where(kind == k, edge, area)
    # B's circle, points pb + r (cos psi, sin psi) seen from A (offset c = pb - pa): by Green's
    # theorem the integral is [r (cx sin psi - cy cos psi) + r^2 psi] / 2 between the end angles.
    c = (pb - pa)[:, None, :]
    for k, sign in ((_CIRCLE_IN, -1.0), (_CIRCLE_OUT, 1.0)):
        psi = []
        for phi in (phi1, phim, phi2):
            u = _unit(phi)
            uw = -np.einsum("nmi,nmi->nm", u, np.broadcast_to(c, u.shape))
            disc = uw**2 - np.einsum("nmi,nmi->nm", c, c) + radius**2
            rho = -uw + sign * np.sqrt(np.maximum(disc, 0.0))
            rel = rho[..., None] * u - c
            psi.append(np.arctan2(rel[..., 1], rel[..., 0]))
        psi2 = psi[1] + _wrap(psi[2] - psi[1])
        psi1 = psi[1] - _wrap(psi[1] - psi[0])

        def primitive(angle):
            return (radius * (c[..., 0] * np.sin(angle) - c[..., 1] * np.cos(angle)) + radius**2 * angle) / 2

        area = np.where(kind == k, primitive(psi2) - primitive(psi1), area)
    return area


def _validated(name: str, value: np.ndarray, shape_tail: tuple[int, ...]) -> np.ndarray:
    value = np.asarray(value, dtype=np.float64)
    if value.ndim != 1 + len(shape_tail) or value.shape[1:] != shape_tail:
        raise ValueError(
            f"fov_overlap: {name} must have shape [N{', ' if shape_tail else ''}"
            f"{', '.join(map(str, shape_tail))}], got {list(value.shape)}"
        )
    return value


def fov_overlap(
    xy_a: np.ndarray,
    yaw_a: np.ndarray,
    xy_b: np.ndarray,
    yaw_b: np.ndarray,
    radius: float,
    fov: float,
) -> np.ndarray:
    """Field-of-view overlap of camera pairs: area(A ∩ B) / area(sector), in [0, 1].

    ``xy_*`` [N, 2] positions in metres, ``yaw_*`` [N] headings in radians counter-clockwise from
    +x, ``radius`` in metres, ``fov`` the full opening angle in radians (0 < fov <= pi). See the
    module docstring for why this (and not IoU) is the GCL paper's measure.
    """
    xy_a, xy_b = _validated("xy_a", xy_a, (2,)), _validated("xy_b", xy_b, (2,))
    yaw_a, yaw_b = _validated("yaw_a", yaw_a, ()), _validated("yaw_b", yaw_b, ())
    n = len(xy_a)
    if not (len(xy_b) == len(yaw_a) == len(yaw_b) == n):
        raise ValueError("fov_overlap: xy_a, yaw_a, xy_b and yaw_b must have the same length")
    if not radius > 0 or not 0 < fov <= np.pi:
        raise ValueError(f"fov_overlap: need radius > 0 and 0 < fov <= pi, got {radius}, {fov}")
    if not (np.isfinite(yaw_a).all() and np.isfinite(yaw_b).all()):
        raise ValueError("fov_overlap: headings must be finite (graded labels need camera headings)")
    out = np.empty(n)
    for s in range(0, n, _CHUNK):
        sl = slice(s, s + _CHUNK)
        out[sl] = _overlap_chunk(xy_a[sl], yaw_a[sl], xy_b[sl], yaw_b[sl], float(radius), fov / 2)
    return out


def _overlap_chunk(pa, ya, pb, yb, radius: float, half_fov: float) -> np.ndarray:
    half = np.full(len(pa), half_fov)
    bp = _breakpoints(pa, ya, pb, yb, radius, half) + (ya - half)[:, None]
    phi1, phi2 = bp[:, :-1], bp[:, 1:]
    phim = (phi1 + phi2) / 2
    lo_kind, hi_kind, empty = _ray_interval(phim, pa, pb, yb, radius, half)
    args = (phi1, phim, phi2, pa, pb, yb, radius, half)
    pieces = _swept_area(hi_kind, *args) - _swept_area(lo_kind, *args)
    area = np.where(empty | (phi2 <= phi1), 0.0, pieces).sum(axis=1)
    far = np.linalg.norm(pa - pb, axis=1) >= 2 * radius
    return np.where(far, 0.0, np.clip(area / (half_fov * radius**2), 0.0, 1.0))


def graded_labels(database: PlaceSet, queries: PlaceSet, radius: float, fov: float) -> sparse.csr_matrix:
    """FoV overlaps of every (query, database) pair that can overlap, as a sparse [Q, D] matrix.

    Only pairs closer than 2r can overlap, so a k-d tree prunes the rest; the remaining pairs are
    computed in chunks, which keeps a whole MSLS city (tens of thousands of images) in memory.
    Zero overlaps are not stored: a missing entry means psi = 0 (a hard negative).
    """
    for side, name in ((database, "database"), (queries, "queries")):
        if len(side) and not np.isfinite(side.yaw).all():
            raise UserError(f"graded labels need camera headings, but some {name} images have none")
    pairs = cKDTree(queries.xy).query_ball_tree(cKDTree(database.xy), r=2 * radius)
    rows = np.repeat(np.arange(len(queries)), [len(p) for p in pairs])
    cols = np.fromiter((c for p in pairs for c in p), dtype=np.int64, count=len(rows))
    psi = fov_overlap(queries.xy[rows], queries.yaw[rows], database.xy[cols], database.yaw[cols], radius, fov)
    keep = psi > 0
    return sparse.csr_matrix(
        (psi[keep].astype(np.float32), (rows[keep], cols[keep])), shape=(len(queries), len(database))
    )


def binary_positives(
    database: PlaceSet, queries: PlaceSet, distance_m: float, angle_deg: float | None = None
) -> list[np.ndarray]:
    """Database indices within ``distance_m`` of each query (and within ``angle_deg`` of its heading
    where both headings are known): the binary labels of contrastive, triplet and SARE training."""
    found = cKDTree(database.xy).query_ball_point(queries.xy, r=distance_m) if len(database) else []
    out = []
    for q, idx in enumerate(found):
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        if angle_deg is not None and len(idx):
            diff = np.abs(np.angle(np.exp(1j * (database.yaw[idx] - queries.yaw[q]))))
            idx = idx[~(diff > np.radians(angle_deg))]  # NaN headings are kept (unknown)
        out.append(idx)
    return out
