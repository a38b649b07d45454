#!/usr/bin/env bash
# The one prepared GPU check, at most BUDGET seconds (default 360: 6 minutes on an H100, install included):
#   bash benchmarks/gpu_check.sh          # env: PYTHON (default python3), OUT (default results/gpu),
#   QUALITY (default "--seeds 0": the quality step's runs, e.g. "--seeds 1 2 --runs vanilla_s1 layersync_s2"),
#   QUALITY_LIMIT (default: the time left)
# Steps in order of value, each under its own time limit, cut to the time left: install and import
# check; the CUDA tests; graph-vs-eager correctness; LayerSync overhead at SiT-B/2; step speed of every
# mode at SiT-B/2, of graph mode and the plain file at SiT-XL/2 (the largest batch that fits, and batch
# 256 by accumulation); sampling speed; LayerSync overhead at SiT-XL/2; a 200-step train run; last, with the time left,
# LayerSync-vs-vanilla quality runs (SiT-S/2 on digits; samples to $OUT/quality_samples.npz).
# After every step its log is appended to $OUT/gpu_check.log and $OUT/report.md
# (summary of the targets first) and $OUT/results.json are rebuilt, so a run cut short still returns
# its finished steps; the train run's last sample grid goes to $OUT/samples.png. See benchmarks/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-results/gpu}
BUDGET=${BUDGET:-360}
WORK=$(mktemp -d)
SITE=$WORK/site  # the --target install, used only when the python's site-packages is read-only
mkdir -p "$OUT" "$WORK/logs" "$SITE"
rm -f "$OUT/report.md" "$OUT/results.json" "$OUT/samples.png"
: >"$OUT/gpu_check.log"
export PY WORK SITE LAYERSYNC_RESULTS=$WORK/results PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONPATH=$PWD:$SITE:$PWD/packages/layersync-core/src:$PWD/packages/layersync-image/src${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$WORK/nvidia-smi.txt" 2>/dev/null \
  || echo "nvidia-smi not available" >"$WORK/nvidia-smi.txt"

record() {  # record STEP STATUS SECONDS: log it, rebuild the report
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$WORK/steps.tsv"
  { echo "===== $1: $2 (${3}s)"; cat "$WORK/logs/$1.log" 2>/dev/null; } >>"$OUT/gpu_check.log"
  timeout 30 "$PY" benchmarks/summary.py "$WORK" "$OUT" >/dev/null || echo "summary failed"
  echo "   $1: $2 (${3}s)"
}

step() {  # step NAME LIMIT COMMAND...: run it under min(LIMIT, time left); true if it passed
  local name=$1 limit=$2 left=$((BUDGET - SECONDS)) began=$SECONDS status rc
  shift 2
  ((limit > left)) && limit=$left
  if ((limit < 15)); then
    status="NOT RUN (out of time)"
  else
    echo "== $name (at most ${limit}s)"
    timeout -k 5 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1
    rc=$?
    case $rc in
      0) status=PASS ;;
      124 | 137) status="TIMEOUT (${limit}s)" ;;
      *) status="FAIL (exit $rc)" ;;
    esac
  fi
  record "$name" "$status" $((SECONDS - began))
  [[ $status == PASS ]]
}

install() {  # editable into $PY's site-packages; if that is read-only, into $SITE (on PYTHONPATH);
  # if the machine's setuptools cannot build them (PEP 639 licences need setuptools >= 77), the sources
  # are on PYTHONPATH already and $SITE gets the two dist-infos whose entry points the registry reads
  local packages=(packages/layersync-core packages/layersync-image)
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e "${packages[0]}" -e "${packages[1]}" && return
  echo "editable install failed: installing into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" "${packages[@]}" && return
  echo "pip cannot build the packages here: entry points written into $SITE"
  "$PY" - "$SITE" <<'EOF'
import pathlib, sys, tomllib
for name in ("layersync-core", "layersync-image"):
    project = tomllib.loads(pathlib.Path(f"packages/{name}/pyproject.toml").read_text())["project"]
    info = pathlib.Path(sys.argv[1]) / f"{name.replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {project['version']}\n")
    points = "".join(f"{k} = {v}\n" for k, v in project["entry-points"]["layersync"].items())
    (info / "entry_points.txt").write_text(f"[layersync]\n{points}")
EOF
}
export -f install

import_check() {  # the image plugin loads with nothing but what the machine has; versions and card -> env.json
  "$PY" -m layersync.cli.main plugins && "$PY" - <<'EOF'
import json, os, platform, sys
import torch, layersync, layersync_image
from layersync.plugins import registry
cuda = torch.cuda.is_available()
env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
       "cuda_available": cuda, "device_name": torch.cuda.get_device_name() if cuda else "no CUDA device"}
json.dump(env, open(os.path.join(os.environ["WORK"], "env.json"), "w"))
print(env)
reg = registry()
sys.exit(0 if "image" in reg.names("modalities") else f"no image plugin: {reg.failures()}")
EOF
}
export -f import_check

# Limits hold a cold torch.compile of each model (about 30 s for SiT-B/2, a minute for SiT-XL/2 on an H100):
# graph_check compiles SiT-B/2 at batch 64 in bf16 as overhead_b2 and speed_b2 use it, so they find it in
# torch.compile's on-disk cache. speed_xl2 starts SiT-XL/2 at batch 128, not 256, which needs about twice
# the activations (62 GiB in all at batch 128, captured uncompiled, on 2026-11-27): an OOM costs a compile.
# overhead_xl2 holds two captured steps (on, off) at once, so batch 64.
CUDA_STEPS=(tests graph_check overhead_b2 speed_b2 speed_xl2 sample_speed overhead_xl2)
if ! { step install 60 bash -c install && step import 45 bash -c import_check; }; then
  for name in "${CUDA_STEPS[@]}" train quality; do record "$name" "NOT RUN (install or import failed)" 0; done
else
  has_cuda() { grep -q '"cuda_available": true' "$WORK/env.json"; }
  if has_cuda; then
    step tests 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_step.py tests/test_masks_and_trees.py \
      tests/test_nonfinite_and_signals.py -k "on_cuda or fresh_noise or on_replay"
    step graph_check 120 "$PY" -m benchmarks.graph_check
    step overhead_b2 60 "$PY" -m benchmarks overhead --device cuda --size B/2 --input 4x32x32 --batch 64 \
      --repeats 6 --steps 5 --warmup 1
    step speed_b2 90 "$PY" -m benchmarks step_speed --device cuda --configs B/2:64 \
      --modes eager compile graph graph-eager plain --layersync on --steps 10 --warmup 2
    step speed_xl2 150 "$PY" -m benchmarks step_speed --device cuda --configs XL/2:128 --modes graph plain \
      --layersync on --large-batch 256 --grad-accum 2 --steps 5 --warmup 1
    step sample_speed 120 "$PY" -m benchmarks sample_speed --device cuda --configs B/2:64 XL/2:64
    # last of the timed steps: two cold SiT-XL/2 compiles, about two minutes; within 6 minutes only if the
    # compiles above came from the cache
    step overhead_xl2 180 "$PY" -m benchmarks overhead --device cuda --size XL/2 --input 4x32x32 --batch 64 \
      --repeats 4 --steps 5 --warmup 1
  else
    for name in "${CUDA_STEPS[@]}"; do record "$name" "NOT RUN (no CUDA device)" 0; done
  fi
  step train 60 "$PY" -m layersync.cli.train --plugin image --out "$WORK/run" --steps 200
  sample=$(ls "$WORK"/run/samples/*.png 2>/dev/null | tail -n 1)
  [[ -n $sample ]] && cp "$sample" "$OUT/samples.png"
  if has_cuda; then
    # shellcheck disable=SC2086  # QUALITY is a list of arguments
    step quality "${QUALITY_LIMIT:-$BUDGET}" "$PY" -m benchmarks.gpu_quality "$WORK/quality" "$OUT" --steps 4000 \
      ${QUALITY:---seeds 0}
  else
    record quality "NOT RUN (no CUDA device)" 0
  fi
fi
echo
"$PY" benchmarks/summary.py "$WORK" "$OUT"
echo "gpu_check took ${SECONDS}s; report: $OUT/report.md, log: $OUT/gpu_check.log"
