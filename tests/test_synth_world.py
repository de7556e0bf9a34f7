"""The synthetic world: rendering geometry, conditions, determinism, the CLI and its refusals."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from training.errors import UserError
from training.synth import occluders, textures
from training.synth.conditions import CONDITIONS, get_condition
from training.synth.generate import generate, plan_traverses
from training.synth.presets import PRESETS, get_preset
from training.synth.render import Renderer
from training.synth.routes import route_path
from training.synth.traverse import Camera
from training.synth.world import Atlas, Primitives, Town, TownLayout, build_town

SMALL = get_preset("small")


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _one_wall_town(distance: float, height: float) -> Town:
    """A single white wall across the view at x = distance, facing the camera at the origin."""
    atlas = Atlas()
    tex = np.full((round(height * 8), 400, 5), 255, np.uint8)
    u0, w, h = atlas.add(tex)
    atlas.freeze()
    wall = Primitives(
        kind=np.zeros(1, np.int8),
        a=np.array([[distance, -25.0]]),
        b=np.array([[distance, 25.0]]),
        z0=np.zeros(1),
        z1=np.array([height]),
        u0=np.array([u0]),
        u0_snow=np.array([u0]),
        tex_w=np.array([w]),
        tex_h=np.array([h]),
    )
    ground = np.zeros((8, 8, 3), np.uint8)
    return Town(TownLayout(1, 1), wall, atlas, ground, ground, ground[..., 0], [], [], 0.0)


def test_pinhole_projection_of_a_wall():
    """The wall's top edge lands on row cy - f (H - h) / d and its foot on cy + f h / d."""
    cam = Camera(width=161, height=121, hfov_deg=90.0, mount_height_m=1.6)
    distance, height = 10.0, 8.0
    renderer = Renderer(_one_wall_town(distance, height), cam)
    noiseless_day = replace(get_condition("day"), noise_sigma=0.0)
    img = renderer.render(
        0.0, 0.0, 0.0, noiseless_day, Primitives.empty(), np.zeros((4, 4)), np.random.default_rng(0)
    )
    column = img[:, cam.width // 2].astype(int).sum(axis=1)
    white = np.flatnonzero(column > 3 * 240)
    top = cam.cy - cam.fx * (height - cam.mount_height_m) / distance
    foot = cam.cy + cam.fx * cam.mount_height_m / distance
    assert abs(white[0] - top) <= 1.0
    assert abs(white[-1] - foot) <= 1.0


def test_rotation_moves_the_view_by_the_focal_geometry():
    """Turning left by the angle of k columns shifts the image k columns to the right."""
    cam = SMALL.camera
    town = build_town(SMALL.layout, seed=0)
    renderer = Renderer(town, cam)
    day = replace(get_condition("day"), noise_sigma=0.0)
    clouds = np.zeros((4, 4))
    x, y = 1.0 * SMALL.layout.pitch + 10.0, 1.0 * SMALL.layout.pitch
    k = 10
    yaw_step = np.arctan(k / cam.fx)  # exact for the centre column
    a = renderer.render(x, y, 0.0, day, Primitives.empty(), clouds, np.random.default_rng(0)).astype(int)
    b = renderer.render(x, y, yaw_step, day, Primitives.empty(), clouds, np.random.default_rng(0)).astype(int)
    mid = cam.width // 2
    centre = a[:, mid - 5 : mid + 5]
    shifted = np.abs(b[:, mid - 5 + k : mid + 5 + k] - centre).mean()
    unshifted = np.abs(b[:, mid - 5 : mid + 5] - centre).mean()
    assert shifted < 0.25 * unshifted


def test_every_condition_changes_the_same_place_visibly():
    """Same poses, different condition: a clear share of pixels changes by more than 40 levels
    (sensor noise alone changes none), averaged over four places along the route."""
    cam = SMALL.camera
    town = build_town(SMALL.layout, seed=0)
    renderer = Renderer(town, cam)
    path = route_path(SMALL.layout, SMALL.routes["main"])
    xy, heading = path.at(np.array([30.0, 60.0, 90.0, 120.0]))
    clouds = textures.smooth_noise(np.random.default_rng(1), (64, 512), 6.0)

    def shots(name: str, noise_seed: int) -> np.ndarray:
        cond = get_condition(name)
        movers = occluders.spawn(town, path, cond.occluders_per_100m, np.random.default_rng(7))
        dyn = occluders.primitives_at(town, path, movers, 3.0)
        return np.stack(
            [
                renderer.render(*p, h, cond, dyn, clouds, np.random.default_rng(noise_seed)).astype(float)
                for p, h in zip(xy, heading)
            ]
        )

    def changed(a: np.ndarray, b: np.ndarray) -> float:
        return float((np.abs(a - b).max(axis=-1) > 40).mean())

    day = shots("day", 0)
    assert changed(shots("day", 1), day) == 0.0  # re-rendering with other sensor noise
    for name in CONDITIONS:
        if name != "day":
            share = changed(shots(name, 0), day)
            assert share > 0.05, f"{name} looks like day ({share:.1%} of pixels changed)"


def test_traverses_are_planned_along_the_route():
    paths, traverses = plan_traverses(SMALL, seed=0)
    assert [t.condition for t in traverses] == ["day", "night"]
    assert [t.role for t in traverses] == ["database", "query"]
    for t in traverses:
        assert 180 <= len(t) <= 220  # about 200 frames, as the preset promises
        assert np.all(np.diff(t.stamps_ns) > 0)
        steps = np.linalg.norm(np.diff(t.xy, axis=0), axis=1)
        assert 0.5 < steps.mean() < 1.1
        # Every frame lies within a lane of the route's centreline.
        dense = paths["main"].points
        lateral = np.min(np.linalg.norm(t.xy[:, None] - dense[None], axis=2), axis=1)
        assert lateral.max() < 3.0
    # Query frames never coincide with database frames (different lane and spacing).
    db, q = traverses
    nearest = np.min(np.linalg.norm(q.xy[:, None] - db.xy[None], axis=2), axis=1)
    assert nearest.min() > 0.2


def test_route_legs_must_follow_streets():
    with pytest.raises(ValueError, match="does not follow one street"):
        route_path(SMALL.layout, [(0, 0), (1, 1)])
    path = route_path(SMALL.layout, [(1, 1), (3, 1), (3, 2)])
    legs = 3 * SMALL.layout.pitch
    assert legs - 4.0 < path.length < legs  # the rounded corner cuts a little


def test_same_seed_same_bytes_other_seed_other_bytes(small_world, tmp_path):
    again = tmp_path / "again"
    generate(again, SMALL, seed=0, progress=False)
    first, second = tree_digest(small_world), tree_digest(again)
    assert first.keys() == second.keys()
    assert first == second
    other = tmp_path / "other"
    generate(other, SMALL, seed=1, formats=["tbplaces"], progress=False)
    differing = [k for k, v in tree_digest(other).items() if first.get(k) != v]
    assert len(differing) > 0.9 * len(tree_digest(other))


def test_small_world_layout_and_inspect(small_world, tmp_path):
    from training.synth.inspect import inspect_world

    for sub in ("bags/t00_day/metadata.yaml", "bags/t01_night/metadata.yaml", "world.json"):
        assert (small_world / sub).is_file()
    report = inspect_world(small_world, tmp_path / "preview")
    assert "all" in report and "checks passed" in report
    import cv2

    for name in ("route.png", "contact_sheet.png"):
        img = cv2.imread(str(tmp_path / "preview" / name))
        assert img is not None and img.shape[0] > 300 and img.shape[1] > 300


def test_inspect_reports_a_damaged_world(small_world, tmp_path):
    import shutil

    from training.synth.inspect import inspect_world

    damaged = tmp_path / "damaged"
    shutil.copytree(small_world, damaged)
    next((damaged / "msls" / "train_val" / "synthtown" / "query" / "images").glob("*.jpg")).unlink()
    with pytest.raises(UserError, match="msls query images: 197 != 196|msls query images"):
        inspect_world(damaged, tmp_path / "preview")
    with pytest.raises(UserError, match="no world.json"):
        inspect_world(tmp_path, tmp_path / "preview")


def test_a_failure_mid_write_leaves_nothing_behind(tmp_path, monkeypatch):
    from training.synth import generate as gen

    calls = {"n": 0}
    real = gen.Renderer.render

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 50:
            raise RuntimeError("disk full (simulated)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(gen.Renderer, "render", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        generate(tmp_path / "w", SMALL, seed=0, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_and_refusal_keeps(tmp_path):
    out = tmp_path / "w"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="exists and is not empty"):
        generate(out, SMALL, seed=0, formats=["tbplaces"], progress=False)
    assert (out / "keep.txt").read_text() == "precious"
    generate(out, SMALL, seed=0, formats=["tbplaces"], overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "world.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "huge"], "unknown preset 'huge' (choose from small, demo, benchmark)"),
        (["--formats", "bag,kitti"], "unknown format(s) kitti"),
        (["--bag-storage", "rosbag1"], "--bag-storage must be 'mcap' or 'sqlite3'"),
    ],
)
def test_cli_rejects_bad_options_in_one_line(tmp_path, args, message):
    result = _cli("synth", "--out", str(tmp_path / "w"), "--quiet", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[7:]}"]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_non_empty_and_unwritable_outputs(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = _cli("synth", "--out", str(tmp_path / "full"), "--quiet")
    assert result.returncode == 2 and "exists and is not empty" in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _cli("synth", "--out", str(blocker / "w"), "--quiet")
    assert result.returncode == 2 and "cannot create output directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]


def test_presets_keep_their_promises():
    assert PRESETS["small"].camera.width == 160 and PRESETS["small"].camera.height == 120
    _, traverses = plan_traverses(PRESETS["benchmark"], seed=0)
    assert sum(len(t) for t in traverses) >= 10_000
    _, demo = plan_traverses(PRESETS["demo"], seed=0)
    assert {t.condition for t in demo} >= {"day", "dusk", "night", "fog", "winter", "occluders", "noise"}
    assert any(t.route != "main" for t in demo)  # a traverse that leaves the mapped route


def test_bags_of_the_generated_world_hold_the_planned_poses_and_rendered_pixels(small_world):
    """End to end: what the bag says equals what the generator planned and rendered."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from vpr_ros.io.image_codec import message_to_rgb

    paths, traverses = plan_traverses(SMALL, seed=0)
    town = build_town(SMALL.layout, seed=0)
    renderer = Renderer(town, SMALL.camera)
    t = 1  # the night traverse: emissive light, noise and occluders all take part
    trav = traverses[t]
    cond = get_condition(trav.condition)
    with AnyReader(
        [small_world / "bags" / trav.name], default_typestore=get_typestore(Stores.ROS2_KILTED)
    ) as bag:
        odom = [c for c in bag.connections if c.topic == "/odom"]
        poses = [bag.deserialize(raw, c.msgtype) for c, _, raw in bag.messages(connections=odom)]
        images = [c for c in bag.connections if c.topic == "/camera/image_raw"]
        checked = 0
        for i, (c, stamp, raw) in enumerate(bag.messages(connections=images)):
            assert stamp == trav.stamps_ns[i]
            if i % 50:
                continue
            # Same draws as the generator: occluders and clouds from one stream, noise per frame.
            rng = np.random.default_rng([0, 3, t])
            movers = occluders.spawn(town, paths["main"], cond.occluders_per_100m, rng)
            clouds = textures.smooth_noise(rng, (64, 512), 6.0)
            elapsed = (trav.stamps_ns[i] - trav.stamps_ns[0]) / 1e9
            dyn = occluders.primitives_at(town, paths["main"], movers, elapsed)
            expected = renderer.render(
                *trav.xy[i], trav.yaw[i], cond, dyn, clouds, np.random.default_rng([0, 4, t, i])
            )
            np.testing.assert_array_equal(message_to_rgb(bag.deserialize(raw, c.msgtype)), expected)
            checked += 1
    assert checked == 4
    assert len(poses) == len(trav)
    xy = np.array([(p.pose.pose.position.x, p.pose.pose.position.y) for p in poses])
    np.testing.assert_allclose(xy, trav.xy, atol=1e-9)
    q = np.array([(p.pose.pose.orientation.z, p.pose.pose.orientation.w) for p in poses])
    np.testing.assert_allclose(2 * np.arctan2(q[:, 0], q[:, 1]), trav.yaw, atol=1e-9)
    assert {p.header.frame_id for p in poses} == {"map"}


def test_rendering_processes_write_the_same_bytes(tmp_path):
    """Frames draw from their own seeded generators: two rendering processes write exactly what one
    does (the demo renders with every core)."""
    small = get_preset("small")
    drive = replace(small.traverses[1].drive, spacing_m=4.0)
    preset = replace(
        small, traverses=(replace(small.traverses[0], drive=drive), replace(small.traverses[1], drive=drive))
    )

    def digests(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    generate(tmp_path / "one", preset, seed=2, formats=("bag",), progress=False, workers=1)
    generate(tmp_path / "two", preset, seed=2, formats=("bag",), progress=False, workers=2)
    assert digests(tmp_path / "one") == digests(tmp_path / "two")
