#!/usr/bin/env bash
# Set everything up, then run the main job on the embedded default: generate the demo world in
# every format, read it back with independent readers, and plot it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-runs/demo}
.venv/bin/python -m training synth --preset demo --seed 0 --out "$out/world" --overwrite
.venv/bin/python -m training inspect --world "$out/world"
