"""Read a generated world back through each format's own reader, check it, summarise and plot it.

This is what a user runs to see that a world is whole: every count comes from reading the files
(rosbags for bags, csv for MSLS, scipy for the Pittsburgh .mat, json for TB-Places), not from the
generator's memory. It also draws the two pictures people want: one place under every condition
(contact sheet) and the route with all traverses over the town's map.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from rosbags.highlevel import AnyReader  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from training.errors import UserError  # noqa: E402
from vpr_ros.io.image_codec import message_to_rgb  # noqa: E402

IMAGE_TOPIC, ODOM_TOPIC = "/camera/image_raw", "/odom"


def load_world_json(world: Path) -> dict:
    path = Path(world) / "world.json"
    if not path.is_file():
        raise UserError(
            f"--world {world}: no world.json (not a directory written by 'python -m training synth')"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def read_bag_odometry(bag: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Stamps [N] ns, positions [N, 2] and yaws [N] from /odom; plus the number of images."""
    stamps, xy, yaw = [], [], []
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        conns = [c for c in reader.connections if c.topic == ODOM_TOPIC]
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            p, q = msg.pose.pose.position, msg.pose.pose.orientation
            stamps.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
            xy.append((p.x, p.y))
            yaw.append(np.arctan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y**2 + q.z**2)))
        n_images = sum(c.msgcount for c in reader.connections if c.topic == IMAGE_TOPIC)
    return np.asarray(stamps, np.int64), np.asarray(xy).reshape(-1, 2), np.asarray(yaw), n_images


def read_bag_images(bag: Path, indices: set[int]) -> dict[int, np.ndarray]:
    """RGB images of the given frame indices of /camera/image_raw."""
    found = {}
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        conns = [c for c in reader.connections if c.topic == IMAGE_TOPIC]
        for i, (conn, _, raw) in enumerate(reader.messages(connections=conns)):
            if i in indices:
                found[i] = message_to_rgb(reader.deserialize(raw, conn.msgtype))
    return found


def _count_csv_rows(path: Path) -> int:
    with path.open(newline="") as f:
        return sum(1 for _ in csv.reader(f)) - 1


def _check_msls(world: Path, info: dict) -> list[tuple[str, int, int]]:
    rows = []
    for side in ("database", "query"):
        expected = sum(t["frames"] for t in info["traverses"] if t["role"] == side)
        folder = world / "msls" / "train_val" / info["city"] / side
        for name in ("raw.csv", "postprocessed.csv", "seq_info.csv", "subtask_index.csv"):
            found = _count_csv_rows(folder / name) if (folder / name).is_file() else 0
            rows.append((f"msls {side}/{name} rows", expected, found))
        rows.append((f"msls {side} images", expected, len(list((folder / "images").glob("*.jpg")))))
    return rows


def _check_pittsburgh(world: Path, info: dict) -> list[tuple[str, int, int]]:
    from scipy.io import loadmat

    n_db = n_q = 0
    for mat in sorted((world / "pittsburgh" / "datasets").glob("*.mat")):
        s = loadmat(mat)["dbStruct"].item()
        n_db, n_q = n_db + int(s[5].item()), n_q + int(s[6].item())
    expect_db = sum(t["frames"] for t in info["traverses"] if t["role"] == "database")
    expect_q = sum(t["frames"] for t in info["traverses"] if t["role"] == "query")
    return [
        ("pittsburgh db images (all splits)", expect_db, n_db),
        ("pittsburgh queries (all splits)", expect_q, n_q),
    ]


def _check_tbplaces(world: Path, info: dict) -> list[tuple[str, int, int]]:
    rows = []
    for t in info["traverses"]:
        idx = world / "tbplaces" / f"{t['name']}.json"
        found = len(json.loads(idx.read_text())["im_paths"]) if idx.is_file() else 0
        rows.append((f"tbplaces {t['name']}", t["frames"], found))
    return rows


def inspect_world(world: Path, out: Path | None = None) -> str:
    """Check every format of ``world`` against world.json; write the PNGs; return a summary."""
    world = Path(world)
    info = load_world_json(world)
    out = Path(out) if out is not None else world / "preview"
    checks: list[tuple[str, int, int]] = []
    trajectories = {}
    if "bag" in info["formats"]:
        for t in info["traverses"]:
            stamps, xy, yaw, n_images = read_bag_odometry(world / "bags" / t["name"])
            trajectories[t["name"]] = (xy, yaw)
            checks.append(
                (f"bag {t['name']} images / odometry", t["frames"], n_images if n_images == len(xy) else -1)
            )
    if "msls" in info["formats"]:
        checks += _check_msls(world, info)
    if "pittsburgh" in info["formats"]:
        checks += _check_pittsburgh(world, info)
    if "tbplaces" in info["formats"]:
        checks += _check_tbplaces(world, info)
    lines = [f"world {world}: preset {info['preset']}, seed {info['seed']}, city {info['city']}"]
    lines += [
        f"  {t['name']:<24} {t['condition']:<10} {t['role']:<9} {t['frames']:>6} frames"
        for t in info["traverses"]
    ]
    lines.append(f"  {'check':<44} {'expected':>8} {'found':>8}")
    failed = [c for c in checks if c[1] != c[2]]
    lines += [
        f"  {name:<44} {exp:>8} {got:>8}{'  MISMATCH' if exp != got else ''}" for name, exp, got in checks
    ]
    if trajectories:
        out.mkdir(parents=True, exist_ok=True)
        plot_route(info, trajectories, out / "route.png")
        contact_sheet(world, info, trajectories, out / "contact_sheet.png")
        lines.append(f"  plots: {out / 'route.png'}, {out / 'contact_sheet.png'}")
    if failed:
        raise UserError(
            f"world {world} is inconsistent: " + "; ".join(f"{n}: {e} != {g}" for n, e, g in failed)
        )
    lines.append(f"  all {len(checks)} checks passed")
    return "\n".join(lines)


def plot_route(info: dict, trajectories: dict, png: Path) -> None:
    """Top-down map: facades in grey, street furniture as dots, every traverse's trajectory."""
    from training.synth.presets import get_preset
    from training.synth.world import build_town

    town = build_town(get_preset(info["preset"]).layout, info["seed"])
    prims = town.statics
    fig, ax = plt.subplots(figsize=(9, 7), dpi=110)
    walls = prims.kind == 0
    ax.add_collection(
        LineCollection(np.stack([prims.a[walls], prims.b[walls]], 1), colors="0.55", linewidths=2)
    )
    ax.scatter(*prims.a[~walls].T, s=3, c="tab:green", label="trees and lamps")
    for name, (xy, _) in trajectories.items():
        role = next(t["role"] for t in info["traverses"] if t["name"] == name)
        ax.plot(*xy.T, lw=2.5 if role == "database" else 1.0, label=f"{name} ({role})")
    ax.set_aspect("equal")
    ax.set_xlabel("map x (m, east)")
    ax.set_ylabel("map y (m, north)")
    ax.set_title(f"synthetic world '{info['preset']}' (seed {info['seed']}): route and traverses")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def contact_sheet(world: Path, info: dict, trajectories: dict, png: Path, n_places: int = 3) -> None:
    """One row per traverse, one column per place: the frame nearest each place of the map route."""
    database = next(t for t in info["traverses"] if t["role"] == "database")
    db_xy, db_yaw = trajectories[database["name"]]
    picks = np.linspace(0.2, 0.8, n_places) * (len(db_xy) - 1)
    places = [(db_xy[int(i)], db_yaw[int(i)]) for i in picks]
    rows = []
    for t in info["traverses"]:
        xy, yaw = trajectories[t["name"]]
        chosen = {}
        for k, (pxy, pyaw) in enumerate(places):
            dist = np.linalg.norm(xy - pxy, axis=1) + 5.0 * np.abs(np.angle(np.exp(1j * (yaw - pyaw))))
            if dist.min() < 6.0:
                chosen[k] = int(dist.argmin())
        images = read_bag_images(world / "bags" / t["name"], set(chosen.values()))
        rows.append((t, {k: images[i] for k, i in chosen.items()}))
    cam = info["camera"]
    fig, axes = plt.subplots(
        len(rows),
        n_places,
        figsize=(2.6 * n_places, 2.6 * len(rows) * cam["height"] / cam["width"] + 0.6),
        dpi=110,
    )
    axes = np.atleast_2d(axes)
    for r, (t, images) in enumerate(rows):
        for k in range(n_places):
            ax = axes[r, k]
            ax.axis("off")
            if k in images:
                ax.imshow(images[k])
            else:
                ax.text(0.5, 0.5, "not on this route", ha="center", va="center", fontsize=7)
            if k == 0:
                ax.text(
                    -0.04,
                    0.5,
                    f"{t['condition']}\n{t['role']}",
                    transform=ax.transAxes,
                    ha="right",
                    va="center",
                    fontsize=7,
                )
            if r == 0:
                ax.set_title(f"place {k + 1}", fontsize=8)
    fig.suptitle("the same places under every condition (frames read back from the bags)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
