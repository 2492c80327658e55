#!/usr/bin/env bash
# Train the weight generators briefly on the GPU (bf16 autocast via the Trainer); report loss falling and samples/s.
# Runs from the repository root; writes $OUT/gpu_generate.json and $OUT/gpu_generate.log.
set -u
OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT"
SCALE=${SCALE:-1}
export PYTHONPATH=$PWD:${PYTHONPATH:-}
timeout 115 python3 - "$OUT" "$SCALE" "${THREADS:-4}" <<'PY' 2>&1 | tail -c 200000 > "$OUT/gpu_generate.log"
import json, sys, time, tempfile
import torch
from weightspace.tasks.zoo import build_zoo
from weightspace.generate import GraphDiffusion, PDiff
from weightspace.memorization.training import load_training
from weightspace.training import TrainConfig
out, scale = sys.argv[1], float(sys.argv[2])
dev = "cuda" if torch.cuda.is_available() else "cpu"
res = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "torch": torch.__version__}
def save():
    with open(f"{out}/gpu_generate.json", "w") as f:
        json.dump(res, f, indent=1)
t0 = time.perf_counter()
coll = build_zoo("pdiff-mlp", tempfile.mkdtemp() + "/zoo", size="tiny", progress=False, threads=int(sys.argv[3]))
space = coll.space(coll.architectures()[0])
sds = [coll.load(r["run_id"], r["step"]) for r in coll.rows()]
res["zoo_seconds"], res["training_models"] = time.perf_counter() - t0, len(sds)
save()
def cfg(steps, batch):
    return TrainConfig(steps=steps, batch_size=batch, lr=1e-3, warmup=20, checkpoint_every=0, eval_every=0,
                       log_every=max(1, steps // 10), progress=False, plot=False, device=dev)
def sync():
    if dev == "cuda":
        torch.cuda.synchronize()
for name, fit in [
    ("pdiff", lambda: PDiff.fit(sds, space=space, autoencoder=cfg(int(600 * scale), 64),
                                diffusion=cfg(int(800 * scale), 64), latent=32, hidden=512, denoiser_hidden=512)),
    ("graph_diffusion", lambda: GraphDiffusion.fit(sds, space=space, config=cfg(int(300 * scale), 32), hidden=64,
                                                   layers=3, diffusion_steps=100))]:
    try:
        t = time.perf_counter(); g = fit(); sync(); fit_s = time.perf_counter() - t
        hist = g.history["diffusion"]
        r = {"fit_seconds": fit_s, "loss_first": hist[0]["loss"], "loss_last": hist[-1]["loss"],
             "loss_curve": [round(h["loss"], 4) for h in hist]}
        if "autoencoder" in g.history:
            r["ae_loss_first"], r["ae_loss_last"] = g.history["autoencoder"][0]["loss"], g.history["autoencoder"][-1]["loss"]
        g.to(dev)
        n = 64 if name == "pdiff" else 16
        g.sample(2, seed=0); sync()
        t = time.perf_counter(); s = g.sample(n, seed=1); sync()
        r["samples_per_second"] = n / (time.perf_counter() - t)
        r["finite"] = all(bool(torch.isfinite(v.float()).all()) for sd in s for v in sd.values())
        res[name] = r
    except Exception as e:
        res[name] = {"error": repr(e)}
    save()
    print(name, res[name], flush=True)
res["total_seconds"] = time.perf_counter() - t0
save()
PY
echo "exit: ${PIPESTATUS[0]}" >> "$OUT/gpu_generate.log"
