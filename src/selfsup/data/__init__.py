"""Data: sources (folder, archive, CSV), decoding, the decode-once cache and splits. The heavier
modules (they import torch) load on first use, so that ``DataError`` and the sources can be used
without torch."""

from .sources import DataError

__all__ = ["DATASETS", "DataError", "ImageDataset", "class_balanced_subset", "load_dataset",
           "stratified_split"]


def __getattr__(name):
    if name in ("DATASETS", "ImageDataset", "load_dataset"):
        from . import dataset

        return getattr(dataset, name)
    if name in ("class_balanced_subset", "stratified_split"):
        from . import splits

        return getattr(splits, name)
    raise AttributeError(f"module 'selfsup.data' has no attribute {name!r}")
