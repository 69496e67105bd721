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
        all_members = tar.getmembers()
        for m in all_members:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3 and parts[0] in ("train", "test"):
                members.setdefault((parts[0], parts[1]), []).append(m)
        classes = sorted({c for _, c in members})
        known = list(known or classes)
        # where each member goes (by its rank among its class's sorted names) ...
        dest: dict[str, tuple[Path, str]] = {}
        for (split, cls), ms in members.items():
            for i, m in enumerate(sorted(ms, key=lambda m: m.name)):
                name = m.name.split("/")[-1]
                if split == "train":
                    if cls in known and i < labels_per_class:
                        dest[m.name] = (out / "labeled" / cls / name, "labeled")
                    elif not (unlabeled_known_only and cls not in known):
                        dest[m.name] = (out / "unlabeled" / f"{cls}_{name}", "unlabeled")
                else:
                    kind = "test" if cls in known else "unknown"
                    dest[m.name] = (out / kind / cls / name, kind)
        # ... then one pass in archive order (a .tar.gz cannot seek backwards cheaply)
        counts = {"labeled": 0, "unlabeled": 0, "test": 0, "unknown": 0}
        for m in all_members:
            if m.name in dest:
                path, kind = dest[m.name]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(tar.extractfile(m).read())
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
