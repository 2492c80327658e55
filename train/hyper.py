"""Train a graph hypernetwork on digits MLP/CNN architectures (torchrun-ready).

    python train/hyper.py train --out runs/hyper --steps 2000
    torchrun --nproc_per_node 2 train/hyper.py train --out runs/hyper --device cpu

Each process joins the process group torchrun describes (gloo on CPU, nccl on GPU) and takes an
equal slice of every step's architectures; re-running the same command resumes from the last checkpoint.
"""
import sys

from weightspace.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(main(["hyper", *argv] if argv and argv[0] in ("train", "predict") else argv))
