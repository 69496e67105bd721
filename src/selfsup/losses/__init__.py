"""Losses as pure functions; shapes in the docstrings."""

from .clustering import dino_center, dino_loss, sinkhorn, swav_loss
from .contrastive import info_nce, nt_xent, supcon
from .noncontrastive import barlow_twins_loss, byol_loss, negative_cosine, vicreg_loss

__all__ = ["barlow_twins_loss", "byol_loss", "dino_center", "dino_loss", "info_nce",
           "negative_cosine", "nt_xent", "sinkhorn", "supcon", "swav_loss", "vicreg_loss"]
