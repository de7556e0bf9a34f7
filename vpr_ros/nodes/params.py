"""The nodes' parameters, declared once: descriptors, validation, defaults YAML and README table.

Each node's parameters are a tuple of :class:`Param`; the same table declares them on the node
(with ``ParameterDescriptor`` ranges and a description), validates every change (a
pre-set callback rejects bad values with a reason), writes ``config/<node>.yaml`` (a test checks
the shipped files equal it) and prints the README table (``python -m vpr_ros.nodes.params``).
This is the idea of generate_parameter_library without the dependency (``ROS_NOTES.md`` §3.2).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from vpr_ros.backends import BACKENDS, PRECISIONS
from vpr_ros.errors import InputError
from vpr_ros.evaluation.metrics import EvalSettings
from vpr_ros.io.pose_sync import DEFAULT_TOLERANCE_S

Value = bool | int | float | str | list


@dataclass(frozen=True)
class Param:
    """One parameter; ``dynamic`` ones may change while the node runs (``ros2 param set``)."""

    name: str
    default: Value
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    dynamic: bool = False
    fixed_length: bool = True  # a list parameter must keep its default's length

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable, or None."""
        if isinstance(self.default, bool) != isinstance(value, bool):
            return f"{self.name} must be a bool"
        if isinstance(self.default, float) and isinstance(value, int):
            value = float(value)
        if type(value) is not type(self.default):
            return f"{self.name} must be of type {type(self.default).__name__}, got {type(value).__name__}"
        if self.choices is not None and value not in self.choices:
            return f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}"
        if self.low is not None and value < self.low:
            return f"{self.name} must be >= {self.low}, got {value}"
        if self.high is not None and value > self.high:
            return f"{self.name} must be <= {self.high}, got {value}"
        if isinstance(self.default, list) and self.fixed_length and len(value) != len(self.default):
            return f"{self.name} must have {len(self.default)} numbers, got {len(value)}"
        if isinstance(self.default, list) and not value:
            return f"{self.name} must not be empty"
        return None


def _model_params() -> tuple[Param, ...]:
    return (
        Param("model.bundle_dir", "", "model bundle directory (model.onnx + model.json); required"),
        Param("model.backend", "auto", "inference backend; auto = TensorRT > ORT CUDA > ORT CPU > PyTorch",
              choices=BACKENDS),
        Param("model.precision", "fp16", "TensorRT / PyTorch-CUDA precision (ONNX Runtime runs fp32)",
              choices=PRECISIONS),
        Param("model.device_id", 0, "CUDA device index", 0, 64),
        Param("model.cpu_threads", 0,
              "ONNX Runtime CPU threads; 0 = every core but one (left to DDS and the executor)", 0, 256),
        Param("model.engine_cache_dir", "", "TensorRT engine cache ('' = <bundle>/engines)"),
        Param("model.build_engine_if_missing", True,
              "build the TensorRT engine at configure when none is cached"),
    )  # fmt: skip


def _common_tail() -> tuple[Param, ...]:
    return (
        Param("input.transport", "raw", "subscribe to 'image' (raw) or '<image>/compressed'",
              choices=("raw", "compressed")),
        Param("input.stale_warn_s", 5.0, "warn when no image arrived for this long (s)", 0.1, 3600.0),
        Param("output.publish_markers", True, "publish RViz markers on ~/markers (while subscribed)"),
        Param("diagnostics.period_s", 1.0, "period of /diagnostics messages (s)", 0.1, 60.0),
        Param("autostart", True, "configure and activate at start (no lifecycle manager needed)"),
    )  # fmt: skip


LOCALIZER: tuple[Param, ...] = (
    *_model_params(),
    Param("map.dir", "", "place map directory to localize against; required"),
    Param("input.image_topics", ["image"], "camera image topics (several cameras: one answer per time step, "
          "the best camera's)", fixed_length=False),
    Param("input.camera_sync_s", 0.05, "several cameras: how long a time step waits from the first "
          "camera's frame for the others' (s)", 0.0, 1.0),
    Param("frames.camera_extrinsics", [""], "per image topic, its base->camera 'x y z qx qy qz qw'; '' = "
          "mounted like the mapping camera of the matched keyframe's session", fixed_length=False),
    Param("frames.map", "", "expected map frame ('' = the map's own frame_id)"),
    Param("frames.odom", "odom", "odometry frame (REP 105): the child of map -> odom, TF odometry's frame"),
    Param("frames.base", "base_link", "robot base frame (REP 105): the pose published is this frame's"),
    Param("odometry.source", "none", "robot odometry for the sequence filter's motion, map -> odom and the "
          "fix check: none, a nav_msgs/Odometry topic, or TF (frames.odom -> frames.base)",
          choices=("none", "topic", "tf")),
    Param("odometry.topic", "odom", "nav_msgs/Odometry topic when odometry.source is 'topic'"),
    Param("input.max_rate_hz", 0.0, "process at most this many frames per second (0 = every frame)",
          0.0, 1000.0, dynamic=True),
    Param("search.top_k", 5, "candidates retrieved per frame", 1, 100, dynamic=True),
    Param("search.similarity_threshold", 0.0,
          "cosine below which a frame is an unknown place; 0 = model.json's value (0.5 if none)",
          0.0, 1.0, dynamic=True),
    Param("estimate.method", "knn_gaussian", "pose from the top-1 keyframe or kNN Gaussian voting",
          choices=("top1", "knn_gaussian"), dynamic=True),
    Param("estimate.sigma_m", 5.0, "kNN Gaussian kernel width (m)", 0.01, 1000.0, dynamic=True),
    Param("estimate.min_position_std_m", 0.5, "floor of the published position std (m)", 0.0, 100.0,
          dynamic=True),
    Param("sequence.enabled", False, "answer from the sequence filter over the last frames "
          "(vpr_ros.localization.sequence_filter) instead of each frame alone", dynamic=True),
    Param("sequence.length", 10, "frames the filter matches as one trajectory", 1, 200, dynamic=True),
    Param("sequence.min_frames", 3, "frames of history before the filter answers (single frames until then)",
          1, 200, dynamic=True),
    Param("sequence.min_speed_mps", 0.3, "without odometry: slowest speed a trajectory assumes (m/s)",
          0.0, 100.0, dynamic=True),
    Param("sequence.max_speed_mps", 2.0, "without odometry: fastest speed a trajectory assumes (m/s)",
          0.0, 100.0, dynamic=True),
    Param("sequence.switch_cost", 1.0, "lead per frame of history (normalised units, up to 10 frames) a "
          "trajectory elsewhere needs to move the answer away from the place it follows (0 = none)",
          0.0, 100.0, dynamic=True),
    Param("relocalization.consistent_frames", 2, "a fix (for map -> odom, /initialpose, ~/relocalize) is "
          "this many trusted answers in a row that agree with the odometry", 1, 100, dynamic=True),
    Param("relocalization.max_disagreement_m", 3.0, "how far an answer may be from where the previous one "
          "and the odometry put the robot (m; without odometry plus sequence.max_speed_mps x time)",
          0.01, 1000.0, dynamic=True),
    Param("relocalization.publish_initialpose", False, "publish fixes as an initial pose for Nav2 AMCL"),
    Param("relocalization.initialpose_topic", "/initialpose", "where the initial pose goes"),
    Param("relocalization.global_frame", "map", "AMCL's global frame: the map must be in it to publish "
          "initial poses (AMCL ignores others)"),
    Param("relocalization.min_interval_s", 0.0, "0: one initial pose per start and per ~/relocalize; "
          "> 0: after any fix, at most this often (s)", 0.0, 86400.0, dynamic=True),
    Param("relocalization.timeout_s", 30.0, "~/relocalize gives up after this long without a fix (s)",
          0.1, 3600.0, dynamic=True),
    Param("tf.publish_map_to_odom", False, "publish map -> odom on /tf from fixes (needs odometry.source)"),
    Param("tf.min_update_interval_s", 1.0, "a new map -> odom at most this often (s); the last one is kept "
          "between fixes", 0.0, 3600.0, dynamic=True),
    Param("tf.publish_period_s", 0.1, "period of re-publishing the current map -> odom (s)", 0.01, 10.0),
    Param("tf.transform_tolerance_s", 0.5, "map -> odom is stamped this far ahead (s), as AMCL's "
          "transform_tolerance, so lookups at the newest odometry succeed", 0.0, 10.0),
    *_common_tail(),
)  # fmt: skip

MAPPER: tuple[Param, ...] = (
    *_model_params(),
    Param("map.dir", "", "where the map is saved; required"),
    Param("map.overwrite", False, "replace an existing map at map.dir (otherwise refuse to start)"),
    Param("map.append", False, "add this drive as a new session of the map at map.dir (same model, frame)"),
    Param("map.index", "flat", "FAISS index: exact flat, or HNSW / IVF-PQ for very large maps",
          choices=("flat", "hnsw", "ivfpq")),
    Param("frames.map", "", "map frame ('' = the pose messages' frame_id)"),
    Param("frames.camera_extrinsic", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
          "base->camera pose x y z qx qy qz qw, stored with the session (keyframe poses are the base's)"),
    Param("frames.base", "base_link", "robot base frame looked up in frames.map when input.pose_type is tf"),
    Param("input.pose_type", "odometry", "the robot's pose: 'odom' (nav_msgs/Odometry), 'pose' "
          "(geometry_msgs/PoseStamped), or TF (frames.base in frames.map, '' = map)",
          choices=("odometry", "pose_stamped", "tf")),
    Param("mapper.sync_tolerance_s", DEFAULT_TOLERANCE_S, "max |image stamp - pose stamp| for a pair (s)",
          0.0001, 10.0),
    Param("mapper.keyframe_min_distance_m", 1.0, "new keyframe after this distance (m)", 0.0, 1000.0),
    Param("mapper.keyframe_min_rotation_deg", 15.0, "or after this rotation (deg)", 0.0, 180.0),
    *_common_tail(),
)  # fmt: skip

_EVAL = EvalSettings()  # the metric defaults, shared with vpr-eval
REPLAY_EVALUATOR: tuple[Param, ...] = (
    Param("bag", "", "query rosbag2 directory being replayed (ground truth is read from it); required"),
    Param("map.dir", "", "place map the localizer uses; required"),
    Param("model.bundle_dir", "", "model bundle the localizer uses (its threshold and hash); required"),
    Param("report.dir", "", "report directory to write; required"),
    Param("report.overwrite", False, "replace an existing report at report.dir"),
    Param("input.image_topic", "", "image topic in the bag ('' = the only one)"),
    Param("input.pose_topic", "", "ground-truth pose topic in the bag ('' = the only one)"),
    Param("input.sync_tolerance_s", DEFAULT_TOLERANCE_S, "max |image - pose stamp| for ground truth (s)",
          0.0001, 10.0),
    Param("eval.distance_m", _EVAL.distance_m, "a keyframe this close is a correct match (m)", 0.01, 10000.0),
    Param("eval.angle_deg", _EVAL.angle_deg, "... and this close in heading (deg); 0 = distance only", 0.0,
          180.0),
    Param("search.similarity_threshold", 0.0,
          "the localizer's unknown-place threshold; 0 = model.json's value (0.5 if none)", 0.0, 1.0),
    Param("eval.idle_timeout_s", 10.0, "write the report this long after the last answer (s)", 0.1, 3600.0),
    Param("eval.start_timeout_s", 180.0, "give up when no answer came for this long after start (s)",
          1.0, 36000.0),
    Param("run.description", "ROS replay", "how the frames were played, recorded in the report"),
)  # fmt: skip

# vpr_bag_player; its "topics" (a string list, default every playable topic) is declared by the node.
BAG_PLAYER: tuple[Param, ...] = (
    Param("bag", "", "rosbag2 directory to play; required"),
    Param("mode", "rate", "rate: the recorded rate times 'rate'; flow: the next image once the "
          "previous one is answered on answer_topic", choices=("rate", "flow")),
    Param("rate", 1.0, "multiple of the recorded rate (rate mode)", 0.001, 1000.0),
    Param("image_topic", "", "image topic ('' = the bag's only Image or CompressedImage topic)"),
    Param("answer_topic", "answers", "flow mode: match tables (sensor_msgs/PointCloud2) stamped "
          "like the image they answer"),
    Param("answer_timeout_s", 5.0, "flow mode: send an image again when unanswered for this long (s)",
          0.001, 3600.0),
    Param("max_resends", 3, "flow mode: resends of an unanswered image before it counts as lost",
          0, 1000),
    Param("wait_for_subscribers", 1, "subscribers the image topic needs before the first message",
          0, 1000),
    Param("start_timeout_s", 60.0, "exit (status 1) when the subscribers are not there after this "
          "long (s)", 0.001, 86400.0),
    Param("start_delay_s", 1.0, "wait this long after the subscribers appeared (s), so that their "
          "side of discovery completes too", 0.0, 3600.0),
)  # fmt: skip

NODES = {"vpr_localizer": LOCALIZER, "vpr_mapper": MAPPER, "vpr_replay_evaluator": REPLAY_EVALUATOR}


def problems(config: dict[str, Value], params: tuple[Param, ...]) -> list[str]:
    """Why values of ``config`` are not acceptable, one reason per bad parameter."""
    return [reason for reason in (p.check(config[p.name]) for p in params) if reason]


def declare(node: Any, params: tuple[Param, ...]) -> None:
    """Declare ``params`` on an rclpy node with descriptors, and reject invalid changes."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
    from rclpy.exceptions import ParameterException

    by_name = {p.name: p for p in params}
    for p in params:
        descriptor = ParameterDescriptor(description=p.description, read_only=not p.dynamic)
        if p.choices:
            descriptor.additional_constraints = "one of: " + ", ".join(p.choices)
        if p.low is not None and isinstance(p.default, float):
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=p.low, to_value=p.high, step=0.0)
            ]
        elif p.low is not None and isinstance(p.default, int):
            descriptor.integer_range = [IntegerRange(from_value=int(p.low), to_value=int(p.high), step=1)]
        try:
            node.declare_parameter(p.name, p.default, descriptor)
        except ParameterException as exc:  # a params file or -p value of the wrong type or range
            raise InputError(f"parameter {p.name}: {' '.join(str(exc).split())}") from None

    def pre_set(changes):
        for change in changes:
            spec = by_name.get(change.name)
            reason = None if spec is None else spec.check(change.value)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(pre_set)


def snapshot(node: Any, params: tuple[Param, ...]) -> dict[str, Value]:
    """Current values, with numeric arrays as plain lists."""
    values = {}
    for p in params:
        value = node.get_parameter(p.name).value
        values[p.name] = list(value) if isinstance(p.default, list) else value
    return values


def defaults_yaml(node_name: str, params: tuple[Param, ...]) -> str:
    """``config/<node>.yaml``: every parameter with its default, nested by the dotted names."""
    lines = [
        f"# Parameters of {node_name}, with their defaults. Generated by `python -m vpr_ros.nodes.params",
        f"# --yaml {node_name}`; descriptions in the README and `ros2 param describe`.",
        "/**:  # every node started with this file (a namespace does not stop the match)",
        "  ros__parameters:",
    ]
    tree: dict = {}  # nested groups in order of first appearance; leaves are Params
    for p in params:
        *groups, leaf = p.name.split(".")
        node = tree
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = p
    lines += _yaml_lines(tree, depth=2)
    return "\n".join(lines) + "\n"


def _yaml_lines(tree: dict, depth: int) -> list[str]:
    lines = []
    for key, item in tree.items():
        if isinstance(item, Param):
            lines.append("  " * depth + f"{key}: {_yaml_value(item.default)}  # {item.description}")
        else:
            lines += ["  " * depth + f"{key}:", *_yaml_lines(item, depth + 1)]
    return lines


def _yaml_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return repr(value)


def markdown_table(params: tuple[Param, ...]) -> str:
    rows = ["| Parameter | Default | Range / choices | Runtime | Description |", "|---|---|---|---|---|"]
    for p in params:
        if p.choices:
            allowed = " \\| ".join(p.choices)
        elif p.low is not None:
            allowed = f"{p.low:g} .. {p.high:g}"
        else:
            allowed = ""
        rows.append(
            f"| `{p.name}` | `{_yaml_value(p.default)}` | {allowed} | "
            f"{'yes' if p.dynamic else ''} | {p.description} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print a node's parameter table or defaults YAML")
    parser.add_argument("node", choices=sorted(NODES))
    parser.add_argument("--yaml", action="store_true", help="the defaults YAML instead of the README table")
    args = parser.parse_args(argv)
    params = NODES[args.node]
    print(
        defaults_yaml(args.node, params) if args.yaml else markdown_table(params),
        end="\n" if not args.yaml else "",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
