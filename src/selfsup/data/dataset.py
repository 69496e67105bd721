"""ImageDataset: a uint8 image array (memory-mapped cache) with labels, and the dataset loaders."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..registry import Registry
from .cache import build_or_load
from .sources import DataError, open_source

DATASETS: Registry = Registry("dataset")


@dataclass
class ImageDataset:
    images: np.ndarray                 # [N, H, W, 3] uint8 (possibly a read-only memmap)
    labels: np.ndarray                 # [N] int64 class index, -1 = unlabeled
    classes: list[str]
    names: list[str]
    source: str = ""
    skipped: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def subset(self, idx: np.ndarray) -> "ImageDataset":
        idx = np.asarray(idx, dtype=np.int64)
        return ImageDataset(self.images[idx], self.labels[idx], self.classes,
                            [self.names[i] for i in idx], self.source, self.skipped)

    def aligned_to(self, classes: list[str]) -> "ImageDataset":
        """The same images with labels re-indexed to ``classes`` (the training set's), so that
        class i means the same thing in both. A class unknown to ``classes`` is an error naming
        it; classes absent here are fine."""
        if self.classes == list(classes):
            return self
        unknown = sorted(set(self.classes) - set(classes))
        if unknown:
            raise DataError(f"{self.source}: class(es) {', '.join(unknown)} are not in the training "
                            f"classes ({', '.join(classes)}); rename or remove them")
        index = {c: i for i, c in enumerate(classes)}
        remap = np.array([index[c] for c in self.classes], dtype=np.int64)
        labels = np.where(self.labels >= 0, remap[np.maximum(self.labels, 0)], -1)
        return ImageDataset(self.images, labels, list(classes), self.names, self.source,
                            self.skipped)

    def batch(self, idx) -> torch.Tensor:
        """uint8 [B, 3, H, W] (channels_last strides) for the given indices."""
        idx = np.asarray(idx)
        order = np.argsort(idx, kind="stable")  # sorted reads are kinder to a memmap
        arr = np.empty((len(idx),) + self.images.shape[1:], np.uint8)
        arr[order] = self.images[idx[order]]
        return torch.from_numpy(arr).permute(0, 3, 1, 2)

    def write_report(self, path: Path) -> None:
        """Write the skipped-file report (JSON) and print one summary line."""
        from ..rundir import write_json

        write_json(path, {"source": self.source, "used": len(self), "skipped": self.skipped})
        if self.skipped:
            print(f"selfsup: skipped {len(self.skipped)} unreadable file(s) in {self.source}, "
                  f"used {len(self)}; see {path}", file=sys.stderr)


def from_source(path, split: str | None = None, image_size: int = 32, cache_dir=None,
                strict: bool = False, threads: int = 2, progress: bool = True) -> ImageDataset:
    """Load a folder / archive / CSV through the decode-once cache."""
    source = open_source(path, split)
    images, meta = build_or_load(source, image_size, cache_dir, threads, progress)
    if strict and meta["skipped"]:
        first = meta["skipped"][0]
        raise DataError(f"{len(meta['skipped'])} unreadable file(s) in {source.description} "
                        f"(--strict); first: {first['name']}: {first['reason']}")
    raw = meta["labels"]
    classes = sorted({lab for lab in raw if lab is not None})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[lab] if lab is not None else -1 for lab in raw], dtype=np.int64)
    return ImageDataset(images, labels, classes, meta["names"], source.description, meta["skipped"])


@DATASETS.register("folder")
def load_folder(path=None, split=None, **kw) -> ImageDataset:
    """A folder, a tar/tar.gz archive or a CSV of path,label (data.path)."""
    if not path:
        raise DataError("data.path is required for dataset 'folder' (a folder, archive or CSV)")
    return from_source(path, split, **kw)


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


@DATASETS.register("cifar10")
def load_cifar10(path=None, split="train", **kw) -> ImageDataset:
    """CIFAR-10 as an image folder or archive with train/<class>/ and test/<class>/ (data.path)."""
    if not path:
        raise DataError("dataset 'cifar10' needs data.path: a folder or .tar.gz with train/ and "
                        "test/ sub-folders of class folders (e.g. cifar10-jpeg.tar.gz)")
    ds = from_source(path, split or "train", **kw)
    if ds.classes != CIFAR10_CLASSES:
        raise DataError(f"{path}: expected the 10 CIFAR-10 class folders under '{split}/', "
                        f"found {ds.classes[:12]}")
    return ds


@DATASETS.register("scenes")
def load_scenes(path=None, split=None, image_size: int = 32, **kw) -> ImageDataset:
    """Rendered scenes with per-pixel classes (ground, wall, sphere, box), built in memory from a
    seed; splits train (10,000), test and shifted (another appearance; 1,000 each).
    ``selfsup.data.scenes`` gives the masks."""
    from .scenes import load_scenes as _load

    return _load(path, split, image_size)


@DATASETS.register("digits")
def load_digits(path=None, split=None, image_size: int = 16, **kw) -> ImageDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), upsampled to
    ``image_size``. Splits: None (all), 'train' (80%, stratified, fixed) or 'test' (20%)."""
    from PIL import Image
    from sklearn.datasets import load_digits as sk_digits

    from .splits import stratified_split

    d = sk_digits()
    gray = (d.images * (255.0 / 16.0)).round().astype(np.uint8)  # [N, 8, 8]
    y = d.target.astype(np.int64)
    if split not in (None, "train", "test", "all"):
        raise DataError(f"digits has splits 'train', 'test' or none; got '{split}'")
    if split in ("train", "test"):
        tr, te = stratified_split(y, 0.2, seed=12345)
        keep = tr if split == "train" else te
        gray, y = gray[keep], y[keep]
    else:
        keep = np.arange(len(y))
    imgs = np.stack([np.asarray(Image.fromarray(g).resize((image_size, image_size),
                                                            Image.Resampling.BILINEAR))
                     for g in gray])
    imgs = np.repeat(imgs[..., None], 3, axis=3)
    return ImageDataset(imgs, y, [str(i) for i in range(10)], [f"digits/{i}" for i in keep],
                        "sklearn digits")


def load_dataset(name: str, path=None, split=None, image_size: int = 32, **kw) -> ImageDataset:
    """Load a built-in dataset by name, or any folder/archive/CSV when ``name`` is 'folder'."""
    return DATASETS.get(name)(path=path, split=split, image_size=image_size, **kw)
