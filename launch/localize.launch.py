"""Localize against a place map with the vpr_localizer lifecycle node.

    ros2 launch vpr_ros localize.launch.py model:=/path/bundle map:=/path/map image_topic:=/camera/image_raw
    ros2 launch vpr_ros localize.launch.py ... sequence:=true odometry:=topic odom_topic:=/odom
    ros2 launch vpr_ros localize.launch.py ... sequence:=true odometry:=tf publish_tf:=true initialpose:=true

The node autostarts (``autostart: true`` in the params file); set it false to drive the lifecycle
from a manager. Launch arguments override the params file (they are applied after it), in the style
of nav2_bringup's localization_launch.py. Outputs: ``<namespace>/vpr_localizer/pose`` (the
``base_frame``'s pose in the map frame), ``.../matches``, ``.../markers``, ``.../map_markers``,
``.../keyframes``, ``/diagnostics``; with ``publish_tf`` ``map -> odom`` on /tf, with
``initialpose`` confident fixes on ``/initialpose`` (Nav2 AMCL); ``.../relocalize`` (Trigger) waits
for a fix after a kidnap. Several cameras: list them in the params file (``input.image_topics``,
``frames.camera_extrinsics``).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

BACKENDS = ["auto", "tensorrt", "onnxruntime", "torch"]


def generate_launch_description() -> LaunchDescription:
    arg = LaunchConfiguration
    arguments = [
        DeclareLaunchArgument("model", description="model bundle directory (model.onnx + model.json)"),
        DeclareLaunchArgument("map", description="place map directory built with the same model"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw", description="camera topic"),
        DeclareLaunchArgument(
            "compressed",
            default_value="false",
            choices=["true", "false"],
            description="subscribe to <image_topic>/compressed instead of the raw topic",
        ),
        DeclareLaunchArgument(
            "backend", default_value="auto", choices=BACKENDS, description="inference backend"
        ),
        DeclareLaunchArgument(
            "precision",
            default_value="fp16",
            choices=["fp32", "fp16", "int8"],
            description="TensorRT precision",
        ),
        DeclareLaunchArgument(
            "sequence",
            default_value="false",
            choices=["true", "false"],
            description="answer from the sequence filter over the last frames (sequence.enabled)",
        ),
        DeclareLaunchArgument(
            "sequence_length", default_value="10", description="frames per trajectory (sequence.length)"
        ),
        DeclareLaunchArgument(
            "odometry",
            default_value="none",
            choices=["none", "topic", "tf"],
            description="the robot's odometry: none, odom_topic (nav_msgs/Odometry) or TF odom -> base",
        ),
        DeclareLaunchArgument("odom_topic", default_value="/odom", description="with odometry:=topic"),
        DeclareLaunchArgument(
            "camera_extrinsic",
            default_value="",
            description="base -> camera 'x y z qx qy qz qw' ('' = mounted like the mapping camera)",
        ),
        DeclareLaunchArgument("base_frame", default_value="base_link", description="robot base frame"),
        DeclareLaunchArgument("odom_frame", default_value="odom", description="odometry frame"),
        DeclareLaunchArgument(
            "publish_tf",
            default_value="false",
            choices=["true", "false"],
            description="publish map -> odom on /tf from confident fixes (needs odometry)",
        ),
        DeclareLaunchArgument(
            "initialpose",
            default_value="false",
            choices=["true", "false"],
            description="publish confident fixes as an initial pose (Nav2 AMCL, RTAB-Map)",
        ),
        DeclareLaunchArgument(
            "initialpose_topic",
            default_value="/initialpose",
            description="AMCL: /initialpose; RTAB-Map: /rtabmap/initialpose",
        ),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("vpr_ros"), "config", "localizer.yaml"]),
            description="parameters YAML (defaults: share/vpr_ros/config/localizer.yaml)",
        ),
        DeclareLaunchArgument("namespace", default_value="vpr", description="namespace of the node"),
        DeclareLaunchArgument(
            "fastdds_profile",
            default_value=PathJoinSubstitution(
                [FindPackageShare("vpr_ros"), "config", "fastdds_large_images.xml"]
            ),
            description="Fast DDS XML for raw camera frames (FASTDDS_DEFAULT_PROFILES_FILE; '' keeps the "
            "environment's); the camera driver must load it too",
        ),
        DeclareLaunchArgument(
            "use_sim_time",
            default_value="false",
            choices=["true", "false"],
            description="use /clock (bag replay)",
        ),
        DeclareLaunchArgument("log_level", default_value="info", description="debug | info | warn | error"),
        DeclareLaunchArgument(
            "respawn",
            default_value="false",
            choices=["true", "false"],
            description="restart the node if it dies",
        ),
    ]
    transport = PythonExpression(["'compressed' if '", arg("compressed"), "' == 'true' else 'raw'"])
    localizer = Node(
        package="vpr_ros",
        executable="vpr_localizer",
        name="vpr_localizer",
        namespace=arg("namespace"),
        output="screen",
        parameters=[
            arg("params_file"),
            {
                "model.bundle_dir": arg("model"),
                "map.dir": arg("map"),
                "model.backend": arg("backend"),
                "model.precision": arg("precision"),
                "input.transport": transport,
                "sequence.enabled": ParameterValue(arg("sequence"), value_type=bool),
                "sequence.length": ParameterValue(arg("sequence_length"), value_type=int),
                "odometry.source": arg("odometry"),
                "odometry.topic": ParameterValue(arg("odom_topic"), value_type=str),
                "frames.camera_extrinsics": ParameterValue(
                    ["['", arg("camera_extrinsic"), "']"], value_type=list[str]
                ),
                "frames.base": arg("base_frame"),
                "frames.odom": arg("odom_frame"),
                "tf.publish_map_to_odom": ParameterValue(arg("publish_tf"), value_type=bool),
                "relocalization.publish_initialpose": ParameterValue(arg("initialpose"), value_type=bool),
                "relocalization.initialpose_topic": arg("initialpose_topic"),
                "use_sim_time": arg("use_sim_time"),
            },
        ],
        remappings=[("image", arg("image_topic"))],
        arguments=["--ros-args", "--log-level", arg("log_level")],
        respawn=arg("respawn"),
        respawn_delay=2.0,
    )
    return LaunchDescription(
        [
            SetEnvironmentVariable("RCUTILS_LOGGING_BUFFERED_STREAM", "1"),
            *arguments,
            SetEnvironmentVariable(
                "FASTDDS_DEFAULT_PROFILES_FILE",
                LaunchConfiguration("fastdds_profile"),
                condition=IfCondition(
                    PythonExpression(["'", LaunchConfiguration("fastdds_profile"), "' != ''"])
                ),
            ),
            localizer,
        ]
    )
