"""The place map: round trips for every index type, atomic saves (also under SIGKILL), and the checks
that keep a corrupt, foreign or incompatible map from being searched."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from vpr_ros.bundle import sha256_file
from vpr_ros.errors import InputError
from vpr_ros.io import fileio
from vpr_ros.mapping import map_files as pm
from vpr_ros.mapping.map_files import MapError
from vpr_ros.mapping.place_map import PlaceMap, Session

REPO_ROOT = Path(__file__).resolve().parents[1]
HASH = "sha256:" + "ab" * 32
OTHER_HASH = "sha256:" + "ef" * 32
DIM = 32


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """FAISS's OpenMP threads spin-wait; on a busy test machine that turns 0.1 s of IVF-PQ training
    into seconds. One thread keeps these tests fast and their timing stable."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_map(n: int = 300, index: str = "flat", params: dict | None = None, seed: int = 0) -> PlaceMap:
    rng = np.random.default_rng(seed)
    place_map = PlaceMap(DIM, HASH, frame_id="odom", index=index, index_params=params, model_summary="test")
    quats = rng.standard_normal((n, 4))
    place_map.add(
        unit_rows(rng, n),
        1_700_000_000_123_456_789 + np.arange(n, dtype=np.int64) * 100_000_000,
        np.cumsum(rng.uniform(-1, 1, (n, 3)), axis=0),
        quats / np.linalg.norm(quats, axis=1, keepdims=True),
        [f"run{i % 3}.db3#{i}" for i in range(n)],
    )
    return place_map


def near(place_map: PlaceMap, count: int, seed: int = 1) -> np.ndarray:
    """Queries close to the first ``count`` keyframes."""
    noisy = place_map.descriptors[:count] + 0.05 * unit_rows(np.random.default_rng(seed), count)
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def hidden_siblings(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.parent.iterdir() if p.name.startswith("."))


def reseal(directory: Path, name: str) -> None:
    """Record a deliberately altered file's hash, to reach the checks behind the hash check."""
    meta = json.loads((directory / pm.META_FILE).read_text())
    path = directory / name
    meta["files"][name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (directory / pm.META_FILE).write_text(json.dumps(meta))


def edit_meta(directory: Path, **changes) -> None:
    meta = json.loads((directory / pm.META_FILE).read_text())
    meta.update(changes)
    (directory / pm.META_FILE).write_text(json.dumps(meta))


# ---------------------------------------------------------------------- round trips and search


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivfpq"])
def test_save_load_round_trip(tmp_path, index):
    original = make_map(600, index)
    original.save(tmp_path / "map")
    loaded = PlaceMap.load(tmp_path / "map", expected_model_hash=HASH, expected_dim=DIM)
    assert len(loaded) == 600
    assert (loaded.frame_id, loaded.index_type, loaded.model_summary) == ("odom", index, "test")
    assert loaded.index_params == original.index_params
    np.testing.assert_array_equal(loaded.descriptors, original.descriptors)
    np.testing.assert_array_equal(loaded.stamps_ns, original.stamps_ns)
    np.testing.assert_array_equal(loaded.positions, original.positions)  # bit-exact through the CSV
    np.testing.assert_array_equal(loaded.orientations, original.orientations)
    assert loaded.sources == original.sources
    assert loaded.travelled_m == pytest.approx(original.travelled_m)
    queries = near(original, 50)
    for a, b in zip(original.search(queries, 5), loaded.search(queries, 5)):
        np.testing.assert_array_equal(a, b)
    sims, ids = loaded.search(queries, 5)
    assert np.mean(ids[:, 0] == np.arange(50)) >= 0.9
    np.testing.assert_allclose(sims[:, 0], np.sum(loaded.descriptors[ids[:, 0]] * queries, 1), atol=1e-5)


def test_map_json_describes_the_map(tmp_path):
    make_map(20).save(tmp_path / "map")
    meta = json.loads((tmp_path / "map" / "map.json").read_text())
    assert meta["schema"] == "vpr_ros.place_map/2"
    assert (meta["frame_id"], meta["descriptor_dim"], meta["keyframes"]) == ("odom", DIM, 20)
    assert meta["model"] == {"content_hash": HASH, "summary": "test"}
    assert meta["index"] == {"type": "flat"}
    assert sorted(meta["files"]) == ["descriptors.npy", "index.faiss", "keyframes.csv"]
    assert meta["created"].endswith("Z") and meta["travelled_m"] > 0
    [session] = meta["sessions"]
    assert session["name"] == "unnamed" and session["camera_extrinsic"] == [0, 0, 0, 0, 0, 0, 1]
    assert session["keyframes"] == 20 and session["created"].endswith("Z")
    lines = (tmp_path / "map" / "keyframes.csv").read_text().splitlines()
    assert lines[0] == "id,stamp_ns,x,y,z,qx,qy,qz,qw,session,source"
    assert lines[1].startswith("0,1700000000123456789,") and lines[1].endswith(",0,run0.db3#0")


def test_flat_search_is_exact_and_pads_with_minus_one(tmp_path):
    place_map = make_map(7)
    queries = near(place_map, 3)
    sims, ids = place_map.search(queries, 10)
    assert sims.shape == ids.shape == (3, 10) and sims.dtype == np.float32 and ids.dtype == np.int64
    brute = queries @ place_map.descriptors.T
    np.testing.assert_array_equal(ids[:, :7], np.argsort(-brute, axis=1))
    np.testing.assert_allclose(sims[:, :7], -np.sort(-brute, axis=1), atol=1e-6)
    assert np.all(ids[:, 7:] == -1) and np.all(sims[:, 7:] == -np.inf)
    empty_sims, empty_ids = PlaceMap(DIM, HASH).search(queries, 2)
    assert np.all(empty_ids == -1) and np.all(empty_sims == -np.inf)


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivfpq"])
def test_mapper_resumes_after_load(tmp_path, index):
    make_map(400, index).save(tmp_path / "map")
    loaded = PlaceMap.load(tmp_path / "map")
    extra = make_map(30, seed=5)
    ids = loaded.add(extra.descriptors, extra.stamps_ns, extra.positions, extra.orientations, extra.sources)
    np.testing.assert_array_equal(ids, np.arange(400, 430))
    _, found = loaded.search(near(extra, 30), 1)
    assert np.mean(found[:, 0] == ids) >= 0.9
    loaded.save(tmp_path / "map", overwrite=True)
    assert len(PlaceMap.load(tmp_path / "map")) == 430


def test_single_keyframe_add_and_sanitised_source():
    place_map = PlaceMap(DIM, HASH)
    d = unit_rows(np.random.default_rng(0), 1)[0]
    ids = place_map.add(d, 5, [1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 2.0], ["bag,one\nframe 3"])
    assert ids.tolist() == [0] and place_map.sources == ["bag_one_frame 3"]
    np.testing.assert_array_equal(place_map.orientations[0], [0.0, 0.0, 0.0, 1.0])
    assert not place_map.positions.flags.writeable


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"descriptors": np.ones((2, DIM), np.float32)}, "L2 norm"),
        ({"descriptors": np.zeros((2, DIM + 1), np.float32)}, "[N, 32]"),
        ({"descriptors": np.ones((2, DIM), np.int64)}, "floating point"),
        ({"stamps_ns": np.array([1.5, 2.5])}, "integer nanoseconds"),
        ({"stamps_ns": np.array([1])}, "stamps_ns must have shape [2]"),
        ({"positions": np.array([[0.0, 0.0, np.nan], [0.0, 0.0, 0.0]])}, "positions row 0"),
        ({"orientations": np.zeros((2, 4))}, "zero norm"),
        ({"sources": ["only one"]}, "list of 2 strings"),
    ],
)
def test_add_rejects_bad_input_and_changes_nothing(change, message):
    place_map = make_map(5)
    d = unit_rows(np.random.default_rng(3), 2)
    args = {
        "descriptors": d,
        "stamps_ns": [1, 2],
        "positions": np.zeros((2, 3)),
        "orientations": [[0, 0, 0, 1]] * 2,
    }
    args.update(change)
    with pytest.raises(InputError, match=re.escape(message)):
        place_map.add(**args)
    assert len(place_map) == 5 and len(place_map.descriptors) == 5


def test_search_checks_queries_and_k():
    place_map = make_map(5)
    with pytest.raises(InputError, match="32-D descriptors"):
        place_map.search(unit_rows(np.random.default_rng(0), 1, 16), 1)
    with pytest.raises(InputError, match="L2 norm"):
        place_map.search(np.full((1, DIM), 0.5, np.float32), 1)
    with pytest.raises(InputError, match="k must be"):
        place_map.search(place_map.descriptors[:1], 0)


def test_bad_constructor_arguments():
    with pytest.raises(InputError, match="unknown"):
        PlaceMap(DIM, HASH, index="lsh")
    with pytest.raises(InputError, match="no parameter efSearch"):
        PlaceMap(DIM, HASH, index="flat", index_params={"efSearch": 3})
    with pytest.raises(InputError, match="must divide"):
        PlaceMap(DIM, HASH, index="ivfpq", index_params={"m": 5})
    with pytest.raises(InputError, match="model_hash"):
        PlaceMap(DIM, "")


def test_ivfpq_needs_enough_keyframes(tmp_path):
    small = make_map(100, "ivfpq")
    with pytest.raises(MapError, match="needs at least 256 keyframes to train, the map has 100"):
        small.save(tmp_path / "map")
    with pytest.raises(InputError, match="use index 'flat'"):
        small.search(small.descriptors[:1], 1)
    assert not (tmp_path / "map").exists() and hidden_siblings(tmp_path / "map") == []


# ---------------------------------------------------------------------- atomic saves


def test_overwrite_is_refused_without_the_flag(tmp_path):
    make_map(10).save(tmp_path / "map")
    with pytest.raises(
        MapError, match="exists and is not empty; pass overwrite=True to replace the place map there"
    ):
        make_map(20).save(tmp_path / "map")
    assert len(PlaceMap.load(tmp_path / "map")) == 10
    make_map(20).save(tmp_path / "map", overwrite=True)
    assert len(PlaceMap.load(tmp_path / "map")) == 20
    assert hidden_siblings(tmp_path / "map") == []


def test_a_directory_that_is_not_a_map_is_never_replaced(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(MapError, match="not a place map"):
        make_map(10).save(tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    make_map(10).save(tmp_path / "empty")  # an empty directory holds nothing to lose
    assert len(PlaceMap.load(tmp_path / "empty")) == 10
    with pytest.raises(MapError, match="no keyframes"):
        PlaceMap(DIM, HASH).save(tmp_path / "nothing")


@pytest.mark.parametrize("target", ["_write_csv", "faiss.write_index", "replace_directory"])
@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "rename-aside"])
def test_a_failed_save_leaves_the_old_map_and_no_staging(tmp_path, monkeypatch, target, exchange):
    make_map(10).save(tmp_path / "map")
    if not exchange:
        monkeypatch.setattr(fileio, "exchange_paths", lambda a, b: False)

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    owner, name = (faiss, "write_index") if target.startswith("faiss") else (pm, target)
    monkeypatch.setattr(owner, name, crash)
    with pytest.raises(OSError, match="simulated"):
        make_map(20, seed=9).save(tmp_path / "map", overwrite=True)
    assert len(PlaceMap.load(tmp_path / "map")) == 10
    assert hidden_siblings(tmp_path / "map") == []


def test_rename_aside_fallback_restores_when_the_new_map_cannot_be_renamed_in(tmp_path, monkeypatch):
    make_map(10).save(tmp_path / "map")
    monkeypatch.setattr(fileio, "exchange_paths", lambda a, b: False)
    real_rename = fileio.os.rename

    def failing_second_rename(src, dst):
        if ".staging-" in str(src):
            raise OSError("rename failed (simulated)")
        real_rename(src, dst)

    monkeypatch.setattr(fileio.os, "rename", failing_second_rename)
    with pytest.raises(OSError, match="simulated"):
        make_map(20).save(tmp_path / "map", overwrite=True)
    monkeypatch.undo()
    assert len(PlaceMap.load(tmp_path / "map")) == 10
    assert hidden_siblings(tmp_path / "map") == []


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_saves_are_swept_and_an_aside_map_restored(tmp_path):
    directory = tmp_path / "map"
    make_map(10).save(directory)
    pid = dead_pid()
    (tmp_path / f".map.staging-{pid}-00ff").mkdir()
    directory.rename(tmp_path / f".map.old-{pid}-0a0b")  # killed between the fallback's two renames
    with pytest.raises(MapError, match="interrupted save left the previous map"):
        PlaceMap.load(directory)
    make_map(20).save(directory, overwrite=True)  # the sweep puts the old map back, then replaces it
    assert len(PlaceMap.load(directory)) == 20
    assert hidden_siblings(directory) == []


CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from vpr_ros.mapping.place_map import PlaceMap

    rng = np.random.default_rng(7)
    maps = []
    for n in (8000, 8001):  # every save replaces the other version
        d = rng.standard_normal((n, 32)).astype(np.float32)
        maps.append(PlaceMap(32, sys.argv[2]))
        maps[-1].add(d / np.linalg.norm(d, axis=1, keepdims=True), np.arange(n), rng.normal(size=(n, 3)),
                     np.tile([0.0, 0.0, 0.0, 1.0], (n, 1)), [f"big#{i}" for i in range(n)])
    print("ready", flush=True)
    for i in range(10**9):
        maps[i % 2].save(sys.argv[1], overwrite=True)
        print("saved", flush=True)
    """
)


def test_sigkill_during_save_leaves_a_whole_map(tmp_path):
    """Trial i kills the saving child at a random moment after its i-th complete save, so the
    kills land in the first replacement of the original map and in later replacements alike."""
    directory = tmp_path / "map"
    make_map(300).save(directory)
    rng = random.Random(0)
    for trial in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory), HASH],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            for expected in ["ready"] + ["saved"] * trial:
                assert child.stdout.readline().strip() == expected
            time.sleep(rng.uniform(0.0, 0.15))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        loaded = PlaceMap.load(directory, expected_model_hash=HASH)
        assert len(loaded) in ((300, 8000, 8001) if trial == 0 else (8000, 8001))
    make_map(300).save(directory, overwrite=True)
    assert hidden_siblings(directory) == []


# ---------------------------------------------------------------------- refusing bad maps


@pytest.fixture
def saved(tmp_path) -> Path:
    make_map(50).save(tmp_path / "map")
    return tmp_path / "map"


@pytest.fixture
def no_faiss_reads(monkeypatch):
    """Any call into FAISS's readers fails the test: corrupt bytes must be stopped before FAISS."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a FAISS reader was called")

    monkeypatch.setattr(faiss, "deserialize_index", forbidden)
    monkeypatch.setattr(faiss, "read_index", forbidden)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_index_bytes_never_reach_faiss(saved, no_faiss_reads):
    flip_byte(saved / "index.faiss", 40)
    with pytest.raises(MapError, match=r"index\.faiss is corrupt \(sha256 differs"):
        PlaceMap.load(saved)


def test_truncated_csv(saved, no_faiss_reads):
    path = saved / "keyframes.csv"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(MapError, match=r"keyframes\.csv is \d+ bytes, map\.json says \d+ \(truncated"):
        PlaceMap.load(saved)


def test_csv_with_a_row_missing_but_a_matching_hash(saved):
    path = saved / "keyframes.csv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    reseal(saved, "keyframes.csv")
    with pytest.raises(MapError, match=r"keyframes\.csv has 49 keyframes, map\.json says 50"):
        PlaceMap.load(saved)


def test_malformed_csv_row_names_the_line(saved):
    path = saved / "keyframes.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace(",", ";", 1)
    path.write_text("".join(lines))
    reseal(saved, "keyframes.csv")
    with pytest.raises(MapError, match=r"keyframes\.csv line 4 is malformed"):
        PlaceMap.load(saved)


@pytest.mark.parametrize("name", ["index.faiss", "descriptors.npy", "keyframes.csv", "map.json"])
def test_missing_file(saved, name, no_faiss_reads):
    (saved / name).unlink()
    with pytest.raises(MapError, match=re.escape(f"{name} is missing")):
        PlaceMap.load(saved)


def test_other_schema(saved):
    edit_meta(saved, schema="vpr_ros.place_map/1")
    with pytest.raises(
        MapError,
        match=r"schema 'vpr_ros.place_map/1'; this vpr_ros reads 'vpr_ros.place_map/2'",
    ):
        PlaceMap.load(saved)


def test_other_model_hash(saved):
    with pytest.raises(MapError) as info:
        PlaceMap.load(saved, expected_model_hash=OTHER_HASH)
    assert str(info.value) == (
        f"map {saved} was built with model sha256:abababab… but the loaded model is sha256:efefefef…; "
        "rebuild the map with this model"
    )


def test_other_dim(saved):
    with pytest.raises(MapError, match="holds 32-D descriptors but the loaded model outputs 64-D"):
        PlaceMap.load(saved, expected_model_hash=HASH, expected_dim=64)


def test_descriptors_of_the_wrong_shape(saved):
    np.save(saved / "descriptors.npy", np.zeros((50, 16), np.float32))
    reseal(saved, "descriptors.npy")
    with pytest.raises(
        MapError, match=r"descriptors\.npy is float32 \[50, 16\], expected float32 \[50, 32\]"
    ):
        PlaceMap.load(saved)


def test_pickled_descriptors_are_refused(saved):
    np.save(saved / "descriptors.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    reseal(saved, "descriptors.npy")
    with pytest.raises(MapError, match=r"descriptors\.npy is not a readable \.npy file"):
        PlaceMap.load(saved)


def test_index_of_another_type(saved):
    other = faiss.IndexHNSWFlat(DIM, 8, faiss.METRIC_INNER_PRODUCT)
    other.add(PlaceMap.load(saved).descriptors)
    faiss.write_index(other, str(saved / "index.faiss"))
    reseal(saved, "index.faiss")
    with pytest.raises(MapError, match="is a IndexHNSWFlat .* expected an inner-product IndexFlatIP"):
        PlaceMap.load(saved)


def test_unknown_index_parameter_in_map_json(saved):
    edit_meta(saved, index={"type": "flat", "nlist": 3})
    with pytest.raises(MapError, match="map.json: flat index has no parameter nlist"):
        PlaceMap.load(saved)


# ---------------------------------------------------------------------- sessions


CAMERA = (0.3, -0.1, 1.2, -0.5, 0.5, -0.5, 0.5)  # 0.3 m ahead, 1.2 m up, an optical frame


def two_session_map() -> PlaceMap:
    """Session "day" (identity camera, keyframes 0-9 along x) and "night" (CAMERA, 5 along y)."""
    rng = np.random.default_rng(4)
    place_map = PlaceMap(DIM, HASH, frame_id="map")
    day = place_map.add_session(Session("day"))
    night = place_map.add_session(Session("night", CAMERA))
    identity = np.tile([0.0, 0.0, 0.0, 1.0], (10, 1))
    place_map.add(unit_rows(rng, 10), np.arange(10), np.c_[np.arange(10.0), np.zeros((10, 2))], identity,
                  session=day)  # fmt: skip
    place_map.add(unit_rows(rng, 5), np.arange(5), np.c_[np.zeros(5), np.arange(5.0), np.zeros(5)],
                  identity[:5], session=night)  # fmt: skip
    return place_map


def test_sessions_keep_their_camera_and_keyframes_through_a_save(tmp_path):
    original = two_session_map()
    original.save(tmp_path / "map")
    loaded = PlaceMap.load(tmp_path / "map")
    assert [s.name for s in loaded.sessions] == ["day", "night"]
    assert loaded.sessions[1].camera_extrinsic == CAMERA and loaded.sessions[0].created.endswith("Z")
    np.testing.assert_array_equal(loaded.session_ids, [0] * 10 + [1] * 5)
    assert loaded.session_counts().tolist() == [10, 5]
    # 9 m along the first session and 4 m along the second; the jump between them is not travel
    assert loaded.travelled_m == pytest.approx(13.0)
    meta = json.loads((tmp_path / "map" / "map.json").read_text())
    assert [s["keyframes"] for s in meta["sessions"]] == [10, 5]


def test_camera_poses_compose_the_base_pose_with_the_sessions_extrinsic():
    place_map = two_session_map()
    positions, orientations = place_map.camera_poses(np.array([2, 12]))
    np.testing.assert_allclose(positions, [[2, 0, 0], [0.3, 1.9, 1.2]], atol=1e-12)  # day: camera at base
    np.testing.assert_allclose(orientations, [[0, 0, 0, 1], [-0.5, 0.5, -0.5, 0.5]], atol=1e-12)
    extrinsic_positions, _ = place_map.extrinsics()
    assert extrinsic_positions.shape == (15, 3) and np.all(extrinsic_positions[10:] == CAMERA[:3])


def test_extend_appends_sessions_and_refuses_other_models_or_frames():
    merged = two_session_map()
    merged.extend(two_session_map())
    assert len(merged) == 30 and [s.name for s in merged.sessions] == ["day", "night", "day", "night"]
    np.testing.assert_array_equal(merged.session_ids[15:], [2] * 10 + [3] * 5)
    sims, ids = merged.search(merged.descriptors[20], 2)
    assert set(ids[0].tolist()) == {5, 20}  # the same descriptor in both copies
    for other, reason in ((PlaceMap(DIM, OTHER_HASH, "map"), "different models"),
                          (PlaceMap(DIM, HASH, "odom"), "different frames")):  # fmt: skip
        other.add(unit_rows(np.random.default_rng(0), 1), 0, [0, 0, 0], [0, 0, 0, 1])
        with pytest.raises(MapError, match=reason):
            merged.extend(other)
        assert len(merged) == 30 and len(merged.sessions) == 4


def test_select_keeps_the_chosen_keyframes_and_drops_empty_sessions():
    place_map = two_session_map()
    cropped = place_map.select(place_map.positions[:, 0] >= 3)  # day keyframes 3-9; no night one
    assert len(cropped) == 7 and [s.name for s in cropped.sessions] == ["day"]
    np.testing.assert_array_equal(cropped.descriptors, place_map.descriptors[3:10])
    with pytest.raises(InputError, match="15 booleans"):
        place_map.select(np.ones(3, bool))


def test_keyframes_of_a_session_that_does_not_exist_are_refused():
    place_map = two_session_map()
    with pytest.raises(InputError, match="session 2 does not exist"):
        place_map.add(place_map.descriptors[0], 0, [0, 0, 0], [0, 0, 0, 1], session=2)
    with pytest.raises(InputError, match="camera extrinsic"):
        Session("bad", (0, 0, 0, 0, 0, 0, 0))
    assert len(place_map) == 15


def test_session_counts_that_disagree_with_the_keyframes_are_refused(tmp_path):
    two_session_map().save(tmp_path / "map")
    meta = json.loads((tmp_path / "map" / "map.json").read_text())
    meta["sessions"][0]["keyframes"] = 9
    (tmp_path / "map" / "map.json").write_text(json.dumps(meta))
    with pytest.raises(MapError, match=r"lists \[9, 5\] keyframes per session, keyframes.csv has \[10, 5\]"):
        PlaceMap.load(tmp_path / "map")
