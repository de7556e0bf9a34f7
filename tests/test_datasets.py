"""The dataset readers, checked against the synthetic world whose poses are known exactly.

One small world is generated per module (about 6 s) in every format; each reader must give back
the planned positions and headings of ``plan_traverses`` in the planar convention of ``base.py``.
Broken inputs are copies of the world's files damaged in ``tmp_path``: every one must end as a
one-line ``UserError`` naming the file (and line where there is one).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io
import torch
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_typestore
from scipy.spatial.distance import squareform
from scipy.spatial.transform import Rotation

from training.datasets import (
    ImageListDataset,
    UnreadableImage,
    load_image,
    read_bag_trajectory,
    read_image_folder,
    read_msls,
    read_pittsburgh,
    read_tbplaces,
    read_tbplaces_set,
    read_tbplaces_similarity,
    trajectory_dataset,
)
from training.datasets.common import quaternion_yaw
from training.errors import UserError
from training.synth.generate import plan_traverses
from training.synth.presets import get_preset

CITY = "synthtown"
SIDES = ("database", "query")


# --- the world ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(small_world: Path) -> Path:
    return small_world


@pytest.fixture(scope="module")
def summary(world: Path) -> dict:
    return json.loads((world / "world.json").read_text())


@pytest.fixture(scope="module")
def planned() -> dict:
    """The traverses by role, with exact poses (the small preset has one of each)."""
    _, traverses = plan_traverses(get_preset("small"), 0)
    return {t.role: t for t in traverses}


def origin(summary: dict) -> np.ndarray:
    return np.array([summary["geo"]["origin_easting"], summary["geo"]["origin_northing"]])


def assert_same_places(a, b) -> None:
    """Same images (by name relative to their side's folder), positions, headings and tags."""
    assert [p.name for p in a.paths] == [p.name for p in b.paths]
    np.testing.assert_array_equal(a.xy, b.xy)
    np.testing.assert_array_equal(a.yaw, b.yaw)
    assert a.tags == b.tags


def assert_yaw(actual: np.ndarray, expected: np.ndarray, tol: float = 1e-6) -> None:
    diff = np.mod(np.asarray(actual) - np.asarray(expected) + np.pi, 2 * np.pi) - np.pi
    assert np.abs(diff).max() < tol


# --- MSLS -----------------------------------------------------------------------------------------


@pytest.fixture
def msls_copy(world: Path, tmp_path: Path) -> Path:
    """A writable copy of the MSLS city: CSVs copied, image folders linked."""
    root = tmp_path / "msls"
    for side in SIDES:
        src, dst = world / "msls" / "train_val" / CITY / side, root / "train_val" / CITY / side
        dst.mkdir(parents=True)
        for csv_file in src.glob("*.csv"):
            shutil.copy(csv_file, dst / csv_file.name)
        (dst / "images").symlink_to(src / "images")
    return root


def rewrite_csv(path: Path, edit) -> None:
    """Apply ``edit(header, rows) -> (header, rows)`` to a CSV file in place."""
    with path.open(newline="") as f:
        header, *rows = list(csv.reader(f))
    header, rows = edit(header, rows)
    with path.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])


def drop_column(header: list, rows: list, col: int) -> tuple[list, list]:
    return header[:col] + header[col + 1 :], [r[:col] + r[col + 1 :] for r in rows]


def set_cell(header: list, rows: list, row: int, col: int, value: str) -> tuple[list, list]:
    rows = [list(r) for r in rows]
    rows[row][col] = value
    return header, rows


def test_msls_train_positions_yaw_tags(world: Path, summary: dict, planned: dict) -> None:
    (city,) = read_msls(world / "msls", cities=[CITY], split="train")
    assert city.name == f"msls_{CITY}" and city.meta["city"] == CITY
    keys = {t["role"]: t["msls_sequence_key"] for t in summary["traverses"]}
    for side, places in (("database", city.database), ("query", city.queries)):
        trav = planned[side]
        assert len(places) == len(trav)
        np.testing.assert_allclose(places.xy - origin(summary), trav.xy, atol=1e-6)
        assert_yaw(places.yaw, trav.yaw)
        assert places.tags == (keys[side],) * len(trav)
        assert all(p.is_file() and p.suffix == ".jpg" for p in places.paths)
    assert city.meta["night"].dtype == bool and city.meta["night"].all()  # the query traverse is at night
    assert not city.meta["sideways"].any()
    assert city.meta["dropped_queries"] == 0 and city.meta["panoramas"] == 0
    assert (city.positive_m, city.positive_deg, city.train_positive_m) == (25.0, 40.0, 10.0)
    assert (city.radius_m, city.fov_deg) == (50.0, 90.0)


def test_msls_val_subtasks(world: Path, planned: dict) -> None:
    (night,) = read_msls(world / "msls", cities=[CITY], split="val", subtask="n2d")
    assert (len(night.queries), len(night.database)) == (len(planned["query"]), len(planned["database"]))
    (day,) = read_msls(world / "msls", cities=[CITY], split="val", subtask="d2n")
    assert len(day.queries) == 0  # the only query traverse is a night one
    with pytest.raises(UserError, match="subtask 'n2d' applies to val and test"):
        read_msls(world / "msls", cities=[CITY], split="train", subtask="n2d")


def test_msls_default_cities_are_the_official_split(world: Path) -> None:
    with pytest.raises(UserError, match=r"MSLS city 'cph': folder .*train_val/cph not found"):
        read_msls(world / "msls", split="val")


def test_msls_rows_in_any_order_panoramas_and_unmatched(msls_copy: Path, world: Path) -> None:
    (reference,) = read_msls(world / "msls", cities=[CITY])
    query_dir = msls_copy / "train_val" / CITY / "query"
    rewrite_csv(query_dir / "raw.csv", lambda h, rows: (h, rows[::-1]))
    rewrite_csv(query_dir / "seq_info.csv", lambda h, rows: (h, rows[1:] + rows[:1]))
    (shuffled,) = read_msls(msls_copy, cities=[CITY])
    assert_same_places(shuffled.queries, reference.queries)

    pano = reference.queries.paths[3].stem

    def mark_pano(header, rows):
        row = [r[header.index("key")] for r in rows].index(pano)
        return set_cell(header, rows, row, header.index("pano"), "True")

    rewrite_csv(query_dir / "raw.csv", mark_pano)

    def move_far(header, rows):
        col = header.index("easting")
        return set_cell(header, rows, 0, col, str(float(rows[0][col]) + 1000.0))

    rewrite_csv(query_dir / "postprocessed.csv", move_far)
    (city,) = read_msls(msls_copy, cities=[CITY])
    assert city.meta["panoramas"] == 1 and city.meta["dropped_queries"] == 1
    assert len(city.queries) == len(reference.queries) - 2
    assert pano not in {p.stem for p in city.queries.paths}
    assert len(city.meta["night"]) == len(city.queries)
    (with_panos,) = read_msls(msls_copy, cities=[CITY], exclude_panos=False)
    assert len(with_panos.queries) == len(reference.queries) - 1


def test_msls_test_split_has_no_positions(msls_copy: Path) -> None:
    test_city = msls_copy / "test" / CITY
    shutil.copytree(msls_copy / "train_val" / CITY, test_city, symlinks=True)
    for side in SIDES:
        (test_city / side / "raw.csv").unlink()
        (test_city / side / "postprocessed.csv").unlink()
    (city,) = read_msls(msls_copy, cities=[CITY], split="test")
    assert len(city.queries) > 0 and np.isnan(city.queries.xy).all() and np.isnan(city.database.yaw).all()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing_column", r"raw\.csv: missing column\(s\) ca"),
        ("not_a_number", r"postprocessed\.csv line 4: column 'northing' is 'north', expected a finite"),
        ("missing_key", r"key \S+ of .*postprocessed\.csv is missing from .*seq_info\.csv"),
        ("no_images", r"MSLS: folder .*query/images not found"),
        ("no_side", r"MSLS city 'synthtown': folder .*/database not found"),
    ],
)
def test_msls_bad_input(msls_copy: Path, damage: str, message: str) -> None:
    side = msls_copy / "train_val" / CITY / "query"
    if damage == "missing_column":
        rewrite_csv(side / "raw.csv", lambda h, rows: drop_column(h, rows, h.index("ca")))
    elif damage == "not_a_number":
        rewrite_csv(side / "postprocessed.csv", lambda h, r: set_cell(h, r, 2, h.index("northing"), "north"))
    elif damage == "missing_key":
        rewrite_csv(side / "seq_info.csv", lambda h, rows: (h, rows[:-1]))
    elif damage == "no_images":
        (side / "images").unlink()
    else:
        shutil.rmtree(side.parent / "database")
    with pytest.raises(UserError, match=message):
        read_msls(msls_copy, cities=[CITY])


# --- Pittsburgh -----------------------------------------------------------------------------------


def pitts_frame(path: Path) -> int:
    """The running frame id k of a synthetic Pittsburgh name NNN/kkkkkk_pitch1_yawY.jpg."""
    return int(path.name.split("_")[0])


def test_pittsburgh_splits_cover_the_world(world: Path, summary: dict, planned: dict) -> None:
    splits = {s: read_pittsburgh(world / "pittsburgh", s) for s in ("train", "val", "test")}
    for side, attr in (("database", "database"), ("query", "queries")):
        frames = sorted(pitts_frame(p) for d in splits.values() for p in getattr(d, attr).paths)
        assert frames == list(range(len(planned[side])))
    for name, dataset in splits.items():
        assert dataset.name == f"pitts30k_{name}" and dataset.meta["which_set"] == name
        assert (dataset.positive_m, dataset.positive_deg, dataset.train_positive_m) == (25.0, None, 10.0)
        for side, places in (("database", dataset.database), ("query", dataset.queries)):
            k = [pitts_frame(p) for p in places.paths]
            np.testing.assert_allclose(places.xy - origin(summary), planned[side].xy[k], atol=1e-6)
            assert np.isnan(places.yaw).all()
            assert all(p.is_file() for p in places.paths)
    explicit = read_pittsburgh(world / "pittsburgh" / "datasets" / "pitts30k_val.mat")
    assert explicit.queries.paths == splits["val"].queries.paths
    assert_same_places(explicit.database, splits["val"].database)


def test_pittsburgh_queries_folder_fallback(world: Path, tmp_path: Path) -> None:
    src = world / "pittsburgh"
    for name, target in (("datasets", "datasets"), ("images", "images"), ("queries", "queries_real")):
        (tmp_path / name).symlink_to(src / target)
    dataset = read_pittsburgh(tmp_path, "test")
    assert all(p.parent.parent == tmp_path / "queries" and p.is_file() for p in dataset.queries.paths)
    (tmp_path / "queries").unlink()
    with pytest.raises(UserError, match="queries_real .*not found"):
        read_pittsburgh(tmp_path, "test")


def _savemat(path: Path, struct: dict | None = None, **variables) -> Path:
    if struct is not None:
        variables["dbStruct"] = struct
    scipy.io.savemat(path, variables)
    return path


@pytest.mark.parametrize("damage", ["truncated", "random", "no_db_struct", "wrong_fields", "missing"])
def test_pittsburgh_corrupt_mat(world: Path, tmp_path: Path, damage: str) -> None:
    good = (world / "pittsburgh" / "datasets" / "pitts30k_train.mat").read_bytes()
    mat = tmp_path / "datasets" / "pitts30k_train.mat"
    mat.parent.mkdir()
    if damage == "truncated":
        mat.write_bytes(good[: len(good) // 3])
    elif damage == "random":
        mat.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif damage == "no_db_struct":
        _savemat(mat, something=np.ones(3))
    elif damage == "wrong_fields":
        _savemat(mat, {"whichSet": "train", "dbImageFns": np.array(["a.jpg"], dtype=object)})
    with pytest.raises(UserError, match=str(mat)) as info:
        read_pittsburgh(tmp_path, "train")
    assert "\n" not in str(info.value)


# --- TB-Places ------------------------------------------------------------------------------------


def test_tbplaces_poses_and_thresholds(world: Path, planned: dict) -> None:
    dataset = read_tbplaces(world / "tbplaces", "t00_day", "t01_night")
    sides = (("database", dataset.database, "t00_day"), ("query", dataset.queries, "t01_night"))
    for side, places, name in sides:
        np.testing.assert_allclose(places.xy, planned[side].xy, atol=1e-9)
        assert_yaw(places.yaw, planned[side].yaw)
        assert places.tags == (name,) * len(planned[side])
        assert places.paths[0] == world / "tbplaces" / name / "images" / "000000.jpg"
        assert all(p.is_file() for p in places.paths)
    assert (dataset.radius_m, dataset.fov_deg) == (3.5, 90.0)
    assert (dataset.positive_m, dataset.positive_deg, dataset.train_positive_m) == (1.75, 40.0, 0.7)


def test_tbplaces_pose_fields_and_image_fallback(world: Path, tmp_path: Path, planned: dict) -> None:
    index = json.loads((world / "tbplaces" / "t00_day.json").read_text())
    order = [6, 0, 5, 1, 3, 2, 4]  # qw, tx, qz, ty, qx, tz, qy
    index["pose_fields"] = [index["pose_fields"][i] for i in order]
    index["poses"] = [[pose[i] for i in order] for pose in index["poses"]]
    index["im_prefix"] = "/data/trimbot/W17"  # an author's absolute prefix, as in the released files
    (tmp_path / "t00_day.json").write_text(json.dumps(index))
    (tmp_path / "t00_day").symlink_to(world / "tbplaces" / "t00_day")
    places = read_tbplaces_set(tmp_path, "t00_day")
    np.testing.assert_allclose(places.xy, planned["database"].xy, atol=1e-9)
    assert_yaw(places.yaw, planned["database"].yaw)
    assert places.paths[0] == tmp_path / "t00_day" / "images" / "000000.jpg"
    (tmp_path / "t00_day").unlink()
    with pytest.raises(UserError, match=r"t00_day\.json: first image not found \(tried /data/trimbot"):
        read_tbplaces_set(tmp_path, "t00_day")


def test_quaternion_yaw_of_an_optical_frame() -> None:
    yaw = np.array([-3.0, -1.0, 0.0, 0.5, 2.9])
    body = Rotation.from_euler("z", yaw[:, None])
    optical_in_body = Rotation.from_quat([-0.5, 0.5, -0.5, 0.5])  # z forward, x right, y down (REP 103)
    assert_yaw(quaternion_yaw((body * optical_in_body).as_quat(), "z"), yaw)
    assert_yaw(quaternion_yaw(body.as_quat(), "x"), yaw)
    assert np.isnan(quaternion_yaw(body.as_quat(), "z")).all()  # body z points up: no heading


def test_tbplaces_similarity(world: Path, planned: dict) -> None:
    sim = read_tbplaces_similarity(world / "tbplaces", "t00_day")
    with h5py.File(world / "tbplaces" / "t00_day_similarity.h5") as f:
        expected = squareform(f["sim"][:]).astype(bool)
    dense = sim.toarray()
    assert dense.dtype == bool and dense.shape == (len(planned["database"]),) * 2
    np.testing.assert_array_equal(dense, expected)
    xy, yaw = planned["database"].xy, planned["database"].yaw
    i, j = np.nonzero(dense)
    assert np.hypot(*(xy[i] - xy[j]).T).max() <= 10.0 + 1e-9
    assert np.degrees(np.abs(np.mod(yaw[i] - yaw[j] + np.pi, 2 * np.pi) - np.pi)).max() <= 45.0 + 1e-9
    assert dense.sum() > len(xy)


def test_tbplaces_bad_input(world: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"TB-Places set 'W17': file .*W17\.json not found"):
        read_tbplaces(world / "tbplaces", "W17", "t01_night")
    (tmp_path / "W17.json").write_text('{"im_paths": [], "poses": [[1, 2, 3]]}')
    with pytest.raises(UserError, match=r"W17\.json: poses has shape \(1, 3\), expected n x 7"):
        read_tbplaces_set(tmp_path, "W17")
    (tmp_path / "W17_similarity.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match=r"W17_similarity\.h5: not a readable HDF5 file"):
        read_tbplaces_similarity(tmp_path, "W17")
    with h5py.File(tmp_path / "W17_similarity.h5", "w") as f:
        f["sim"] = np.zeros(4, dtype=np.uint8)
    with pytest.raises(UserError, match=r"has 4 entries, not n \(n - 1\) / 2"):
        read_tbplaces_similarity(tmp_path, "W17")


# --- robot recordings -----------------------------------------------------------------------------


def bag_odometry(bag: Path) -> tuple[np.ndarray, np.ndarray]:
    """Positions and yaws of /odom, read independently of the reader under test."""
    xy, yaw = [], []
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        conns = [c for c in reader.connections if c.topic == "/odom"]
        for conn, _, raw in reader.messages(connections=conns):
            pose = reader.deserialize(raw, conn.msgtype).pose.pose
            xy.append((pose.position.x, pose.position.y))
            q = pose.orientation
            yaw.append(Rotation.from_quat([q.x, q.y, q.z, q.w]).as_euler("zyx")[0])
    return np.asarray(xy), np.asarray(yaw)


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_bag_trajectory_and_its_cache(world: Path, tmp_path: Path, planned: dict) -> None:
    bag = world / "bags" / "t01_night"
    places = read_bag_trajectory(bag, tmp_path)
    odom_xy, odom_yaw = bag_odometry(bag)
    assert len(places) == len(planned["query"]) == len(odom_xy)
    np.testing.assert_allclose(places.xy, odom_xy, atol=1e-9)
    np.testing.assert_allclose(places.xy, planned["query"].xy, atol=1e-9)
    assert_yaw(places.yaw, planned["query"].yaw)
    assert_yaw(odom_yaw, planned["query"].yaw)
    assert places.tags == ("t01_night",) * len(places)
    assert places.paths[5] == tmp_path / "t01_night" / "000005.jpg"
    assert load_image(places.paths[0], None).shape == (3, 120, 160)

    folder = tmp_path / "t01_night"
    before = mtimes(folder)
    again = read_bag_trajectory(bag, tmp_path)
    assert mtimes(folder) == before  # nothing rewritten, not even the manifest
    assert_same_places(again, places)

    thinned = read_bag_trajectory(bag, tmp_path, min_spacing_m=2.0)
    assert 0 < len(thinned) < len(places)
    assert np.hypot(*np.diff(thinned.xy, axis=0).T).min() >= 2.0
    assert len(list(folder.glob("*.jpg"))) == len(thinned)  # the old images are gone
    assert mtimes(folder)["manifest.json"] != before["manifest.json"]


def _header(types: dict, stamp_ns: int, frame: str) -> object:
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    return types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame
    )


def write_robot_bag(path: Path, image_stamps_s: list[float], pose_stamps_s: list[float]) -> Path:
    """A bag as a robot records it: JPEG CompressedImage on /cam, PoseStamped on /pose.

    Pose k is at x = k m with yaw 0.1 k rad; image i is a flat grey of level 20 (i + 1), so the
    test can tell which message became which cached file. Messages go in the given order.
    """
    store = get_typestore(Stores.ROS2_KILTED)
    types = store.types
    with Writer(path, version=Writer.VERSION_LATEST) as writer:
        cam = writer.add_connection("/cam", "sensor_msgs/msg/CompressedImage", typestore=store)
        pose_conn = writer.add_connection("/pose", "geometry_msgs/msg/PoseStamped", typestore=store)
        for k, t in enumerate(pose_stamps_s):
            stamp = round(t * 1e9)
            q = Rotation.from_euler("z", 0.1 * k).as_quat()
            pose = types["geometry_msgs/msg/Pose"](
                position=types["geometry_msgs/msg/Point"](x=float(k), y=0.0, z=0.0),
                orientation=types["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
            )
            msg = types["geometry_msgs/msg/PoseStamped"](header=_header(types, stamp, "map"), pose=pose)
            writer.write(pose_conn, stamp, store.serialize_cdr(msg, pose_conn.msgtype))
        for i, t in enumerate(image_stamps_s):
            stamp = round(t * 1e9)
            jpeg = cv2.imencode(".jpg", np.full((24, 32, 3), 20 * (i + 1), np.uint8))[1].reshape(-1)
            msg = types["sensor_msgs/msg/CompressedImage"](
                header=_header(types, stamp, "camera"), format="jpeg", data=jpeg
            )
            writer.write(cam, 10**9 * 100 + i, store.serialize_cdr(msg, cam.msgtype))
    return path


def test_bag_unsorted_duplicate_and_unpaired_stamps(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Images in arrival order: stamps 2, 0, 1.01, 1.01 (duplicate), 3.5 (no pose within 50 ms), 4.
    bag = write_robot_bag(tmp_path / "robot", [2.0, 0.0, 1.01, 1.01, 3.5, 4.0], [0, 1, 2, 3, 4])
    with caplog.at_level(logging.INFO, logger="training.datasets.trajectory"):
        places = read_bag_trajectory(bag, tmp_path / "cache", image_topic="/cam", pose_topic="/pose")
    np.testing.assert_allclose(places.xy[:, 0], [0.0, 1.0, 2.0, 4.0])
    assert_yaw(places.yaw, [0.0, 0.1, 0.2, 0.4])
    grey = [float(cv2.imread(str(p)).mean()) for p in places.paths]
    np.testing.assert_allclose(grey, [40, 60, 20, 120], atol=2)  # message 1, 2, 0, 5 in stamp order
    assert "dropped 1 message(s) repeating the stamp" in caplog.text
    manifest = json.loads((tmp_path / "cache" / "robot" / "manifest.json").read_text())
    assert manifest["counts"] == {
        "images": 6, "duplicate_stamps": 1, "without_pose": 1, "too_close": 0, "undecodable": 0, "kept": 4,
    }  # fmt: skip


def test_bag_bad_input(world: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"bag .*no_such_bag not found"):
        read_bag_trajectory(tmp_path / "no_such_bag", tmp_path)
    bag = world / "bags" / "t00_day"
    with pytest.raises(UserError) as info:
        read_bag_trajectory(bag, tmp_path, image_topic="/front/image", pose_topic="/odom")
    assert str(info.value) == (
        f"bag {bag}: no messages on /front/image (topics in the bag: /camera/camera_info "
        "[sensor_msgs/msg/CameraInfo], /camera/image_raw [sensor_msgs/msg/Image], "
        "/odom [nav_msgs/msg/Odometry])"
    )
    with pytest.raises(UserError, match="topic /camera/camera_info carries sensor_msgs/msg/CameraInfo"):
        read_bag_trajectory(bag, tmp_path, pose_topic="/camera/camera_info")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match=r"bag .*empty_dir: cannot be read"):
        read_bag_trajectory(tmp_path / "empty_dir", tmp_path)
    unpaired = write_robot_bag(tmp_path / "late", [10.0], [0.0, 1.0])
    with pytest.raises(UserError, match=r"no image on /cam has a pose on /pose within 0.05 s \(closest: 9.0"):
        read_bag_trajectory(unpaired, tmp_path, image_topic="/cam", pose_topic="/pose")


@pytest.fixture
def image_folder(world: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    for i in range(3):
        shutil.copy(world / "tbplaces" / "t00_day" / "images" / f"{i:06d}.jpg", folder / f"img{i}.jpg")
    return folder


def write_rows(path: Path, rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_image_folder_both_formats(image_folder: Path, tmp_path: Path) -> None:
    yaw = [0.3, -2.0, 3.0]
    xy = [[1.0, 2.0], [3.0, 4.5], [-1.0, 0.0]]
    planar = [["image", "x", "y", "yaw"], *([f"img{i}.jpg", *xy[i], yaw[i]] for i in range(3))]
    quats = Rotation.from_euler("z", np.array(yaw)[:, None]).as_quat()
    header = ["image", "x", "y", "z", "qx", "qy", "qz", "qw"]
    full = [header, *([f"img{i}.jpg", *xy[i], 0.5, *quats[i]] for i in range(3))]
    for rows in (planar, full):
        places = read_image_folder(image_folder, write_rows(tmp_path / "poses.csv", rows))
        np.testing.assert_allclose(places.xy, xy)
        assert_yaw(places.yaw, yaw)
        assert places.paths == tuple(image_folder / f"img{i}.jpg" for i in range(3))
        assert places.tags == ("run",) * 3

    dataset = trajectory_dataset(places, places.subset(np.array([2, 0])), "site", positive_m=5.0)
    assert (dataset.name, len(dataset.queries), dataset.positive_m) == ("site", 2, 5.0)


PLANAR = ["image", "x", "y", "yaw"]
FULL = ["image", "x", "y", "z", "qx", "qy", "qz", "qw"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["image", "x", "y"], ["img0.jpg", 0, 0]], r"poses\.csv: needs a yaw column or the columns qx,qy"),
        ([["image", "x", "yaw"], ["img0.jpg", 0, 0]], r"poses\.csv: missing column\(s\) y"),
        ([PLANAR, ["img0.jpg", 0, 0, 0], ["img1.jpg", "1,5", 0, 0]], r"poses\.csv line 3: column 'x' is"),
        ([PLANAR, ["img0.jpg", 0, 0, 0], ["nope.jpg", 0, 0, 0]], r"poses\.csv line 3: image .*nope\.jpg not"),
        ([PLANAR, ["img0.jpg", 0, 0]], r"poses\.csv line 2: 3 fields, the header has 4"),
        ([FULL, ["img0.jpg", 0, 0, 0, 0, 0, 0, 0]], r"poses\.csv line 2: quaternion .* is not a rotation"),
    ],
)
def test_image_folder_bad_csv(image_folder: Path, tmp_path: Path, rows: list, message: str) -> None:
    with pytest.raises(UserError, match=message):
        read_image_folder(image_folder, write_rows(tmp_path / "poses.csv", rows))


def test_image_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"image folder: folder .*absent not found"):
        read_image_folder(tmp_path / "absent", tmp_path / "poses.csv")


# --- images ---------------------------------------------------------------------------------------


def test_load_image_resizes_exactly(world: Path) -> None:
    path = world / "tbplaces" / "t00_day" / "images" / "000000.jpg"
    image = load_image(path, (48, 100))
    assert image.shape == (3, 48, 100) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    native = load_image(path, None)
    rgb = cv2.imread(str(path))[..., ::-1]
    np.testing.assert_allclose(native.permute(1, 2, 0).numpy() * 255, rgb, atol=1e-3)


def test_image_list_skips_unreadable_images(
    world: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = world / "tbplaces" / "t00_day" / "images" / "000001.jpg"
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8" + os.urandom(500))
    missing = tmp_path / "missing.jpg"
    dataset = ImageListDataset([good, corrupt, missing, good], size=(60, 80))
    with caplog.at_level(logging.WARNING, logger="training.datasets.images"):
        items = [dataset[i] for i in range(4)] + [dataset[1]]
    assert [ok for _, _, ok in items] == [True, False, False, True, False]
    assert [index for _, index, _ in items] == [0, 1, 2, 3, 1]
    assert all(t.shape == (3, 60, 80) for t, _, _ in items)
    assert not items[1][0].any() and not items[2][0].any() and items[0][0].any()
    assert dataset.failures == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # once per file
    assert str(corrupt) in warnings[0] and str(missing) in warnings[1] and "not found" in warnings[1]
    with pytest.raises(UnreadableImage, match=f"image {corrupt}: not a readable image"):
        load_image(corrupt)
