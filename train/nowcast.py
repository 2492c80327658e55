"""Meta-train a NiNo (or WNN) nowcaster on trajectories (torchrun-ready).

    python train/nowcast.py train --collection ZOO_MLP --collection ZOO_CNN --collection ZOO_GPT --out runs/nino
    torchrun --nproc_per_node 2 train/nowcast.py train --collection ZOO --out runs/nino --device cpu

Each process joins the process group torchrun describes (gloo on CPU, nccl on GPU) and takes an
equal slice of every global batch of windows; re-running the same command resumes from the last
checkpoint; ``OUT/loss.png`` plots the training loss and the held-out L1.
"""
import sys

from weightspace.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(main(["nowcast", *argv] if argv and argv[0] in ("train", "bench") else argv))
