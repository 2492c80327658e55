"""Train a property predictor (torchrun-ready).

    python train/predict.py train --collection ZOO --target test_acc --out runs/pred
    torchrun --nproc_per_node 2 train/predict.py train --collection ZOO --out runs/pred --device cpu

Each process joins the process group torchrun describes (gloo on CPU, nccl on GPU) and takes an
equal slice of every global batch; re-running the same command resumes from the last checkpoint.
"""
import sys

from weightspace.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(main(["predict", *argv] if argv and argv[0] in ("train", "eval") else argv))
