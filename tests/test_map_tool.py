"""``vpr-map`` end to end on small random maps of hand-placed keyframes: info (text and JSON), merge,
crop by box and by session, in-place crops, and the refusals (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import faiss
import numpy as np
import pytest

from vpr_ros.io import fileio
from vpr_ros.mapping import map_files
from vpr_ros.mapping.map_files import MapContents
from vpr_ros.mapping.map_tool import human_size, main
from vpr_ros.mapping.place_map import PlaceMap, Session

HASH = "sha256:" + "ab" * 32
OTHER_HASH = "sha256:" + "ef" * 32
DIM = 32
SUMMARY = "resnet18-gem 32-D at 224x224 (sha256:abababab)"  # what a bundle's summary() looks like
CAMERA = (0.3, -0.1, 1.2, -0.5, 0.5, -0.5, 0.5)
# Base positions: "day" runs along +x then climbs diagonally, "night" runs along -x at y 5..7.
DAY = [(0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 1, 0), (4, 2, 0), (5, 3, 0.5)]
NIGHT = [(0, 5, 0), (-1, 5, 0), (-2, 6, 0), (-3, 7, -0.25)]
DAY_CREATED, NIGHT_CREATED = "2025-05-01T08:00:00Z", "2025-05-02T21:00:00Z"


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """One FAISS thread keeps the IVF-PQ training fast on a busy machine (see test_place_map)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_map(
    sessions: list[tuple[Session, list]],
    seed: int = 0,
    frame_id: str = "map",
    model_hash: str = HASH,
    index: str = "flat",
) -> PlaceMap:
    """A map of the given sessions, each with keyframes at the given base positions."""
    rng = np.random.default_rng(seed)
    place_map = PlaceMap(DIM, model_hash, frame_id, index, model_summary=SUMMARY)
    for session, positions in sessions:
        n = len(positions)
        place_map.add(
            unit_rows(rng, n),
            np.arange(n),
            np.array(positions, dtype=float),
            np.tile([0.0, 0.0, 0.0, 1.0], (n, 1)),
            [f"{session.name}#{i}" for i in range(n)],
            session=place_map.add_session(session),
        )
    return place_map


def two_session_map(**kwargs) -> PlaceMap:
    day = Session("day", created=DAY_CREATED)
    return make_map([(day, DAY), (Session("night", CAMERA, NIGHT_CREATED), NIGHT)], **kwargs)


def saved(place_map: PlaceMap, directory: Path) -> Path:
    place_map.save(directory)
    return directory


def run_cli(capsys, *args: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_refused(capsys, *args: object) -> str:
    """Exit 2, nothing on stdout, one 'error: ...' line on stderr; returns the line."""
    rc, stdout, stderr = run_cli(capsys, *args)
    lines = stderr.strip().splitlines()
    assert rc == 2 and stdout == "" and len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def hidden_siblings(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.parent.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------- info


def test_info_text(tmp_path, capsys):
    site = saved(two_session_map(), tmp_path / "site")
    rc, stdout, stderr = run_cli(capsys, "info", site)
    assert rc == 0 and stderr == ""
    created = json.loads((site / "map.json").read_text())["created"]
    size = human_size(sum(p.stat().st_size for p in site.iterdir()))
    assert stdout == (
        f"map          {site}\n"
        "keyframes    10 in 2 sessions\n"
        "frame        map\n"
        "bounds       x -3.00..5.00  y 0.00..7.00  z -0.25..0.50 m\n"
        "travelled    10.2 m\n"
        "model        resnet18-gem 32-D at 224x224 (sha256:abababab)\n"
        "descriptors  32-D\n"
        "index        flat\n"
        f"size         {size}\n"
        f"created      {created}\n"
        "sessions     #  name   keyframes  camera x y z qx qy qz qw        created\n"
        f"             0  day            6  0 0 0 0 0 0 1                   {DAY_CREATED}\n"
        f"             1  night          4  0.3 -0.1 1.2 -0.5 0.5 -0.5 0.5  {NIGHT_CREATED}\n"
    )
    assert size.endswith(" kB")


def test_info_json(tmp_path, capsys):
    site = saved(two_session_map(), tmp_path / "site")
    rc, stdout, _ = run_cli(capsys, "info", site, "--json")
    assert rc == 0 and len(stdout.splitlines()) == 1
    info = json.loads(stdout)
    assert (info["map"], info["keyframes"], info["frame_id"], info["descriptor_dim"]) == (
        str(site),
        10,
        "map",
        32,
    )
    assert info["bounds_m"] == {"x": [-3.0, 5.0], "y": [0.0, 7.0], "z": [-0.25, 0.5]}
    day = 1 + 1 + math.sqrt(2) + math.sqrt(2) + math.sqrt(1 + 1 + 0.25)
    night = 1 + math.sqrt(2) + math.sqrt(1 + 1 + 0.0625)
    assert info["travelled_m"] == pytest.approx(day + night)
    assert info["model"] == {"content_hash": HASH, "summary": SUMMARY}
    assert info["index"] == {"type": "flat", "params": {}, "automatic": []}
    assert info["size_bytes"] == sum(p.stat().st_size for p in site.iterdir())
    assert info["created"] == json.loads((site / "map.json").read_text())["created"]
    assert info["sessions"] == [
        {"index": 0, "name": "day", "keyframes": 6, "camera_extrinsic": [0, 0, 0, 0, 0, 0, 1],
         "created": DAY_CREATED},
        {"index": 1, "name": "night", "keyframes": 4, "camera_extrinsic": list(CAMERA),
         "created": NIGHT_CREATED},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("index", "shown"),
    [
        ("hnsw", "hnsw M=32 efConstruction=40 efSearch=64"),
        # 300 keyframes: nlist = 2^floor(log2(min(2 sqrt 300, 300 / 39))) = 4; m = largest divisor of 32 <= 4
        ("ivfpq", "ivfpq nlist=4 (auto) m=4 (auto) nbits=8 nprobe=32 rerank=256"),
    ],
)
def test_info_shows_the_index_parameters(tmp_path, capsys, index, shown):
    positions = np.random.default_rng(2).uniform(-50, 50, (300, 3)).tolist()
    site = saved(make_map([(Session("big"), positions)], index=index), tmp_path / "site")
    rc, stdout, _ = run_cli(capsys, "info", site)
    assert rc == 0 and f"\nindex        {shown}\n" in stdout
    if index == "ivfpq":  # the numbers are those of the index on disk
        built = faiss.read_index(str(site / "index.faiss"))
        assert (built.nlist, built.pq.M) == (4, 4)
        rc, stdout, _ = run_cli(capsys, "info", site, "--json")
        assert json.loads(stdout)["index"]["automatic"] == ["nlist", "m"]


def test_info_of_a_map_without_keyframes(tmp_path, capsys):
    """Only a hand-made map can be empty (save refuses); info still describes it."""
    meta = {"frame_id": "map", "descriptor_dim": DIM, "model": {"content_hash": HASH, "summary": ""},
            "index": {"type": "flat"}, "keyframes": 0, "travelled_m": 0.0, "created": DAY_CREATED,
            "sessions": []}  # fmt: skip
    none = np.zeros(0, np.int64)
    contents = MapContents(meta, none, np.zeros((0, 3)), np.zeros((0, 4)), none, [],
                           np.zeros((0, DIM), np.float32), faiss.IndexFlatIP(DIM))  # fmt: skip
    map_files.write_map_directory(tmp_path / "empty", contents)
    rc, stdout, _ = run_cli(capsys, "info", tmp_path / "empty")
    assert rc == 0
    assert "\nkeyframes    0 in 0 sessions\n" in stdout and "\nbounds       none\n" in stdout
    assert "\nmodel        sha256:abababab\n" in stdout
    assert stdout.endswith("sessions     #  name  keyframes  camera x y z qx qy qz qw  created\n")


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (48_240, "48.2 kB"),
        (999_960, "1.0 MB"),
        (1_300_000, "1.3 MB"),
    ],
)
def test_human_size(size, text):
    assert human_size(size) == text


def test_info_refuses_a_missing_or_corrupt_map(tmp_path, capsys):
    assert (
        assert_refused(capsys, "info", tmp_path / "nope")
        == f"error: place map {tmp_path / 'nope'}: not a directory"
    )
    site = saved(two_session_map(), tmp_path / "site")
    (site / "descriptors.npy").write_bytes((site / "descriptors.npy").read_bytes()[:-4] + b"\0\0\0\0")
    assert "descriptors.npy is corrupt" in assert_refused(capsys, "info", site)


# ---------------------------------------------------------------------- merge


def test_merge_appends_every_session_in_order(tmp_path, capsys):
    first = two_session_map(index="hnsw")
    dusk = make_map([(Session("dusk", CAMERA), [(9, 9, 0), (10, 9, 0), (11, 9, 0)])], seed=1)
    out = tmp_path / "merged"
    rc, stdout, _ = run_cli(
        capsys, "merge", saved(first, tmp_path / "a"), saved(dusk, tmp_path / "b"), "--out", out
    )
    assert rc == 0 and stdout == f"merged 2 maps: 13 keyframes in 3 sessions -> {out}\n"
    merged = PlaceMap.load(out)
    assert [(s.name, s.camera_extrinsic) for s in merged.sessions] == [
        ("day", (0, 0, 0, 0, 0, 0, 1)), ("night", CAMERA), ("dusk", CAMERA)
    ]  # fmt: skip
    assert merged.session_counts().tolist() == [6, 4, 3] and merged.index_type == "hnsw"
    np.testing.assert_array_equal(merged.descriptors, np.concatenate([first.descriptors, dusk.descriptors]))
    np.testing.assert_array_equal(merged.positions, np.concatenate([first.positions, dusk.positions]))
    assert merged.sources[10:] == ["dusk#0", "dusk#1", "dusk#2"]
    sims, ids = merged.search(dusk.descriptors[1], 1)
    assert ids[0, 0] == 11 and sims[0, 0] == pytest.approx(1.0)
    assert merged.travelled_m == pytest.approx(first.travelled_m + 2.0)  # no travel between the maps
    rc, stdout, _ = run_cli(capsys, "merge", tmp_path / "b", "--out", tmp_path / "copy")
    assert rc == 0 and stdout == f"merged 1 map: 3 keyframes in 1 session -> {tmp_path / 'copy'}\n"


@pytest.mark.parametrize(
    ("other", "reason"),
    [({"model_hash": OTHER_HASH}, "different models"), ({"frame_id": "odom"}, "different frames")],
)
def test_merge_refuses_another_model_or_frame(tmp_path, capsys, other, reason):
    a = saved(two_session_map(), tmp_path / "a")
    b = saved(two_session_map(seed=1, **other), tmp_path / "b")
    out = tmp_path / "merged"
    line = assert_refused(capsys, "merge", a, b, "--out", out)
    assert line.startswith(f"error: cannot merge {b} into {a}: the maps ") and reason in line
    assert not out.exists() and hidden_siblings(out) == []


# ---------------------------------------------------------------------- crop


def test_crop_by_box_keeps_the_keyframes_inside_edges_included(tmp_path, capsys):
    original = two_session_map()
    out = tmp_path / "crop"
    # x 1..3, y 0..1 holds day keyframes 1 and 2 inside and 3 at (3, 1) on the corner; no night one
    rc, stdout, _ = run_cli(
        capsys, "crop", saved(original, tmp_path / "site"), "--box", 1, 0, 3, 1, "--out", out
    )
    assert rc == 0 and stdout == f"kept 3 of 10 keyframes, 1 of 2 sessions -> {out}\n"
    cropped = PlaceMap.load(out)
    assert [s.name for s in cropped.sessions] == ["day"] and cropped.sessions[0].created == DAY_CREATED
    np.testing.assert_array_equal(cropped.positions, [(1, 0, 0), (2, 0, 0), (3, 1, 0)])
    np.testing.assert_array_equal(cropped.descriptors, original.descriptors[1:4])
    assert cropped.sources == ["day#1", "day#2", "day#3"]


@pytest.mark.parametrize(
    ("selection", "kept"),
    [
        (["--sessions", "night"], [6, 7, 8, 9]),
        (["--sessions", "1"], [6, 7, 8, 9]),
        (["--sessions", "0", "night"], list(range(10))),
        (["--sessions", "night", "--box", -10, -10, 10, 5], [6, 7]),  # both filters: night keyframes at y 5
    ],
)
def test_crop_by_session_name_or_index(tmp_path, capsys, selection, kept):
    original = two_session_map()
    out = tmp_path / "crop"
    rc, _, stderr = run_cli(capsys, "crop", saved(original, tmp_path / "site"), *selection, "--out", out)
    assert rc == 0, stderr
    cropped = PlaceMap.load(out)
    np.testing.assert_array_equal(cropped.descriptors, original.descriptors[kept])
    assert [s.name for s in cropped.sessions] == sorted({"day" if i < 6 else "night" for i in kept})
    positions, _ = cropped.camera_poses()
    np.testing.assert_allclose(positions, original.camera_poses(np.array(kept))[0])  # each keeps its camera


def test_a_session_name_is_chosen_before_an_index(tmp_path, capsys):
    site = saved(make_map([(Session("a"), DAY), (Session("0"), NIGHT)]), tmp_path / "site")
    assert run_cli(capsys, "crop", site, "--sessions", "0", "--out", tmp_path / "crop")[0] == 0
    assert [s.name for s in PlaceMap.load(tmp_path / "crop").sessions] == ["0"]


UNKNOWN = "--sessions: map {site} has no session '%s'; its sessions are 0 'day', 1 'night'"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sessions", "dusk"], UNKNOWN % "dusk"),
        (["--sessions", "night", "2"], UNKNOWN % "2"),
        (["--box", 20, 20, 30, 30], "no keyframe of map {site} is inside --box 20 20 30 30; nothing written"),
        (["--box", 0, 0, 9, 4, "--sessions", "night"],  # the box holds day keyframes only
         "no keyframe of map {site} is inside --box 0 0 9 4 and in --sessions night; nothing written"),
        (["--box", 3, 0, 1, 1], "--box: xmin 3 is greater than xmax 1"),
        (["--box", 0, 2, 1, 1.5], "--box: ymin 2 is greater than ymax 1.5"),
        (["--box", 0, 0, "nan", 1], "--box: XMIN YMIN XMAX YMAX must be finite numbers, got 0.0 0.0 nan 1.0"),
        ([], "crop: pass --box, --sessions or both to say which keyframes to keep"),
    ],
)  # fmt: skip
def test_crop_refusals(tmp_path, capsys, args, message):
    site = saved(two_session_map(), tmp_path / "site")
    out = tmp_path / "crop"
    assert assert_refused(capsys, "crop", site, *args, "--out", out) == "error: " + message.format(site=site)
    assert not out.exists() and hidden_siblings(out) == []


def test_a_crop_too_small_for_its_ivfpq_index_is_refused(tmp_path, capsys):
    positions = np.random.default_rng(2).uniform(-50, 50, (300, 3)).tolist()
    site = saved(make_map([(Session("big"), positions)], index="ivfpq"), tmp_path / "site")
    out = tmp_path / "crop"
    line = assert_refused(capsys, "crop", site, "--box", 0, 0, 50, 50, "--out", out)
    assert "needs at least 256 keyframes to train" in line
    assert not out.exists() and hidden_siblings(out) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "rename-aside"])
def test_crop_in_place_with_overwrite(tmp_path, capsys, monkeypatch, exchange):
    """The input is replaced while a loaded copy of it still memory-maps its descriptors.npy: the
    replace swaps directories and unlinks the old files, so the mapping stays valid."""
    if not exchange:
        monkeypatch.setattr(fileio, "exchange_paths", lambda a, b: False)
    site = saved(two_session_map(), tmp_path / "site")
    before = PlaceMap.load(site)
    assert isinstance(before.descriptors, np.memmap)
    expected = np.array(before.descriptors)
    line = assert_refused(capsys, "crop", site, "--sessions", "night", "--out", site)
    assert (
        line
        == f"error: --out {site}: exists and is not empty; pass --overwrite to replace the place map there"
    )
    assert len(PlaceMap.load(site)) == 10
    rc, stdout, _ = run_cli(capsys, "crop", site, "--sessions", "night", "--out", site, "--overwrite")
    assert rc == 0 and stdout == f"kept 4 of 10 keyframes, 1 of 2 sessions -> {site}\n"
    np.testing.assert_array_equal(before.descriptors, expected)  # the old mapping reads the old data
    assert before.search(expected[2], 1)[1][0, 0] == 2
    after = PlaceMap.load(site)
    assert [s.name for s in after.sessions] == ["night"]
    np.testing.assert_array_equal(after.descriptors, expected[6:])
    assert hidden_siblings(site) == []


# ---------------------------------------------------------------------- --out


@pytest.mark.parametrize("command", ["merge", "crop"])
def test_an_existing_out_is_replaced_only_with_overwrite(tmp_path, capsys, command):
    site = saved(two_session_map(), tmp_path / "site")
    out = saved(make_map([(Session("old"), DAY)], seed=3), tmp_path / "out")
    before = (out / "map.json").read_bytes()
    args = [command, site, *(["--sessions", "day"] if command == "crop" else []), "--out", out]
    line = assert_refused(capsys, *args)
    assert (
        line
        == f"error: --out {out}: exists and is not empty; pass --overwrite to replace the place map there"
    )
    assert (out / "map.json").read_bytes() == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    args[-1] = tmp_path / "notes"
    line = assert_refused(capsys, *args, "--overwrite")
    assert line.endswith("exists and is not a place map; refusing to replace it")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    args[-1] = out
    assert run_cli(capsys, *args, "--overwrite")[0] == 0
    assert [s.name for s in PlaceMap.load(out).sessions][0] == "day"
