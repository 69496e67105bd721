from .mlp import projection_head

__all__ = ["projection_head"]
