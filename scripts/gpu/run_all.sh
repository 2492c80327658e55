#!/bin/bash
# One prepared device run: scripts/gpu_check.py and the meta-training scripts beside it, side by side
# (one GPU, 16 CPU cores), each under its own timeout; everything lands under $OUT.
#   OUT=$OUTDIR bash scripts/gpu/run_all.sh       (about 5.5 minutes)
set -u
ROOT=${OUT:?set OUT to the output folder}
HERE=$(dirname "$0")
mkdir -p "$ROOT/gpu_check"
cp BENCHMARKS.md "$ROOT/gpu_check/"
nvidia-smi > "$ROOT/nvidia-smi.txt" 2>&1
( OMP_NUM_THREADS=4 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD timeout 330 python3 scripts/gpu_check.py \
    --out "$ROOT/gpu_check/gpu_check.json" --benchmarks "$ROOT/gpu_check/BENCHMARKS.md" \
    > "$ROOT/gpu_check/gpu_check.log" 2>&1; echo "exit $?" >> "$ROOT/gpu_check/gpu_check.log" ) &
for s in "$HERE"/hyper.sh "$HERE"/generate.sh "$HERE"/nowcast.sh; do
  name=$(basename "$s" .sh)
  mkdir -p "$ROOT/$name"
  ( OUT=$ROOT/$name PYTHONUNBUFFERED=1 PYTHONPATH=$PWD timeout 280 bash "$s" > "$ROOT/$name/run.log" 2>&1;
    echo "exit $?" >> "$ROOT/$name/run.log" ) &
done
wait
for f in "$ROOT"/*/run.log "$ROOT/gpu_check/gpu_check.log"; do echo "== $f"; tail -4 "$f"; done
du -sh "$ROOT"
