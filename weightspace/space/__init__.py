"""Weight spaces: tracing, groups and axes, permutations, (de)serialisation."""
from .axes import Cat, Prod
from .records import ActivationSite
from .registry import OpRule, supported_ops
from .weightspace import Group, ParamSpec, Permutation, WeightSpace

__all__ = ["WeightSpace", "Group", "ParamSpec", "Permutation", "Prod", "Cat", "ActivationSite", "OpRule",
           "supported_ops"]
