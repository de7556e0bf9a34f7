"""Map a route with the vpr_mapper lifecycle node while driving it once.

    ros2 launch vpr_ros mapping.launch.py model:=/path/bundle map:=/path/new_map pose_topic:=/amcl_pose \
        pose_type:=pose_stamped camera_extrinsic:="[0.2, 0.0, 1.1, -0.5, 0.5, -0.5, 0.5]"
    ros2 launch vpr_ros mapping.launch.py model:=... map:=/path/site append:=true pose_type:=tf

Images and poses are paired by stamp; a keyframe is kept every keyframe_min_distance_m or
keyframe_min_rotation_deg (params file). The map is saved on
``ros2 service call /vpr/vpr_mapper/save_map std_srvs/srv/Trigger`` and when the launch is stopped
(Ctrl-C); an existing map at ``map`` is replaced only with ``overwrite:=true``, or gets this drive as
a new session with ``append:=true``. Keyframe poses are the robot base's (``pose_type:=tf``: the
``base_frame``'s pose in ``map_frame`` from /tf); the camera's ``camera_extrinsic`` is stored with
the session. Map in a global frame (``map``), not in ``odom``: the node warns.
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
        DeclareLaunchArgument("map", description="directory the map is saved to"),
        DeclareLaunchArgument(
            "overwrite",
            default_value="false",
            choices=["true", "false"],
            description="replace an existing map",
        ),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw", description="camera topic"),
        DeclareLaunchArgument(
            "compressed",
            default_value="false",
            choices=["true", "false"],
            description="subscribe to <image_topic>/compressed instead of the raw topic",
        ),
        DeclareLaunchArgument(
            "append",
            default_value="false",
            choices=["true", "false"],
            description="add this drive as a new session of the map at 'map'",
        ),
        DeclareLaunchArgument("pose_topic", default_value="/odom", description="pose source topic"),
        DeclareLaunchArgument(
            "pose_type",
            default_value="odometry",
            choices=["odometry", "pose_stamped", "tf"],
            description="nav_msgs/Odometry, geometry_msgs/PoseStamped, or TF (base_frame in map_frame)",
        ),
        DeclareLaunchArgument("map_frame", default_value="", description="map frame ('' = the poses')"),
        DeclareLaunchArgument("base_frame", default_value="base_link", description="with pose_type:=tf"),
        DeclareLaunchArgument(
            "camera_extrinsic",
            default_value="[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]",
            description="base -> camera [x, y, z, qx, qy, qz, qw]",
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
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("vpr_ros"), "config", "mapper.yaml"]),
            description="parameters YAML (defaults: share/vpr_ros/config/mapper.yaml)",
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
    ]
    transport = PythonExpression(["'compressed' if '", arg("compressed"), "' == 'true' else 'raw'"])
    mapper = Node(
        package="vpr_ros",
        executable="vpr_mapper",
        name="vpr_mapper",
        namespace=arg("namespace"),
        output="screen",
        parameters=[
            arg("params_file"),
            {
                "model.bundle_dir": arg("model"),
                "map.dir": arg("map"),
                "map.overwrite": arg("overwrite"),
                "map.append": ParameterValue(arg("append"), value_type=bool),
                "frames.map": arg("map_frame"),
                "frames.base": arg("base_frame"),
                "frames.camera_extrinsic": ParameterValue(arg("camera_extrinsic"), value_type=list[float]),
                "model.backend": arg("backend"),
                "model.precision": arg("precision"),
                "input.transport": transport,
                "input.pose_type": arg("pose_type"),
                "use_sim_time": arg("use_sim_time"),
            },
        ],
        remappings=[("image", arg("image_topic")), ("odom", arg("pose_topic")), ("pose", arg("pose_topic"))],
        arguments=["--ros-args", "--log-level", arg("log_level")],
        sigterm_timeout="30",  # room for the final atomic save before launch escalates to SIGKILL
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
            mapper,
        ]
    )
