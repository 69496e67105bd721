"""Write CIFAR-10 (the JPEG archive) as a user's folders, for the `fit`/`select`/open-set benchmarks.

    OUT/labeled/<class>/NNNN.jpg    the first ``--labels-per-class`` images of each known class
                                    (file names sorted), or none with --labels-per-class 0
    OUT/unlabeled/<class>_NNNN.jpg  every other training image (of every class, known or not,
                                    unless --unlabeled-known-only)
    OUT/test/<class>/NNNN.jpg       the test images of the known classes
    OUT/unknown/<class>/NNNN.jpg    the test images of the other classes (when --known is given)

    python benchmarks/cifar_folders.py --data ../shared/datasets/cifar10-jpeg.tar.gz --out /tmp/c8 \
        --labels-per-class 50 --known airplane automobile bird cat deer dog frog horse
"""

from __future__ import annotations

import argparse
import tarfile
from pathlib import Path


def write_folders(data: str, out: str | Path, labels_per_class: int, known=None,
                  unlabeled_known_only: bool = False) -> dict:
    out = Path(out)
    members: dict[tuple[str, str], list] = {}
    with tarfile.open(data) as tar:
        for m in tar.getmembers():
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3 and parts[0] in ("train", "test"):
                members.setdefault((parts[0], parts[1]), []).append(m)
        classes = sorted({c for _, c in members})
        known = list(known or classes)
        counts = {"labeled": 0, "unlabeled": 0, "test": 0, "unknown": 0}
        for (split, cls), ms in sorted(members.items()):
            ms.sort(key=lambda m: m.name)
            for i, m in enumerate(ms):
                name = m.name.split("/")[-1]
                if split == "train":
                    if cls in known and i < labels_per_class:
                        dest, kind = out / "labeled" / cls / name, "labeled"
                    elif unlabeled_known_only and cls not in known:
                        continue
                    else:
                        dest, kind = out / "unlabeled" / f"{cls}_{name}", "unlabeled"
                else:
                    kind = "test" if cls in known else "unknown"
                    dest = out / kind / cls / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(m).read())
                counts[kind] += 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--labels-per-class", type=int, default=50)
    ap.add_argument("--known", nargs="*", default=None, help="known classes (default: all)")
    ap.add_argument("--unlabeled-known-only", action="store_true")
    a = ap.parse_args()
    print(write_folders(a.data, a.out, a.labels_per_class, a.known, a.unlabeled_known_only))


if __name__ == "__main__":
    main()
