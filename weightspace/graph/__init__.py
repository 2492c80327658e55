"""Neural graphs: WeightSpace <-> torch_geometric Data."""
from .layout import EDGE_TYPES, NODE_TYPES, GraphLayout

__all__ = ["GraphLayout", "EDGE_TYPES", "NODE_TYPES"]
