#!/usr/bin/env bash
# The one prepared GPU check, run on a lent machine in a single call (about 8 minutes):
#   bash benchmarks/gpu_check.sh
# Installs our packages into the machine's python, checks that CUDA-graph replay matches
# eager, trains the default image run on the GPU and runs the speed suites. Writes three
# files to $OUT (default results/gpu): report.md (every table and log tail),
# results.tar.gz (the JSON reports) and the run's last sample grid.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export LAYERSYNC_RESULTS="$WORK/results" PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
PY=${PYTHON:-python3}
status=0
step() {  # step NAME SECONDS COMMAND...: run under a time limit, log to $WORK/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$WORK/$name.log" 2>&1 || { echo "$name FAILED (exit $?)" | tee -a "$WORK/$name.log"; status=1; }
  tail -n 12 "$WORK/$name.log"
}
$PY -m pip install -q --no-deps --no-build-isolation -e packages/layersync-core -e packages/layersync-image \
  || { echo "install failed"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$WORK/gpu.log"
step tests 150 $PY -m pytest -q -p no:cacheprovider tests/test_step.py tests/test_layersync_term.py tests/test_backbone.py
step graph_check 120 $PY benchmarks/graph_check.py
step train 120 $PY -m layersync.cli.train --plugin image --out "$WORK/run" --steps 300 --set train.sample_every=300
step overhead 90 $PY -m benchmarks overhead --device cuda --size B/2 --input 4x32x32 --batch 64
step speed_b2 150 $PY -m benchmarks step_speed --device cuda --configs B/2:64 --modes eager compile graph
step speed_xl2 120 $PY -m benchmarks step_speed --device cuda --configs XL/2:256 --modes eager graph --layersync on
{
  echo "# gpu_check ($(date -u +%FT%TZ), status $status)"
  for f in "$WORK"/results/*.md; do echo; cat "$f"; done
  for f in "$WORK"/*.log; do echo; echo "## $(basename "$f")"; echo '```'; tail -n 40 "$f"; echo '```'; done
} >"$OUT/report.md"
tar -czf "$OUT/results.tar.gz" -C "$WORK" results 2>/dev/null
cp "$(ls "$WORK"/run/samples/*.png 2>/dev/null | tail -n 1)" "$OUT/samples.png" 2>/dev/null
echo "gpu_check status: $status (report: $OUT/report.md)"
exit $status
