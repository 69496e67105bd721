"""Semi-supervised methods: one file each, same contract and loop as the self-supervised ones,
registered in the same registry (``selfsup list methods``)."""

from . import distill, fixmatch, mpl, noisy_student, pseudo_label, sla, supervised  # noqa: F401
from .base import Classifier, SemiSupervisedMethod

__all__ = ["Classifier", "SemiSupervisedMethod"]
