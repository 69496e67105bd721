from .loop import NonFiniteLossError, train

__all__ = ["NonFiniteLossError", "train"]
