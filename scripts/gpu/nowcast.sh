#!/bin/bash
# Meta-train NiNo (hidden 32, 3 layers), a packaged-size NiNo and a WNN for horizons up to
# 40 spacings on long trajectories generated here on the CPU cores (train/nowcast_long.py, GPU for meta-training),
# then run the peer's setting of scripts/bench_nowcast.py (FM-16 CNN, lr 3e-4, 3,000 steps, period 300, 5 seeds)
# with them on the CPU cores in parallel. Whole script <= 240 s wall, python start-ups included.
# Writes (small): $OUT/long/{nino,nino_small,wnn}/ (save_pretrained), $OUT/long/result.json, $OUT/long.log,
#                 $OUT/peer/{results.json,summary.json,B.md}, $OUT/peer.log
set -u
START=$SECONDS
mkdir -p "$OUT/long" "$OUT/peer"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PYTORCH_NVML_BASED_CUDA_CHECK=1
echo "cores: $(nproc)" > "$OUT/long.log"
timeout -k 5 175 python3 train/nowcast_long.py --out "$OUT/long" --device auto --workers 12 --runs 600 \
  --steps 3000 --gpt-steps 1500 --save-every 20 --gen-seconds 55 --train-seconds 80 --horizons 40 \
  --hidden 32 --layers 3 --decoder-hidden 64 --batch 16 --lr 2e-3 --eval-windows 64 ${NOWCAST_LONG_EXTRA:-} \
  >> "$OUT/long.log" 2>&1
echo "exit code $? after $((SECONDS - START)) s" >> "$OUT/long.log"
LEFT=$((228 - (SECONDS - START)))
if [ -f "$OUT/long/nino/config.json" ] && [ "$LEFT" -gt 20 ]; then
  BENCH="scripts/bench_nowcast.py --peer --seeds 5 --out $OUT/peer --benchmarks $OUT/peer/B.md \
    --nino $OUT/long/nino --wnn $OUT/long/wnn --extra ninosmall=$OUT/long/nino_small \
    --extra ninopkg=weightspace/nowcast/pretrained/nino --methods adam,nino,ninopkg,ninosmall,wnn,linefit,lawa,linefit-h40 ${NOWCAST_BENCH_EXTRA:-}"
  timeout -k 3 $((LEFT - 12)) python3 $BENCH --workers 14 > "$OUT/peer.log" 2>&1
  echo "bench exit code $? after $((SECONDS - START)) s" >> "$OUT/peer.log"
  timeout 10 python3 $BENCH --summarize-only --resume >> "$OUT/peer.log" 2>&1
fi
echo "done after $((SECONDS - START)) s" >> "$OUT/long.log"
du -sh "$OUT" >> "$OUT/long.log"
