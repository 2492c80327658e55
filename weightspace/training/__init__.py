"""Training infrastructure shared by every metanetwork: devices, DDP, resumable checkpoints, logs, plots."""
from .distributed import free_port, gather_batch, init_distributed, is_main_process, rank_and_world
from .trainer import (CheckpointMismatch, TrainConfig, Trainer, TrainResult, batch_indices, load_optimizer, lr_at,
                      plot_history, save_optimizer)

__all__ = ["Trainer", "TrainConfig", "TrainResult", "CheckpointMismatch", "init_distributed", "rank_and_world",
           "is_main_process", "free_port", "gather_batch", "batch_indices", "lr_at", "plot_history", "save_optimizer",
           "load_optimizer"]
