"""Losses as pure functions; shapes in the docstrings."""

from .contrastive import nt_xent

__all__ = ["nt_xent"]
