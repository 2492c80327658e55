"""Training infrastructure shared by every metanetwork: devices, DDP, resumable checkpoints, logs, plots."""
from .distributed import gather_batch, init_distributed, is_main_process, rank_and_world
from .flags import add_train_arguments, train_config_from_args
from .trainer import (CheckpointMismatch, EarlyStopping, TrainConfig, Trainer, TrainResult, batch_indices, load_optimizer, lr_at,
                      plot_history, save_optimizer)

__all__ = ["Trainer", "TrainConfig", "TrainResult", "EarlyStopping", "CheckpointMismatch", "init_distributed", "rank_and_world",
           "is_main_process", "gather_batch", "batch_indices", "lr_at", "plot_history", "save_optimizer",
           "load_optimizer", "add_train_arguments", "train_config_from_args"]
