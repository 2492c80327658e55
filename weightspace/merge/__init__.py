"""Model merging: a registry of methods (linear, slerp, task_arithmetic, ties, dare, model_stock), optional
re-basin alignment, streaming merges over safetensors and mergekit-style YAML configs."""
from ..errors import MergeError
from .methods import METHODS, MergeMethod, check_parameters, get_method, register
from .run import load_config, load_state_dict, merge, merge_files, run_config, save_merged

__all__ = ["merge", "merge_files", "run_config", "load_config", "METHODS", "MergeMethod", "MergeError", "register",
           "get_method", "check_parameters", "load_state_dict", "save_merged"]
