#!/bin/bash
# Meta-train the digits graph hypernetwork (packaged model), its three benchmark ablations and a tiny-GPT one on the
# GPU, all five in parallel processes (3 CPU threads each), within 240 s including Python start-up.
# Writes $OUT/runs/<variant>/{model/,hyper_train.json,loss.png} and $OUT/train.log (a few MB in all).
set -u
export PYTHONPATH=$PWD
mkdir -p "$OUT/runs"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
timeout 232 python3 scripts/pretrain_hyper.py --out "$OUT/runs" --seconds 200 --reserve 20 --device cuda \
    --batch-size 16 --lr 8e-3 --warmup 50 --hidden 32 --layers 2 --checkpoint-every 250 > "$OUT/train.log" 2>&1
echo "exit code $?" >> "$OUT/train.log"
# keep the trained models and logs; drop a variant's checkpoints once its final model is saved
for d in "$OUT"/runs/*/; do
    if [ -f "$d/model/config.json" ]; then rm -rf "$d"/ckpt-*; fi
done
du -sh "$OUT" >> "$OUT/train.log"
