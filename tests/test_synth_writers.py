"""The synthetic-world writers, read back with independent readers of each on-disk format.

A hand-made world (two database and two query traverses: straight lines east and west, an L-shaped
route, uneven stamps) goes through every writer the way the generator drives them; the output is
then checked with rosbags readers, the csv module and pyproj, scipy.io.loadmat with the positional
pattern of the NetVLAD readers, and json/h5py/squareform, never with the writers' own helpers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io
from pyproj import Transformer
from rosbags.highlevel import AnyReader
from rosbags.interfaces import QosReliability
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore
from ruamel.yaml import YAML
from scipy.spatial.distance import cdist, pdist, squareform

from training.synth.traverse import Camera, GeoReference, Traverse, WorldInfo
from training.synth.writers import WRITERS, MslsWriter, RosbagWriter

GEO = GeoReference(utm_zone=32, northern=True, origin_easting=569_000.25, origin_northing=7_034_000.5)
CAMERA = Camera(width=32, height=24, hfov_deg=90.0, mount_height_m=1.6)
T0_NS = 1_700_000_000_123_456_789
KEY_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")
PITTS_NAME_RE = re.compile(r"^(\d{3})/(\d{6})_pitch1_yaw([1-9]|1[0-2])\.jpg$")
MSLS_HEADERS = {
    "raw.csv": ["", "key", "lon", "lat", "ca", "captured_at", "pano"],
    "postprocessed.csv": [
        "",
        "key",
        "easting",
        "northing",
        "unique_cluster",
        "control_panel",
        "night",
        "view_direction",
    ],
    "seq_info.csv": ["", "key", "sequence_key", "frame_number"],
    "subtask_index.csv": ["", "key", "all", "s2w", "w2s", "o2n", "n2o", "d2n", "n2d"],
}
PITTS_FIELDS = (
    "whichSet",
    "dbImageFns",
    "utmDb",
    "qImageFns",
    "utmQ",
    "numImages",
    "numQueries",
    "posDistThr",
    "posDistSqThr",
    "nonTrivPosDistSqThr",
)


# --- the world and its frames ---------------------------------------------------------------------


def _traverse(name: str, condition: str, role: str, xy: np.ndarray, yaw: np.ndarray, seed: int) -> Traverse:
    n = len(xy)
    jitter = np.random.default_rng(seed).integers(0, 40_000_000, n)
    stamps = T0_NS + seed * 10**12 + np.arange(n, dtype=np.int64) * 100_000_000 + jitter
    return Traverse(name, condition, role, "town", stamps, xy.astype(np.float64), yaw)


def _line(n: int, spacing: float, start_x: float, y: float, yaw: float) -> tuple[np.ndarray, np.ndarray]:
    direction = np.cos(yaw)
    xy = np.stack([start_x + direction * spacing * np.arange(n), np.full(n, y)], axis=1)
    return xy, np.full(n, yaw)


def _l_shape(n_east: int, n_north: int, spacing: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    east = np.stack([spacing * np.arange(n_east), np.zeros(n_east)], axis=1)
    north = np.stack([np.full(n_north, spacing * n_east), spacing * np.arange(1, n_north + 1)], axis=1)
    yaw = np.concatenate([np.zeros(n_east), np.full(n_north, np.pi / 2)])
    return np.concatenate([east, north]) + offset, yaw


def make_world() -> WorldInfo:
    return WorldInfo(
        city="synthtown",
        seed=7,
        preset="tiny",
        camera=CAMERA,
        geo=GEO,
        traverses=(
            _traverse("day_db", "day", "database", *_line(20, 3.0, 0.0, 0.0, 0.0), seed=1),
            _traverse("dusk_l_db", "dusk", "database", *_l_shape(10, 8, 4.0, 0.0), seed=2),
            _traverse("night_l_q", "night", "query", *_l_shape(6, 6, 5.0, 0.7), seed=3),
            _traverse("winter_west_q", "winter", "query", *_line(10, 5.0, 55.0, 1.0, np.pi), seed=4),
        ),
    )


def make_image(g: int) -> np.ndarray:
    """A smooth image (so JPEG keeps it close) with a per-frame random colour and a moving block."""
    base = np.random.default_rng(1000 + g).integers(40, 180, size=3)
    yy, xx = np.mgrid[0 : CAMERA.height, 0 : CAMERA.width]
    img = base + np.stack([xx, yy, (xx + yy) // 2], axis=-1)
    col = 4 * (g % 6)
    img[4:12, col : col + 8] = 250
    return img.clip(0, 255).astype(np.uint8)


def make_frames(world: WorldInfo) -> list[list[tuple[np.ndarray, bytes]]]:
    frames, g = [], 0
    for trav in world.traverses:
        row = []
        for _ in range(len(trav)):
            rgb = make_image(g)
            ok, buf = cv2.imencode(
                ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
            )
            assert ok
            row.append((rgb, buf.tobytes()))
            g += 1
        frames.append(row)
    return frames


def generate(root: Path, world: WorldInfo, frames: list, storage: str = "mcap") -> None:
    """Drive every writer the way the generator does: all open, frames in order, then close."""
    writers = [
        cls(root, world, storage=storage) if cls is RosbagWriter else cls(root, world)
        for cls in WRITERS.values()
    ]
    for t, trav in enumerate(world.traverses):
        for i in range(len(trav)):
            rgb, jpeg = frames[t][i]
            for writer in writers:
                writer.add_frame(t, i, rgb, jpeg)
    for writer in writers:
        writer.close()


@pytest.fixture(scope="module")
def world() -> WorldInfo:
    return make_world()


@pytest.fixture(scope="module")
def frames(world: WorldInfo) -> list:
    return make_frames(world)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory, world: WorldInfo, frames: list) -> dict[str, Path]:
    roots = {}
    for storage in ("mcap", "sqlite3"):
        roots[storage] = tmp_path_factory.mktemp(f"synth_{storage}")
        generate(roots[storage], world, frames, storage=storage)
    return roots


@pytest.fixture(scope="module")
def root(outputs: dict[str, Path]) -> Path:
    return outputs["mcap"]


def wrap(angle: np.ndarray) -> np.ndarray:
    return np.arctan2(np.sin(angle), np.cos(angle))


def yaw_of(qx: float, qy: float, qz: float, qw: float) -> float:
    return float(np.arctan2(2.0 * (qw * qz + qx * qy), 1.0 - 2.0 * (qy * qy + qz * qz)))


def decode_jpeg_file(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def check_image_file(path: Path, rgb: np.ndarray, jpeg: bytes) -> None:
    assert path.read_bytes() == jpeg, path
    assert np.abs(decode_jpeg_file(path).astype(int) - rgb.astype(int)).mean() < 3.0, path


# --- rosbag2 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage,suffix", [("mcap", ".mcap"), ("sqlite3", ".db3")])
def test_rosbag_topics_stamps_and_content(outputs, world, frames, storage, suffix):
    typestore = get_typestore(Stores.ROS2_KILTED)
    for t, trav in enumerate(world.traverses):
        bag = outputs[storage] / "bags" / trav.name
        assert (bag / "metadata.yaml").is_file() and (bag / f"{trav.name}{suffix}").is_file()
        info = YAML(typ="safe").load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        assert info["custom_data"]["synth.condition"] == trav.condition
        with Reader(bag) as reader:
            for conn in reader.connections:
                assert conn.ext.offered_qos_profiles[0].reliability == QosReliability.RELIABLE
        with AnyReader([bag], default_typestore=typestore) as reader:
            types = {c.topic: c.msgtype for c in reader.connections}
            assert types == {
                "/camera/image_raw": "sensor_msgs/msg/Image",
                "/camera/camera_info": "sensor_msgs/msg/CameraInfo",
                "/odom": "nav_msgs/msg/Odometry",
            }
            by_topic = {topic: [] for topic in types}
            for conn, timestamp, raw in reader.messages():
                by_topic[conn.topic].append((timestamp, reader.deserialize(raw, conn.msgtype)))
        for topic, messages in by_topic.items():
            stamps = [ts for ts, _ in messages]
            assert stamps == trav.stamps_ns.tolist(), topic
            assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in messages] == stamps
        check_images(by_topic["/camera/image_raw"], frames[t])
        check_camera_info(by_topic["/camera/camera_info"])
        check_odometry(by_topic["/odom"], trav)


def check_images(messages: list, frames: list) -> None:
    for (_, msg), (rgb, _) in zip(messages, frames, strict=True):
        assert (msg.encoding, msg.header.frame_id, msg.height, msg.width) == ("rgb8", "camera", 24, 32)
        assert msg.step == 3 * 32 and msg.is_bigendian == 0
        assert np.array_equal(msg.data.reshape(24, 32, 3), rgb)


def check_camera_info(messages: list) -> None:
    f = 16.0 / np.tan(np.radians(45.0))
    for _, msg in messages:
        assert msg.distortion_model == "plumb_bob" and not np.any(msg.d) and len(msg.d) == 5
        assert np.allclose(msg.k, [f, 0, 15.5, 0, f, 11.5, 0, 0, 1])
        assert np.allclose(msg.p, [f, 0, 15.5, 0, 0, f, 11.5, 0, 0, 0, 1, 0])
        assert np.allclose(msg.r, np.eye(3).ravel()) and msg.header.frame_id == "camera"


def check_odometry(messages: list, trav: Traverse) -> None:
    for i, (_, msg) in enumerate(messages):
        assert (msg.header.frame_id, msg.child_frame_id) == ("map", "base_link")
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        assert (p.x, p.y, p.z) == (trav.xy[i, 0], trav.xy[i, 1], 0.0)
        assert abs(wrap(yaw_of(q.x, q.y, q.z, q.w) - trav.yaw[i])) < 1e-12
        cov = msg.pose.covariance.reshape(6, 6)
        assert np.all(np.diag(cov) > 0) and np.count_nonzero(cov) == 6
    yaw = np.concatenate([trav.yaw[:1], trav.yaw, trav.yaw[-1:]])
    straight = [msg for k, (_, msg) in enumerate(messages) if yaw[k] == yaw[k + 2]]  # no turn around k
    assert straight
    for msg in straight:  # forward motion is +x in the body frame, whatever the heading
        assert msg.twist.twist.linear.x > 10.0 and abs(msg.twist.twist.linear.y) < 1e-6
        assert abs(msg.twist.twist.angular.z) < 1e-9


def test_rosbag_rejects_unknown_storage(tmp_path, world):
    with pytest.raises(ValueError, match="storage"):
        RosbagWriter(tmp_path, world, storage="bag")


# --- MSLS -----------------------------------------------------------------------------------------


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def msls_side(root: Path, world: WorldInfo, side: str) -> tuple[dict[str, list[list[str]]], list[int]]:
    folder = root / "msls" / "train_val" / world.city / side
    tables = {}
    for name, header in MSLS_HEADERS.items():
        got_header, rows = read_csv(folder / name)
        assert got_header == header, name
        tables[name] = rows
    return tables, [t for t, trav in enumerate(world.traverses) if trav.role == side]


@pytest.mark.parametrize("side", ["database", "query"])
def test_msls_tables(root, world, frames, side):
    tables, ts = msls_side(root, world, side)
    n = sum(len(world.traverses[t]) for t in ts)
    keys = [row[1] for row in tables["raw.csv"]]
    for rows in tables.values():
        assert [row[0] for row in rows] == [str(k) for k in range(n)]
        assert [row[1] for row in rows] == keys
    assert len(set(keys)) == n and all(KEY_RE.match(k) for k in keys)
    xy = np.concatenate([world.traverses[t].xy for t in ts])
    yaw = np.concatenate([world.traverses[t].yaw for t in ts])
    stamps = np.concatenate([world.traverses[t].stamps_ns for t in ts])
    check_msls_geometry(tables, xy, yaw, stamps)
    check_msls_flags(tables, [world.traverses[t] for t in ts])
    folder = root / "msls" / "train_val" / world.city / side / "images"
    images = [frame for t in ts for frame in frames[t]]
    for key, (rgb, jpeg) in zip(keys, images, strict=True):
        check_image_file(folder / f"{key}.jpg", rgb, jpeg)
    assert len(list(folder.iterdir())) == n


def check_msls_geometry(tables: dict, xy: np.ndarray, yaw: np.ndarray, stamps: np.ndarray) -> None:
    raw = tables["raw.csv"]
    utm = np.array([[float(r[2]), float(r[3])] for r in tables["postprocessed.csv"]])
    assert np.allclose(utm, GEO.to_utm(xy), rtol=0, atol=1e-6)
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    east, north = to_utm.transform([float(r[2]) for r in raw], [float(r[3]) for r in raw])
    assert np.allclose(np.stack([east, north], axis=1), utm, rtol=0, atol=1e-3)
    ca = np.radians([float(r[4]) for r in raw])  # clockwise from north: heading = (sin ca, cos ca)
    assert all(0.0 <= float(r[4]) < 360.0 for r in raw)
    assert np.allclose(
        np.stack([np.sin(ca), np.cos(ca)], 1), np.stack([np.cos(yaw), np.sin(yaw)], 1), atol=1e-9
    )
    assert [int(r[5]) for r in raw] == (stamps // 1_000_000).tolist()
    assert all(r[6] == "False" for r in raw)


def check_msls_flags(tables: dict, travs: list[Traverse]) -> None:
    conditions = [trav.condition for trav in travs for _ in range(len(trav))]
    post = tables["postprocessed.csv"]
    assert [r[6] for r in post] == [str(c == "night") for c in conditions]
    assert all(r[5] == "False" and r[7] == "Forward" for r in post)
    seq = tables["seq_info.csv"]
    assert [int(r[3]) for r in seq] == [i for trav in travs for i in range(len(trav))]
    per_traverse = np.split(np.array([r[2] for r in seq]), np.cumsum([len(trav) for trav in travs])[:-1])
    assert all(len(set(s)) == 1 and KEY_RE.match(s[0]) for s in per_traverse)
    assert len({s[0] for s in per_traverse}) == len(travs)
    query = travs[0].role == "query"
    for row, cond in zip(tables["subtask_index.csv"], conditions, strict=True):
        flags = dict(zip(MSLS_HEADERS["subtask_index.csv"][2:], row[2:], strict=True))
        night = cond == "night"
        assert flags["all"] == "True" and flags["o2n"] == flags["n2o"] == "False"
        assert flags["n2d"] == str(night if query else not night)
        assert flags["d2n"] == str(not night if query else night)
        assert flags["w2s"] == str((cond == "winter") if query else cond != "winter")


def test_msls_unique_cluster_is_a_place_id(root, world):
    clusters, cells = [], []
    for side in ("database", "query"):
        tables, _ = msls_side(root, world, side)
        for row in tables["postprocessed.csv"]:
            clusters.append(int(row[4]))
            cells.append((int(float(row[2]) // 25.0), int(float(row[3]) // 25.0)))
    same_cluster = np.equal.outer(clusters, clusters)
    same_cell = np.array([[a == b for b in cells] for a in cells])
    assert np.array_equal(same_cluster, same_cell)
    assert sorted(set(clusters)) == list(range(len(set(clusters))))


# --- Pittsburgh -----------------------------------------------------------------------------------


def load_db_struct(path: Path) -> dict:
    """The positional reading of Nanne/pytorch-NetVlad ``parse_dbStruct``."""
    mat = scipy.io.loadmat(path)
    assert mat["dbStruct"].dtype.names == PITTS_FIELDS
    s = mat["dbStruct"].item()
    return {
        "whichSet": s[0].item(),
        "dbImage": [f[0].item() for f in s[1]],
        "utmDb": s[2].T,
        "qImage": [f[0].item() for f in s[3]],
        "utmQ": s[4].T,
        "numDb": s[5].item(),
        "numQ": s[6].item(),
        "posDistThr": s[7].item(),
        "posDistSqThr": s[8].item(),
        "nonTrivPosDistSqThr": s[9].item(),
    }


def test_pittsburgh_splits(root, world, frames):
    base = root / "pittsburgh"
    structs = {s: load_db_struct(base / "datasets" / f"pitts30k_{s}.mat") for s in ("train", "val", "test")}
    side_frames = {  # (traverse, frame index, (rgb, jpeg)) of every frame of a side, in generator order
        role: [
            (trav, i, frames[t][i])
            for t, trav in enumerate(world.traverses)
            if trav.role == role
            for i in range(len(trav))
        ]
        for role in ("database", "query")
    }
    for which, s in structs.items():
        assert s["whichSet"] == which
        assert (s["posDistThr"], s["posDistSqThr"], s["nonTrivPosDistSqThr"]) == (25.0, 625.0, 100.0)
        assert (s["numDb"], s["numQ"]) == (len(s["dbImage"]), len(s["qImage"]))
        assert s["utmDb"].shape == (len(s["dbImage"]), 2) and s["utmQ"].shape == (len(s["qImage"]), 2)
        check_pitts_images(base / "images", s["dbImage"], s["utmDb"], side_frames["database"])
        check_pitts_images(base / "queries_real", s["qImage"], s["utmQ"], side_frames["query"])
    for key, role in (("dbImage", "database"), ("qImage", "query")):
        names = [name for s in structs.values() for name in s[key]]
        assert len(names) == len(set(names)) == len(side_frames[role])
    check_pitts_geography(structs)


def check_pitts_images(folder: Path, names: list[str], utm: np.ndarray, side_frames: list) -> None:
    """Pano id k is the k-th frame of the side; its file, position and yaw bucket must match."""
    for name, position in zip(names, utm, strict=True):
        match = PITTS_NAME_RE.match(name)
        assert match, name
        k = int(match.group(2))
        assert int(match.group(1)) == k // 1000
        trav, i, (rgb, jpeg) = side_frames[k]
        assert np.allclose(position, GEO.to_utm(trav.xy[i]), rtol=0, atol=1e-9)
        compass = np.degrees(np.arctan2(np.cos(trav.yaw[i]), np.sin(trav.yaw[i]))) % 360.0
        assert int(match.group(3)) == 1 + int(compass // 30.0)
        check_image_file(folder / name, rgb, jpeg)


def check_pitts_geography(structs: dict) -> None:
    """Splits are ordered, non-overlapping strips along one UTM axis; queries sit with their nearest db."""
    db = {which: s["utmDb"] for which, s in structs.items()}
    assert all(len(u) for u in db.values())
    total = sum(len(u) for u in db.values())
    assert abs(len(db["train"]) - total / 2) <= 1
    strips = [
        all(db[a][:, axis].max() < db[b][:, axis].min() for a, b in (("train", "val"), ("val", "test")))
        for axis in (0, 1)
    ]
    assert any(strips)
    all_db = np.concatenate(list(db.values()))
    owner = np.repeat(np.arange(3), [len(u) for u in db.values()])
    for index, s in enumerate(structs.values()):
        if len(s["utmQ"]):
            assert np.all(owner[np.argmin(cdist(s["utmQ"], all_db), axis=1)] == index)


# --- TB-Places ------------------------------------------------------------------------------------


def test_tbplaces_sets(root, world, frames):
    base = root / "tbplaces"
    for t, trav in enumerate(world.traverses):
        index = json.loads((base / f"{trav.name}.json").read_text())
        assert index["im_prefix"] == trav.name and len(index["im_paths"]) == len(trav)
        for path, (rgb, jpeg) in zip(index["im_paths"], frames[t], strict=True):
            check_image_file(base / index["im_prefix"] / path, rgb, jpeg)
        poses = np.array(index["poses"])
        assert poses.shape == (len(trav), 7)
        assert np.array_equal(poses[:, :2], trav.xy) and np.all(poses[:, 2] == CAMERA.mount_height_m)
        yaw = np.array([yaw_of(*q) for q in poses[:, 3:]])
        assert np.allclose(wrap(yaw - trav.yaw), 0.0, atol=1e-12)
        assert np.allclose(np.linalg.norm(poses[:, 3:], axis=1), 1.0)
        with h5py.File(base / f"{trav.name}_similarity.h5", "r") as f:
            sim = f["sim"][()]
            assert f["sim"].attrs["distance_threshold_m"] == 10.0
            assert f["sim"].attrs["heading_threshold_deg"] == 45.0
        assert sim.dtype == np.uint8 and sim.shape == (len(trav) * (len(trav) - 1) // 2,)
        heading = np.degrees(np.arccos(np.clip(np.cos(np.subtract.outer(trav.yaw, trav.yaw)), -1, 1)))
        expected = (squareform(pdist(trav.xy)) <= 10.0) & (heading <= 45.0)
        np.fill_diagonal(expected, False)
        assert np.array_equal(squareform(sim), expected.astype(np.uint8))
        assert 0 < sim.sum() < len(sim)


# --- the frame-order contract and determinism -----------------------------------------------------


def test_frames_out_of_order_or_missing_are_refused(tmp_path, world, frames):
    writer = MslsWriter(tmp_path, world)
    rgb, jpeg = frames[0][0]
    with pytest.raises(ValueError, match=r"expected frame \(0, 0\)"):
        writer.add_frame(0, 1, rgb, jpeg)
    writer.add_frame(0, 0, rgb, jpeg)
    with pytest.raises(ValueError, match="uint8"):
        writer.add_frame(0, 1, rgb[:, :, :2], jpeg)
    with pytest.raises(ValueError, match=r"closed before frame \(0, 1\)"):
        writer.close()


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_same_inputs_give_identical_files(tmp_path, world, frames, outputs, storage):
    # Written at a later wall-clock second than the module fixture, so a timestamp would show.
    time.sleep(1.1)
    generate(tmp_path, world, frames, storage=storage)
    first, second = digest_tree(outputs[storage]), digest_tree(tmp_path)
    assert len(first) > 100
    assert first == second
