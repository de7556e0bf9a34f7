"""The mapping and localization nodes as separate processes over real DDS.

A small synthetic town is generated with three bags: the mapped route by day, the same route at
dusk (another condition, other lane) and a day detour that leaves the route. The tests publish
their frames like a camera driver would and check what a robot relies on: the saved map matches
the odometry, dusk frames are localized to the right place, off-route frames are refused, outputs
carry the input stamps, and bad input never stops the node.
"""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TOWN_THRESHOLD, requires_rclpy
from ros_harness import (
    RosHarness,
    frames,
    image_msg,
    localizer_args,
    node_args,
    odometry_msg,
    output_of,
    send_until_answered,
    stamp_of,
)

pytestmark = requires_rclpy

EVAL_RADIUS_M = 25.0  # MSLS' evaluation threshold, the project's default
OFF_ROUTE_M = 40.0  # a detour frame this far from every keyframe shows a place the map never saw
NODE_START_S = 60.0


def set_localizer_parameter(ros: RosHarness, name: str, value: int | float):
    """``ros2 param set /vpr/vpr_localizer NAME VALUE`` over the node's set_parameters service:
    the result (``successful``, ``reason``)."""
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    if isinstance(value, int):
        typed = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    else:
        typed = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float(value))
    request = SetParameters.Request(parameters=[Parameter(name=name, value=typed)])
    return ros.call(SetParameters, "/vpr/vpr_localizer/set_parameters", request).results[0]


def localize(ros: RosHarness, proc, sequence: list, timeout_s: float = 20.0) -> dict[int, object]:
    """Publish each frame after the previous one was answered (flow control); stamp -> match table."""
    from sensor_msgs.msg import Image

    from vpr_ros.io.match_table import read_table

    pub = ros.publisher(Image, "/cam/image")
    matches = ros.received["/vpr/vpr_localizer/matches"]
    assert ros.wait_for_subscribers("/cam/image"), output_of(proc)
    answers: dict[int, object] = {}
    for frame in sequence:
        send_until_answered(ros, pub, image_msg(frame.rgb(), frame.stamp_ns), matches, proc, timeout_s)
        msg = matches[-1][1]
        answers[stamp_of(msg)] = read_table(msg)
    return answers


def test_localizer_finds_dusk_places_refuses_off_route_and_keeps_stamps(
    ros_process, town, bundle, day_map
) -> None:
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from sensor_msgs.msg import PointCloud2

    from vpr_ros.mapping.place_map import PlaceMap

    place_map = PlaceMap.load(day_map)
    proc = ros_process(
        node_args(
            "vpr_ros.nodes.localizer",
            f"model.bundle_dir:={bundle}",
            f"map.dir:={day_map}",
            f"search.similarity_threshold:={TOWN_THRESHOLD}",
        )
    )
    with RosHarness() as ros:
        ros.record(PointCloud2, "/vpr/vpr_localizer/matches")
        poses = ros.record(PoseWithCovarianceStamped, "/vpr/vpr_localizer/pose")
        dusk = frames(town / "t01_dusk")
        answers = localize(ros, proc, dusk)
        detour = frames(town / "t02_day_detour")
        off_answers = localize(ros, proc, detour)
        ros.spin_until(lambda: len(poses) >= sum(int(t["accepted"][0]) for t in answers.values()), 5.0)

    assert sorted(answers) == sorted(f.stamp_ns for f in dusk), "every frame answered with its own stamp"
    truth = {f.stamp_ns: f.position for f in dusk}
    accepted = {s: t for s, t in answers.items() if len(t) and t["accepted"][0]}
    assert len(accepted) >= 0.25 * len(dusk)  # measured 12 of 39 at TOWN_THRESHOLD
    pose_by_stamp = {stamp_of(m): m for _, m in poses if stamp_of(m) in truth}
    assert set(pose_by_stamp) == set(accepted), "a pose for each accepted frame, none for refusals"
    errors = []
    for stamp, msg in pose_by_stamp.items():
        p = msg.pose.pose.position
        errors.append(np.hypot(p.x - truth[stamp][0], p.y - truth[stamp][1]))
        assert msg.header.frame_id == place_map.frame_id
        cov = np.asarray(msg.pose.covariance).reshape(6, 6)
        assert cov[0, 0] >= 0.25 and cov[1, 1] >= 0.25  # floor of 0.5 m std
    assert np.mean(np.asarray(errors) <= EVAL_RADIUS_M) >= 0.9, f"errors {np.round(errors, 1)}"

    off_route = [
        f.stamp_ns
        for f in detour
        if np.min(np.linalg.norm(place_map.positions[:, :2] - f.position[:2], axis=1)) > OFF_ROUTE_M
    ]
    assert len(off_route) >= 5
    refused = [s for s in off_route if not (len(off_answers[s]) and off_answers[s]["accepted"][0])]
    off_poses = {stamp_of(m) for _, m in poses} - set(truth)
    assert off_poses.isdisjoint(refused), "no pose is published for a refused frame"
    assert len(refused) >= 0.6 * len(off_route), (  # measured 20 of 26 (vpr-eval)
        f"{len(refused)} of {len(off_route)} off-route frames refused"
    )


def test_mapper_saves_a_map_that_matches_the_odometry(ros_process, town, bundle, tmp_path) -> None:
    from nav_msgs.msg import Odometry
    from nav_msgs.msg import Path as PathMsg
    from sensor_msgs.msg import Image

    from vpr_ros.geometry import rotation_angle_deg
    from vpr_ros.mapping.keyframes import KeyframeSelector
    from vpr_ros.mapping.place_map import PlaceMap

    out = tmp_path / "maps" / "day"  # missing parents are made
    proc = ros_process(
        node_args(
            "vpr_ros.nodes.mapper",
            f"model.bundle_dir:={bundle}",
            f"map.dir:={out}",
            "mapper.keyframe_min_distance_m:=5.0",
            remaps=("image:=/cam/image", "odom:=/cam/odom"),
        )
    )
    day = frames(town / "t00_day")[::2]
    with RosHarness() as ros:
        image_pub = ros.publisher(Image, "/cam/image")
        odom_pub = ros.publisher(Odometry, "/cam/odom", 50)
        path = ros.record(PathMsg, "/vpr/vpr_mapper/keyframes", qos=_latched())
        assert ros.wait_for_subscribers("/cam/image") and ros.wait_for_subscribers("/cam/odom"), output_of(
            proc
        )
        # The selection depends on the last keyframe only, so a lost non-keyframe changes nothing;
        # best effort (camera QoS) may lose any frame, so each keyframe is sent until it is mapped.
        selector = KeyframeSelector(5.0, 15.0)
        expected = [f.stamp_ns for f in day if selector.accept(f.position, f.orientation)]
        for i, frame in enumerate(day):
            odom, image = (
                odometry_msg(frame.position, frame.orientation, frame.stamp_ns),
                image_msg(frame.rgb(), frame.stamp_ns),
            )
            mapped = expected.index(frame.stamp_ns) + 1 if frame.stamp_ns in expected else 0
            while True:
                if i == 0:  # an odometry filter's NaN before it initialises: skipped, not fatal
                    odom_pub.publish(odometry_msg([np.nan, 0, 0], [0, 0, 0, 1], frame.stamp_ns - 10**8))
                odom_pub.publish(odom)
                image_pub.publish(image)
                if ros.spin_until(lambda n=mapped: bool(path) and len(path[-1][1].poses) >= n, 1.0, proc):
                    break
                assert proc.poll() is None, output_of(proc)
            ros.spin_until(lambda: False, 0.05)
    os.kill(proc.pid, signal.SIGTERM)  # saves on shutdown; a second signal would interrupt the save
    proc.wait(timeout=60)
    log = output_of(proc)
    assert proc.returncode == 0, log
    assert "pose skipped: pose position must be 3 finite numbers" in log, log
    saved = PlaceMap.load(out)
    assert saved.frame_id == "map"
    assert saved.stamps_ns.tolist() == expected, log
    published = {f.stamp_ns: f for f in day}
    for stamp, position in zip(saved.stamps_ns, saved.positions):
        np.testing.assert_allclose(position, published[int(stamp)].position, atol=1e-6)
    steps = np.linalg.norm(np.diff(saved.positions[:, :2], axis=0), axis=1)
    turns = [rotation_angle_deg(a, b) for a, b in zip(saved.orientations[:-1], saved.orientations[1:])]
    assert all(d >= 5.0 - 1e-6 or t >= 15.0 - 1e-6 for d, t in zip(steps, turns))


def _latched():
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
    )


def test_bad_frames_are_logged_and_the_node_keeps_serving(ros_process, town, bundle, day_map) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image, PointCloud2

    proc = ros_process(localizer_args(bundle, day_map))
    good = frames(town / "t01_dusk")[3]
    with RosHarness() as ros:
        matches = ros.record(PointCloud2, "/vpr/vpr_localizer/matches")
        pub = ros.publisher(Image, "/cam/image")
        assert ros.wait_for_subscribers("/cam/image"), output_of(proc)
        bad = [image_msg(good.rgb(), 1, "rgb8") for _ in range(3)]
        bad[0].encoding = "yuv9000"
        bad[1].data = bad[1].data[:100]
        bad[2].height = 0
        for msg in bad:
            pub.publish(msg)
            ros.spin_until(lambda: False, 0.3)
        send_until_answered(ros, pub, image_msg(good.rgb(), good.stamp_ns), matches, proc)
        assert all(stamp_of(m) == good.stamp_ns for _, m in matches), "bad frames produce no answer"

        refused = set_localizer_parameter(ros, "search.top_k", 500)
        assert not refused.successful and "top_k" in refused.reason
        assert set_localizer_parameter(ros, "search.top_k", 3).successful
        send_until_answered(ros, pub, image_msg(good.rgb(), good.stamp_ns + 1), matches, proc)
        assert matches[-1][1].width == 3, "top_k changed at run time"
        diagnostics = ros.record(DiagnosticArray, "/diagnostics")
        assert ros.spin_until(lambda: bool(diagnostics), 5.0, proc)
        values = diagnostics_values(diagnostics[-1][1])
        # Each bad frame is refused by the converter, unless a newer frame replaced it first
        # (a busy worker: counted as dropped); none of them is ever answered.
        assert int(values["frames invalid"]) >= 1
        assert int(values["frames invalid"]) + int(values["frames dropped (newer frame arrived)"]) <= 3
    log = output_of(proc)
    # the first bad frame that reached the worker is logged, the others throttled (the first one
    # published can be lost to discovery: best effort)
    reasons = ("unknown encoding 'yuv9000'", "data has 100 bytes", "height")
    assert any(f"frame dropped: sensor_msgs/Image: {reason}" in log for reason in reasons), log


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("missing_model", "model bundle"),
        ("other_model", "was built with model"),
        ("bad_range", "search.top_k"),
        ("no_map", "parameter map.dir is required"),
        ("bad_sequence", "parameter sequence.min_speed / max_speed must satisfy 0 <= min <= max"),
    ],
)
def test_the_node_refuses_to_start_with_one_line(
    ros_process, tmp_path, bundle, day_map, problem, expected
) -> None:
    import json
    import shutil

    from vpr_ros.bundle import content_hash

    params = {"model.bundle_dir": str(bundle), "map.dir": str(day_map)}
    if problem == "missing_model":
        params["model.bundle_dir"] = str(tmp_path / "nowhere")
    elif problem == "other_model":  # same network, other content hash (e.g. re-exported at another size)
        other = Path(shutil.copytree(bundle, tmp_path / "other"))
        meta = json.loads((other / "model.json").read_text())
        meta["output"]["note"] = "another model"
        meta["content_hash"] = content_hash(
            meta["files"]["model.onnx"]["sha256"], meta["input"], meta["output"]
        )
        (other / "model.json").write_text(json.dumps(meta))
        params["model.bundle_dir"] = str(other)
    elif problem == "no_map":
        params["map.dir"] = "''"  # an empty string on the command line
    extra = {
        "bad_range": ["search.top_k:=0"],
        "bad_sequence": ["sequence.min_speed_mps:=3.0", "sequence.max_speed_mps:=1.0"],
    }.get(problem, [])
    proc = ros_process(
        node_args("vpr_ros.nodes.localizer", *(f"{k}:={v}" for k, v in params.items()), *extra)
    )
    proc.wait(timeout=NODE_START_S)
    log = proc.communicate()[0]
    assert proc.returncode == 1, log
    assert expected in log and "Traceback" not in log, log


@pytest.mark.parametrize("problem", ["map_dir_is_a_folder", "zero_quaternion_extrinsic"])
def test_the_mapper_refuses_to_start_with_one_line(ros_process, tmp_path, bundle, problem) -> None:
    """What would fail after the drive (the save) or on every frame is refused at start-up."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("x")
    if problem == "map_dir_is_a_folder":
        params = [f"map.dir:={notes}", "map.overwrite:=true"]
        expected = f"map.dir {notes}: exists and is not a place map; refusing to replace it"
    else:
        params = [f"map.dir:={tmp_path / 'map'}", "frames.camera_extrinsic:=[0.,0.,1.,0.,0.,0.,0.]"]
        expected = "parameter frames.camera_extrinsic: camera extrinsic"
    proc = ros_process(node_args("vpr_ros.nodes.mapper", f"model.bundle_dir:={bundle}", *params))
    proc.wait(timeout=NODE_START_S)
    log = proc.communicate()[0]
    assert proc.returncode == 1, log
    assert expected in log and "Traceback" not in log, log
    assert [p.name for p in notes.iterdir()] == ["mine.txt"]


def test_config_files_are_the_declared_defaults() -> None:
    from vpr_ros.nodes.params import NODES, defaults_yaml

    root = Path(__file__).resolve().parents[1]
    for node, params in NODES.items():
        name = node.removeprefix("vpr_")
        assert (root / "config" / f"{name}.yaml").read_text() == defaults_yaml(node, params), node


@pytest.fixture(scope="module")
def slow_setup(tmp_path_factory, town) -> tuple[Path, Path]:
    """A bundle at 720x960 (slower than a 30 Hz camera on 2 cores) and its map."""
    from training.export import Source, export_bundle, procedural_images
    from training.models import ModelConfig, build_model
    from vpr_ros.mapping.build_map import main as build_map

    model, _ = build_model(ModelConfig(backbone="mobilenet_v2", weights="imagenet"))
    source = Source(
        model, (720, 960), {"backbone": "mobilenet_v2", "pooling": "gem"}, {"source": "tests"}, {}
    )
    tmp = tmp_path_factory.mktemp("slow")
    export_bundle(source, tmp / "bundle", procedural_images(3, size=(120, 160)), "procedural")
    argv = ["--bag", str(town / "t00_day"), "--model", str(tmp / "bundle"), "--out", str(tmp / "map")]
    assert build_map([*argv, "--min-distance", "20", "--backend", "onnxruntime", "--quiet"]) == 0
    return tmp / "bundle", tmp / "map"


def seconds_per_frame(bundle_dir: Path, image: np.ndarray) -> float:
    from vpr_ros.backends import create_backend
    from vpr_ros.bundle import load_bundle

    backend = create_backend(load_bundle(bundle_dir), "onnxruntime")
    times = []
    for _ in range(6):
        start = time.perf_counter()
        backend.embed([image])
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def diagnostics_values(msg) -> dict[str, str]:
    return {kv.key: kv.value for status in msg.status for kv in status.values}


def test_stays_current_when_the_camera_is_faster_than_the_backend(ros_process, town, slow_setup) -> None:
    """A camera three times faster than the backend (at least 30 Hz): the node answers the newest
    frame, counts the drops, and its latency does not grow (no backlog)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image, PointCloud2

    bundle_dir, map_dir = slow_setup
    proc = ros_process(
        node_args("vpr_ros.nodes.localizer", f"model.bundle_dir:={bundle_dir}", f"map.dir:={map_dir}")
    )
    images = [f.rgb() for f in frames(town / "t01_dusk")[:10]]
    per_frame = seconds_per_frame(bundle_dir, images[0])
    period = min(1.0 / 30.0, per_frame / 3.0)  # this machine's speed drifts: measure, then outrun it
    with RosHarness() as ros:
        matches = ros.record(PointCloud2, "/vpr/vpr_localizer/matches")
        diagnostics = ros.record(DiagnosticArray, "/diagnostics")
        pub = ros.publisher(Image, "/cam/image")
        assert ros.wait_for_subscribers("/cam/image"), output_of(proc)
        sent: dict[int, float] = {}
        start = time.monotonic()
        for i in range(240):
            stamp = 1_000_000_000 + i * 33_333_333
            ros.spin_until(lambda i=i: time.monotonic() >= start + i * period, 1.0)
            sent[stamp] = time.monotonic()
            pub.publish(image_msg(images[i % len(images)], stamp))
        ros.spin_until(lambda: False, 2.0)
        last_diag = len(diagnostics)
        ros.spin_until(lambda: len(diagnostics) > last_diag, 5.0)
    latencies = np.array([t - sent[stamp_of(m)] for t, m in matches])
    values = diagnostics_values(diagnostics[-1][1])
    processed, dropped = int(values["frames processed"]), int(values["frames dropped (newer frame arrived)"])
    received = int(values["frames received"])
    assert len(matches) == processed and processed < 0.8 * received, "slower than the camera, as intended"
    assert dropped > 0 and abs(received - processed - dropped) <= 1
    # Bounded by about two frame times (the one being embedded plus the newest waiting), not by the
    # number of frames sent; a queue would make the last answers seconds late. p95, not the maximum
    # (p99 of ~80 answers): one frame stalled by another process on 2 cores is not a backlog
    # (seen once in a fresh-clone run: p99 0.648 s against a 0.545 s bound, passing when rerun).
    bound = 4 * per_frame + 0.2
    assert np.percentile(latencies, 95) < bound, (
        f"latency p95 {np.percentile(latencies, 95):.3f} s > {bound:.3f}"
    )
    early, late = np.median(latencies[:10]), np.median(latencies[-10:])
    assert late < early + 2 * per_frame + 0.1, f"latency grew from {early:.3f} to {late:.3f} s: frames queue"
    assert values["frames invalid"] == "0"


def test_sequence_filter_in_the_localizer_beats_single_frames_at_night(
    ros_process, town, bundle, day_map
) -> None:
    """sequence.enabled with odometry: every answer keeps its image's stamp and still carries the
    frame's own top-k; once the filter has its frames, its rows (filtered = 1) decide, and their
    top-1 is right more often than the single frame's on the night drive (vpr-eval on this town:
    0.600 vs 0.412 at length 10). ~/reset_sequence starts over; diagnostics say what it does."""
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Image, PointCloud2
    from std_srvs.srv import Trigger

    from vpr_ros.io.match_table import read_table

    proc = ros_process(
        node_args(
            "vpr_ros.nodes.localizer",
            f"model.bundle_dir:={bundle}",
            f"map.dir:={day_map}",
            "search.top_k:=20",
            "sequence.enabled:=true",
            "sequence.length:=10",
            "odometry.source:=topic",
            "odometry.topic:=/odom",
        )
    )
    night = frames(town / "t03_night")
    single_hits, filtered_hits, tables = [], [], {}
    with RosHarness() as ros:
        matches = ros.record(PointCloud2, "/vpr/vpr_localizer/matches")
        poses = ros.record(PoseWithCovarianceStamped, "/vpr/vpr_localizer/pose")
        diagnostics = ros.record(DiagnosticArray, "/diagnostics")
        image_pub = ros.publisher(Image, "/cam/image")
        odom_pub = ros.publisher(Odometry, "/odom")
        assert ros.wait_for_subscribers("/cam/image"), output_of(proc)
        for frame in night:
            odom_pub.publish(odometry_msg(frame.position, frame.orientation, frame.stamp_ns))
            send_until_answered(ros, image_pub, image_msg(frame.rgb(), frame.stamp_ns), matches, proc)
            rows = read_table(matches[-1][1])
            tables[stamp_of(matches[-1][1])] = rows
            own = rows[rows["filtered"] == 0]
            chosen = rows[rows["filtered"] == 1] if rows["filtered"].any() else own
            assert len(own) == 20
            for hits, table in ((single_hits, own), (filtered_hits, chosen)):
                best = table[table["rank"] == 0][0]
                hits.append(np.hypot(best["x"] - frame.position[0], best["y"] - frame.position[1]) <= 10.0)
        reset = ros.call(Trigger, "/vpr/vpr_localizer/reset_sequence", Trigger.Request())
        ros.spin_until(lambda: any("sequence" in str(m.status[0].values) for _, m in diagnostics), 5.0)
    assert sorted(tables) == sorted(f.stamp_ns for f in night), "every frame answered with its own stamp"
    assert not any(tables[f.stamp_ns]["filtered"].any() for f in night[:2]), "single frames until min_frames"
    assert all(tables[f.stamp_ns]["filtered"].any() for f in night[3:])
    filtered_r1, single_r1 = np.mean(filtered_hits), np.mean(single_hits)
    assert filtered_r1 >= single_r1 + 0.1, (filtered_r1, single_r1)
    truth = {f.stamp_ns: f.position for f in night[3:]}
    published = {stamp_of(m): m.pose.pose.position for _, m in poses if stamp_of(m) in truth}
    pose_hits = [np.hypot(p.x - truth[s][0], p.y - truth[s][1]) <= 10.0 for s, p in published.items()]
    assert len(published) >= len(truth) // 2 and np.mean(pose_hits) >= single_r1 + 0.1, (
        len(published), np.mean(pose_hits), single_r1,
    )  # the published pose is the filter's place, not the single frame's  # fmt: skip
    assert reset.success and "cleared" in reset.message
    states = [kv.value for _, m in diagnostics for kv in m.status[0].values if kv.key == "sequence filter"]
    assert any(state.startswith("filtering") and "odometry" in state for state in states), states


def test_diagnostics_tell_the_states_apart_and_refused_frames_delete_their_markers(
    ros_process, town, bundle, day_map
) -> None:
    """/diagnostics, namespaced: "waiting for images" before any frame, "input invalid" (ERROR)
    while only undecodable frames come, "localized" after an accepted frame, "unknown place" after
    a refused one; the markers of a refused frame delete the match instead of drawing it at NaN."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from sensor_msgs.msg import Image, PointCloud2
    from visualization_msgs.msg import Marker, MarkerArray

    proc = ros_process(localizer_args(bundle, day_map))
    good = frames(town / "t01_dusk")[3]
    with RosHarness() as ros:
        diagnostics = ros.record(DiagnosticArray, "/diagnostics")
        matches = ros.record(PointCloud2, "/vpr/vpr_localizer/matches")
        markers = ros.record(MarkerArray, "/vpr/vpr_localizer/markers")
        pub = ros.publisher(Image, "/cam/image")
        assert ros.wait_for_subscribers("/cam/image"), output_of(proc)

        def state_after(send) -> DiagnosticStatus:
            send()
            seen = len(diagnostics)
            assert ros.spin_until(lambda: len(diagnostics) >= seen + 2, 10.0, proc)  # one full period
            return diagnostics[-1][1].status[0]

        waiting = state_after(lambda: None)
        assert waiting.name == "/vpr/vpr_localizer: localization"
        assert (waiting.level, waiting.message) == (DiagnosticStatus.WARN, "waiting for images")

        def send_bad() -> None:
            bad = image_msg(good.rgb(), 1, "rgb8")
            bad.encoding = "yuv9000"
            for _ in range(3):
                pub.publish(bad)
                ros.spin_until(lambda: False, 0.2)

        invalid = state_after(send_bad)
        assert invalid.level == DiagnosticStatus.ERROR and invalid.message.startswith("input invalid"), (
            invalid
        )

        def send_good(stamp: int):
            return lambda: send_until_answered(ros, pub, image_msg(good.rgb(), stamp), matches, proc)

        localized = state_after(send_good(good.stamp_ns))
        assert (localized.level, localized.message) == (DiagnosticStatus.OK, "localized")
        accepted = markers[-1][1].markers
        assert [m.action for m in accepted] == [Marker.ADD, Marker.ADD]

        assert set_localizer_parameter(ros, "search.similarity_threshold", 0.999).successful
        unknown = state_after(send_good(good.stamp_ns + 1))
        assert unknown.level == DiagnosticStatus.WARN and unknown.message.startswith("unknown place"), unknown
        refused = markers[-1][1].markers
        assert [(m.ns, m.id, m.action) for m in refused] == [
            ("match", 0, Marker.DELETE),
            ("match", 1, Marker.DELETE),
        ]
        pose = refused[0].pose
        numbers = [pose.position.x, pose.position.y, pose.position.z, pose.orientation.w]
        assert all(math.isfinite(v) for v in numbers) and not refused[1].points


def test_a_pause_does_not_survive_a_lifecycle_transition(ros_process, town, bundle, day_map) -> None:
    """~/set_enabled false while unconfigured, then configure + activate (a lifecycle manager's
    start): the node answers frames; a pause is for the running session, not a hidden state."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from sensor_msgs.msg import Image, PointCloud2
    from std_srvs.srv import SetBool

    proc = ros_process(localizer_args(bundle, day_map, "autostart:=false"))
    good = frames(town / "t01_dusk")[3]
    with RosHarness() as ros:
        paused = ros.call(SetBool, "/vpr/vpr_localizer/set_enabled", SetBool.Request(data=False))
        assert paused.success and paused.message == "paused"
        for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            request = ChangeState.Request(transition=Transition(id=transition))
            assert ros.call(ChangeState, "/vpr/vpr_localizer/change_state", request, timeout_s=60.0).success
        matches = ros.record(PointCloud2, "/vpr/vpr_localizer/matches")
        pub = ros.publisher(Image, "/cam/image")
        assert ros.wait_for_subscribers("/cam/image"), output_of(proc)
        send_until_answered(ros, pub, image_msg(good.rgb(), good.stamp_ns), matches, proc)
    assert stamp_of(matches[-1][1]) == good.stamp_ns


def test_a_map_reload_does_not_hold_frames_back(ros_process, town, bundle, tmp_path) -> None:
    """~/reload_map reads, hashes and indexes the whole map and republishes its layers (60,000
    keyframes: seconds): frames keep being answered meanwhile, a few inferences late at worst on 2
    shared cores, never held for the reload (its own callback group; the map is swapped at once)."""
    from sensor_msgs.msg import Image, PointCloud2
    from std_srvs.srv import Trigger

    from vpr_ros.bundle import load_bundle
    from vpr_ros.mapping.place_map import PlaceMap

    model = load_bundle(bundle)
    big = PlaceMap(model.descriptor_dim, model.content_hash, frame_id="map")
    rng = np.random.default_rng(0)
    descriptors = rng.standard_normal((60_000, model.descriptor_dim)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    positions = np.c_[rng.uniform(0, 500, (60_000, 2)), np.zeros(60_000)]
    big.add(descriptors, np.arange(60_000), positions, np.tile([0.0, 0.0, 0.0, 1.0], (60_000, 1)))
    big.save(tmp_path / "map")
    proc = ros_process(localizer_args(bundle, tmp_path / "map"))
    images = [f.rgb() for f in frames(town / "t01_dusk")[:10]]
    with RosHarness() as ros:
        matches = ros.record(PointCloud2, "/vpr/vpr_localizer/matches")
        pub = ros.publisher(Image, "/cam/image")
        assert ros.wait_for_subscribers("/cam/image"), output_of(proc)
        client = ros.node.create_client(Trigger, "/vpr/vpr_localizer/reload_map")
        assert client.wait_for_service(timeout_sec=30.0)
        quiet, during = [], []
        future = None
        for i in range(200):
            if i == 10:
                future, started = client.call_async(Trigger.Request()), time.monotonic()
            sent = time.monotonic()
            send_until_answered(ros, pub, image_msg(images[i % 10], 1_000_000_000 + i * 10**8), matches, proc)
            (quiet if future is None else during).append(time.monotonic() - sent)
            if future is not None and future.done():
                reload_s = time.monotonic() - started
                break
    assert future is not None and future.done() and future.result().success, output_of(proc)
    usual = np.median(quiet)
    assert reload_s > 5 * usual and len(during) >= 5, (reload_s, during)  # blocking would show
    # Measured: usual 0.04-0.05 s; during a 1.3-1.5 s reload at most 0.08-0.13 s (2 cores shared with
    # the reload's hashing and parsing); 0.29-0.5 s with Python's default 5 ms switch interval (the
    # nodes set 0.5 ms); a frame held back by the reload would wait for most of the reload.
    assert max(during) < min(4 * usual + 0.1, reload_s / 3), (usual, np.round(during, 3), reload_s)
