"""Self-supervised methods: one file each, registered by the name users type."""

from ..registry import Registry

METHODS: Registry = Registry("method")

from . import (barlow_twins, byol, deepcluster, denoising_ae, dino, distillation,  # noqa: E402,F401
               ijepa, mae, mocov2,
               colorization, igpt, inpainting, jigsaw, relative_position, rotnet, simclr,
               selfpatch, simsiam,
               semantic_vae, supcon, swav, synthetic_multitask, vae,
               vicreg)
from .base import BatchInfo, Method, StepOutput  # noqa: E402

__all__ = ["METHODS", "BatchInfo", "Method", "StepOutput"]

from .. import semisup as _semisup  # noqa: E402,F401  (registers the semi-supervised methods)
