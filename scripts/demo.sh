#!/usr/bin/env bash
# Set up the runtime (`scripts/setup.sh runtime`: ONNX Runtime, FAISS, the ROS 2 wheels, no
# PyTorch), then run the main job on the embedded default: generate the demo world (rosbag2 only),
# map its day traverse with the shipped model, replay the dusk traverse through the real
# localization node over DDS (vpr-replay: vpr_localizer + vpr_bag_player + vpr_replay_evaluator),
# evaluate every other traverse offline with the shipped model and with raw pixels, and print the
# summary with the reports' paths. Usage: bash scripts/demo.sh [OUT_DIR] (default runs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh runtime
out=${1:-runs/demo}
bin=.venv/bin
model=vpr_ros/models/default
bags=$out/world/bags
# Keep the replay's DDS traffic on this machine unless the caller chose otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}

echo "== 1/4 demo world: 9 traverses of one route (day, dusk, night, fog, winter, occluders, noise, detour)"
$bin/python -m training synth --preset demo --seed 0 --formats bag --out "$out/world" --overwrite --quiet
echo "== 2/4 map of the day traverse with the shipped model"
$bin/vpr-build-map --bag "$bags/t00_day" --model $model --out "$out/map" --overwrite --quiet
echo "== 3/4 dusk traverse replayed through vpr_localizer over DDS (flow-controlled)"
$bin/vpr-replay --map "$out/map" --bag "$bags/t02_dusk" --model $model --out "$out/replay_dusk" --overwrite
echo "== 4/4 every query traverse offline: shipped model vs raw pixels on the same bags"
# The raw-pixel baseline runs beside the model (it is light), which saves a few seconds on 2 cores.
(
  for bag in "$bags"/t0[1-8]_*; do
    $bin/vpr-eval --map "$out/map" --bag "$bag" --baseline raw-pixels --map-bag "$bags/t00_day" \
      --out "$out/eval_raw_pixels/$(basename "$bag")" --overwrite --quiet >/dev/null
  done
) &
raw_pixels=$!
trap 'kill $raw_pixels 2>/dev/null || true' EXIT
rows=()
for bag in "$bags"/t0[1-8]_*; do
  name=$(basename "$bag")
  $bin/vpr-eval --map "$out/map" --bag "$bag" --model $model --out "$out/eval/$name" --overwrite --quiet >/dev/null
  rows+=("$out/eval/$name" "$out/eval_raw_pixels/$name")
done
wait $raw_pixels
echo
echo "Per traverse (rows: shipped model, then raw pixels on the same bag; recall within 10 m and 40 deg):"
$bin/python -m vpr_ros.evaluation.table "$out/replay_dusk" "${rows[@]}"
echo
echo "ROS replay report: $out/replay_dusk/report.md (plots beside it); offline reports: $out/eval/*/report.md"
