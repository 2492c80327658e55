"""Model merging: a registry of methods (linear, slerp, task_arithmetic, ties, dare, model_stock), optional
re-basin alignment, streaming merges over safetensors and mergekit-style YAML configs."""
from .methods import METHODS, MergeError, MergeMethod, get_method, register
from .run import (load_config, load_state_dict, merge, merge_files, merge_tensor, param_for, run_config,
                  save_merged, write_safetensors)

__all__ = ["merge", "merge_files", "run_config", "load_config", "METHODS", "MergeMethod", "MergeError", "register",
           "get_method", "merge_tensor", "param_for", "load_state_dict", "save_merged", "write_safetensors"]
