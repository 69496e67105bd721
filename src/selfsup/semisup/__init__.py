"""Semi-supervised methods: one file each, same contract and loop as the self-supervised ones,
registered in the same registry (``selfsup list methods``)."""

from . import (distill, fixmatch, flexmatch, freematch, mpl, noisy_student,  # noqa: F401
               pseudo_label, sla, supervised)
from .base import Classifier, SemiSupervisedMethod

__all__ = ["Classifier", "SemiSupervisedMethod"]
