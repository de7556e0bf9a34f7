"""Replay a recorded query run through the localization node and write an evaluation report.

    ros2 launch vpr_ros replay_eval.launch.py model:=/path/bundle map:=/path/map \\
        bag:=/path/query_bag report:=/path/report [player:=flow|rate|none] [rate:=1.0]

Starts vpr_localizer (top_k 20, for recall@20), vpr_replay_evaluator and, unless ``player:=none``,
vpr_bag_player: ``flow`` sends the next frame once the previous one was answered (deterministic on
any machine), ``rate`` plays at ``rate`` times the recorded rate. With ``player:=none`` play the bag
yourself (``ros2 bag play /path/query_bag``); the evaluator reports after ``idle_timeout`` seconds
without an answer. The launch ends when the evaluator has written the report. ``vpr-replay`` does the
same without ``ros2 launch``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler, SetEnvironmentVariable
from launch.conditions import UnlessCondition
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node

BACKENDS = ["auto", "tensorrt", "onnxruntime", "torch"]
TOP_K = 20


def generate_launch_description() -> LaunchDescription:
    arg = LaunchConfiguration
    arguments = [
        DeclareLaunchArgument("model", description="model bundle directory (model.onnx + model.json)"),
        DeclareLaunchArgument("map", description="place map built with the same model"),
        DeclareLaunchArgument("bag", description="query rosbag2 directory (images + ground-truth poses)"),
        DeclareLaunchArgument("report", description="report directory to write"),
        DeclareLaunchArgument(
            "overwrite", default_value="false", choices=["true", "false"], description="replace a report"
        ),
        DeclareLaunchArgument(
            "image_topic", default_value="/camera/image_raw", description="the bag's camera topic"
        ),
        DeclareLaunchArgument(
            "player",
            default_value="flow",
            choices=["flow", "rate", "none"],
            description="flow-controlled player, player at 'rate', or none (use ros2 bag play)",
        ),
        DeclareLaunchArgument("rate", default_value="1.0", description="multiple of the recorded rate"),
        DeclareLaunchArgument(
            "idle_timeout", default_value="10.0", description="report after this idle time (s)"
        ),
        DeclareLaunchArgument(
            "backend", default_value="auto", choices=BACKENDS, description="inference backend"
        ),
        DeclareLaunchArgument("namespace", default_value="vpr", description="namespace of the nodes"),
    ]
    answers = PythonExpression(["'/' + '", arg("namespace"), "'.strip('/') + '/vpr_localizer/matches'"])
    localizer = Node(
        package="vpr_ros",
        executable="vpr_localizer",
        name="vpr_localizer",
        namespace=arg("namespace"),
        output="screen",
        parameters=[
            {
                "model.bundle_dir": arg("model"),
                "map.dir": arg("map"),
                "model.backend": arg("backend"),
                "search.top_k": TOP_K,
                "output.publish_markers": False,
            }
        ],
        remappings=[("image", arg("image_topic"))],
    )
    evaluator = Node(
        package="vpr_ros",
        executable="vpr_replay_evaluator",
        name="vpr_replay_evaluator",
        namespace=arg("namespace"),
        output="screen",
        parameters=[
            {
                "bag": arg("bag"),
                "map.dir": arg("map"),
                "model.bundle_dir": arg("model"),
                "report.dir": arg("report"),
                "report.overwrite": PythonExpression(["'", arg("overwrite"), "' == 'true'"]),
                "input.image_topic": arg("image_topic"),
                "eval.idle_timeout_s": PythonExpression(["float(", arg("idle_timeout"), ")"]),
                "run.description": PythonExpression(
                    [
                        "'ROS 2 replay through vpr_localizer (replay_eval.launch.py), player ' + '",
                        arg("player"),
                        "' + (' at ' + '",
                        arg("rate"),
                        "' + 'x the recorded rate' if '",
                        arg("player"),
                        "' == 'rate' else '')",
                    ]
                ),
            }
        ],
        remappings=[("matches", answers)],
    )
    player = Node(
        package="vpr_ros",
        executable="vpr_bag_player",
        name="vpr_bag_player",
        namespace=arg("namespace"),
        output="screen",
        condition=UnlessCondition(PythonExpression(["'", arg("player"), "' == 'none'"])),
        parameters=[
            {
                "bag": arg("bag"),
                "image_topic": arg("image_topic"),
                "mode": PythonExpression(["'flow' if '", arg("player"), "' == 'flow' else 'rate'"]),
                "rate": PythonExpression(["float(", arg("rate"), ")"]),  # rate:=2 is a float too
                "wait_for_subscribers": 2,  # the localizer and the evaluator
            }
        ],
        remappings=[("answers", answers)],
    )
    stop_when_reported = RegisterEventHandler(
        OnProcessExit(target_action=evaluator, on_exit=[EmitEvent(event=Shutdown(reason="report written"))])
    )
    return LaunchDescription(
        [
            SetEnvironmentVariable("RCUTILS_LOGGING_BUFFERED_STREAM", "1"),
            *arguments,
            localizer,
            evaluator,
            player,
            stop_when_reported,
        ]
    )
