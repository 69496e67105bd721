"""Stage 2 of `selfsup fit` on its own, at a fixed step count: how to spend fit's minutes
(BENCHMARKS.md section 6, issue 23). Rebuilds the data exactly as `fit` does for a seed (the same
20% validation split of the labeled folder, the unlabeled folder behind the labeled images, the
test folder) and trains fit's semi-supervised recipe (`fitplan._stage_configs`) from the SimCLR
encoder of a finished `fit` run (``--init FIT_RUN/pretrain``) or from scratch (no ``--init``),
with ``key=value`` overrides for stage 2 only. Fixed steps instead of a time budget make runs
comparable; each row records the training seconds, so rows can be compared at equal time too.

When the unlabeled file names start with their class (``benchmarks/cifar_folders.py`` writes
``<class>_NNNN.jpg``) those classes are passed to the loop as hidden labels: diagnostics only
(the logged ``pl_acc``, the pseudo-labels' accuracy), never seen by training.

    python benchmarks/fit_stage2.py /tmp/cifar_fit --name ema1300 --steps 1300 --seed 1 \\
        --init runs/fit_photos/cifar_fit-unlabeled-s1/pretrain method.ema_teacher=true
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folder", type=Path, help="labeled/, unlabeled/ and test/ (as fit_photos.py)")
    ap.add_argument("--name", required=True, help="the row's name and run directory")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--init", type=Path, default=None,
                    help="a SimCLR run directory (a fit's pretrain/); omit to start from scratch")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--method", default="freematch",
                    help="stage 2's method; 'supervised' is fit's labels-only candidate (no EMA "
                         "teacher, no unlabeled stream)")
    ap.add_argument("--val-fraction", type=float, default=0.2,
                    help="of the labeled images held out for validation (fit: 0.2)")
    ap.add_argument("--out-dir", type=Path, default=Path("runs/fit_stage2"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/fit_stage2.jsonl"))
    ap.add_argument("overrides", nargs="*", help="key=value for stage 2 only")
    a = ap.parse_intermixed_args()

    from selfsup.config import apply_overrides
    from selfsup.data import load_dataset
    from selfsup.data.splits import stratified_split
    from selfsup.fit import concat_unlabeled
    from selfsup.fitplan import Choices, _stage_configs
    from selfsup.semisupervised import SemisupData, train_semisup

    def load(p: Path):
        return load_dataset("folder", path=str(p), image_size=32, progress=False)

    lab, unl = load(a.folder / "labeled"), load(a.folder / "unlabeled")
    test = load(a.folder / "test").aligned_to(lab.classes)
    tr, va = stratified_split(lab.labels, a.val_fraction, a.seed)
    train = concat_unlabeled(lab.subset(tr), unl)
    cls_of = {c: i for i, c in enumerate(lab.classes)}
    guess = [cls_of.get(Path(n).name.split("_")[0], -1) for n in unl.names]
    train.hidden_labels = np.concatenate([lab.labels[tr], guess]).astype(np.int64)
    data = SemisupData(full=lab, train=train, val=lab.subset(va), test=test,
                       record={"seed": a.seed, "unlabeled": len(unl)})
    c = Choices("cpu", 32, "convnet", 1.0, "simclr", 1, 256, a.method, a.steps, 64,
                0.0 if a.method == "supervised" else 4.0, 0.2, precision=a.precision)
    _, cfg = _stage_configs(c, ["train.progress=false"], a.seed)
    cfg = apply_overrides(cfg, list(a.overrides))
    t0 = time.time()
    run, s = train_semisup(cfg, a.out_dir / a.name, init=a.init, data=data)
    tta = flip_tta_pair(run, test)
    row = {"name": a.name, "method": a.method, "steps": a.steps, "seed": a.seed, "init": str(a.init or "scratch"),
           "labeled_train": len(tr), "val": len(va),
           "overrides": a.overrides, "test_acc": s.get("test_acc_final"),
           "val_acc": s.get("val_acc_final"), "train_seconds": round(s.get("train_seconds", 0), 1),
           "wall_s": round(time.time() - t0, 1),
           "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), **tta}
    print(json.dumps(row))
    a.results.parent.mkdir(parents=True, exist_ok=True)
    with open(a.results, "a") as f:
        f.write(json.dumps(row) + "\n")


def flip_tta_pair(run: Path, test) -> dict:
    """The final model's test accuracy without and with flip test-time augmentation (the same
    weights: a paired measurement of what `fit`'s averaging over mirror images buys)."""
    from selfsup.semisupervised import accuracy, load_classifier

    model, _ = load_classifier(run)
    model.flip_tta = False
    return {"test_acc_no_tta": accuracy(model, test, "cpu"),
            "test_acc_flip_tta": accuracy(model, test, "cpu", flip_tta=True)}


if __name__ == "__main__":
    main()
