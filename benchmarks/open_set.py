"""Open-set benchmark: CIFAR-10 with 8 known classes and 2 unknown ones (BENCHMARKS.md section 11).

`selfsup fit` is trained on 50 labels per known class, with every other training image
unlabeled (the unknown classes' images among them, as a camera's photos would be), for a fixed
number of steps (deterministic, so it can be re-run on any machine); then each out-of-distribution
score of ``selfsup.ood`` is computed on the 8,000 known-class and 2,000 unknown-class test images:
AUROC, the share of unknowns that pass when 95% of the knowns do (FPR at TPR 95), and with
fit's calibrated threshold the share of knowns / unknowns flagged. Results are appended to
``benchmarks/results/open_set.jsonl``.

    python benchmarks/open_set.py --data ../shared/datasets/cifar10-jpeg.tar.gz --seeds 0 1 \
        --ssl-steps 300 --steps 600
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
# the unknowns: ship and truck
KNOWN = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse"]


def recalibrate(run: Path, d: Path) -> None:
    """ood.json of a finished fit written again by the current selfsup.ood, from the fit's own
    train/validation split of the labeled images."""
    import numpy as np

    from selfsup.data import load_dataset
    from selfsup.ood import calibrate_ood

    clf = run / "classifier"
    sp = json.loads((clf / "splits.json").read_text())
    lab = load_dataset("folder", path=str(d / "labeled"), image_size=32, progress=False)
    pos = {n: i for i, n in enumerate(lab.names)}
    tr = lab.subset(np.array([pos[n] for n in sp["labeled_names"]]))
    va = lab.subset(np.array([pos[n] for n in sp["val_names"]]))
    calibrate_ood(clf, tr, va, encoder_dir=run / "pretrain")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", default="/tmp/open_set")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--ssl-steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--reuse", action="store_true", help="keep a finished fit of the seed; only "
                    "re-calibrate its out-of-distribution scores (after a change to selfsup.ood)")
    ap.add_argument("--out", default=str(HERE / "results" / "open_set.jsonl"))
    a = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from cifar_folders import write_folders

    import torch

    from selfsup.data import load_dataset
    from selfsup.ood import auroc, dataset_scores, fpr_at_tpr, load_ood
    from selfsup.semisupervised import load_classifier

    work = Path(a.work)
    if not (work / "data" / "unknown").exists():
        print(write_folders(a.data, work / "data", 50, KNOWN), flush=True)
    d = work / "data"
    for seed in a.seeds:
        run = work / f"fit_s{seed}"
        t0 = time.time()
        if a.reuse and (run / "summary.json").exists():
            recalibrate(run, d)
        else:
            shutil.rmtree(run, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "selfsup", "fit", str(d / "labeled"),
                            "--unlabeled", str(d / "unlabeled"), "--test", str(d / "test"),
                            "-o", str(run), "--ssl-steps", str(a.ssl_steps), "--steps",
                            str(a.steps), "--seed", str(seed), "train.progress=false"],
                           check=True, stdout=subprocess.DEVNULL)
        fit_s = time.time() - t0
        summary = json.loads((run / "summary.json").read_text())
        clf = run / "classifier"
        model, meta = load_classifier(clf)
        rec, banks, encoder = load_ood(clf)
        mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
        known = load_dataset("folder", path=str(d / "test"), image_size=32, progress=False)
        unknown = load_dataset("folder", path=str(d / "unknown"), image_size=32, progress=False)
        torch.set_num_threads(2)
        sk = dataset_scores(model, known, banks, rec["k"], mean=mean, std=std, encoder=encoder)
        su = dataset_scores(model, unknown, banks, rec["k"], mean=mean, std=std, encoder=encoder)
        row = {"date": time.strftime("%Y-%m-%d"), "seed": seed, "known": KNOWN,
               "ssl_steps": a.ssl_steps, "steps": a.steps, "fit_seconds": round(fit_s, 1),
               "recalibrated_only": bool(a.reuse),
               "kept": summary["comparison"]["kept"],
               "known_test_acc": summary["headline"]["test_acc"], "k": rec["k"],
               "bank_images": rec["bank_images"], "scores": {}}
        for name in sk:
            thr = rec["thresholds"].get(name)
            row["scores"][name] = {
                "auroc": auroc(sk[name], su[name]), "fpr_at_tpr95": fpr_at_tpr(sk[name], su[name]),
                "threshold": thr,
                "known_flagged": float((sk[name] > thr).mean()) if thr is not None else None,
                "unknown_flagged": float((su[name] > thr).mean()) if thr is not None else None}
        print(json.dumps(row), flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
