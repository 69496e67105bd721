"""Which photos to label first: TypiClust vs random picks on CIFAR-10 (BENCHMARKS.md section 11).

The pool is the 50,000 training images; a self-supervised encoder (``--encoder``: a selfsup
pretrain run, e.g. a ``fit`` folder's ``pretrain/``) embeds them. For each budget (10, 20, 40
labels in total) and seed, ``random`` draws that many images uniformly and ``typiclust`` runs
``selfsup.select.typiclust`` (the same function ``selfsup select`` uses); a logistic-regression
classifier on the frozen, L2-normalised embeddings of the picked images (with their true labels)
is scored on the 10,000 test images. This is TypiClust's "linear on a self-supervised
embedding" framework (Hacohen et al. 2022, section 4.2): it isolates what the picks are worth
from how long a network trains. Also logged: how many of the 10 classes the picks cover.

    python benchmarks/select_labels.py --data ../shared/datasets/cifar10-jpeg.tar.gz \
        --encoder RUN/pretrain --budgets 10 20 40 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 40])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(HERE / "results" / "select_labels.jsonl"))
    a = ap.parse_args()
    import torch
    from sklearn.linear_model import LogisticRegression

    from selfsup.data import load_dataset
    from selfsup.evaluate.features import extract_features
    from selfsup.pretrain import load_encoder
    from selfsup.select import typiclust

    torch.set_num_threads(2)
    enc, cfg = load_encoder(a.encoder)
    size = cfg.data.image_size
    train = load_dataset("cifar10", path=a.data, split="train", image_size=size, progress=False)
    test = load_dataset("cifar10", path=a.data, split="test", image_size=size, progress=False)
    t0 = time.time()
    fp, ft = extract_features(enc, train), extract_features(enc, test)

    def norm(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    fp, ft = norm(fp), norm(ft)
    print(f"embedded {len(fp)} + {len(ft)} images in {time.time() - t0:.0f} s", flush=True)
    for budget in a.budgets:
        for seed in a.seeds:
            for strategy in ("random", "typiclust"):
                t1 = time.time()
                if strategy == "random":
                    idx = np.random.default_rng(seed).choice(len(fp), budget, replace=False)
                else:
                    idx = np.array(typiclust(fp, np.zeros(len(fp), bool), budget, seed)[0])
                y = train.labels[idx]
                if len(np.unique(y)) < 2:
                    acc = float((test.labels == y[0]).mean())
                else:
                    clf = LogisticRegression(max_iter=2000, C=10.0).fit(fp[idx], y)
                    acc = float((clf.predict(ft) == test.labels).mean())
                row = {"date": time.strftime("%Y-%m-%d"), "encoder": a.encoder, "budget": budget,
                       "seed": seed, "strategy": strategy, "test_acc": acc,
                       "classes_covered": int(len(np.unique(y))),
                       "select_seconds": round(time.time() - t1, 2)}
                print(json.dumps(row), flush=True)
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
