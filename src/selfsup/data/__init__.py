from .dataset import DATASETS, ImageDataset, load_dataset
from .sources import DataError
from .splits import class_balanced_subset, stratified_split

__all__ = ["DATASETS", "DataError", "ImageDataset", "class_balanced_subset", "load_dataset",
           "stratified_split"]
