"""selfsup: self- and semi-supervised learning from unlabeled images."""

__version__ = "0.1.0"
