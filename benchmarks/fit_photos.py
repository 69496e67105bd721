"""`selfsup fit` with and without the unlabeled photos, same folders, budget and seed, one run
after the other (BENCHMARKS.md section 6, issue 23). A folder holds ``labeled/<class>/``,
``unlabeled/`` and ``test/<class>/`` (benchmarks/photo_folders.py, benchmarks/cifar_folders.py).
One row per run in ``--results``: test accuracy of the kept model, which candidate was kept and
why, each candidate's own test accuracy, the stages' steps and the wall time.

    python benchmarks/fit_photos.py /tmp/fashion --budget 10m --seeds 0 1
    python benchmarks/fit_photos.py /tmp/lfw --budget 3m --seeds 0 1 --modes unlabeled
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_fit(folder: Path, out: Path, budget: str, seed: int, unlabeled: bool,
            extra: list[str], ssl_share: float | None = None) -> dict:
    # --ssl-share: an experiment on fitplan.SSL_SHARE (pretraining's share of the budget), set
    # in the fit process itself before it plans; the command line records it
    prog = (["selfsup"] if ssl_share is None else
            [sys.executable, "-c", f"import sys, selfsup.fitplan as p; p.SSL_SHARE = {ssl_share}; "
             f"from selfsup.cli import main; sys.argv[0] = 'selfsup'; sys.exit(main())"])
    cmd = [*prog, "fit", str(folder / "labeled"), "--test", str(folder / "test"),
           "--budget", budget, "--seed", str(seed), "-o", str(out), "--overwrite",
           *(["--unlabeled", str(folder / "unlabeled")] if unlabeled else []),
           "train.progress=false", *extra]
    load = os.getloadavg()[0]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - t0
    s = json.loads((out / "summary.json").read_text())
    cands = {}
    for d in sorted((out / "candidates").glob("*")):
        cs = json.loads((d / "summary.json").read_text())
        cands[d.name] = {"steps": cs.get("steps"), "test_acc_final": cs.get("test_acc_final"),
                         "train_seconds": cs.get("train_seconds"),
                         "stopped_by_time": cs.get("stopped_by_time"),
                         "replans": cs.get("replans")}
    comp = s["comparison"]
    tta = _without_flip_tta(out / "classifier", folder / "test")
    return {"folder": folder.name, "seed": seed, "unlabeled": unlabeled, "budget": budget,
            "test_acc": s["headline"]["test_acc"], "test_acc_95ci": s["headline"]["test_acc_95ci"],
            "test_images": s["headline"]["test_images"], "kept": comp["kept"],
            "comparison": {k: v for k, v in comp.items() if k != "reason"},
            "candidates": cands, "ssl_steps": s["pretrain"]["steps"],
            "ssl_stopped_by_time": s["pretrain"].get("stopped_by_time"),
            "ssl_linear_probe": (s.get("pretrain_eval") or {}).get("linear_acc"),
            "labeled": s["labeled"], "validation": s["validation"], "n_unlabeled": s["unlabeled"],
            "precision": s["choices"].get("precision"), "wall_s": round(wall, 1),
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
            "ssl_share": ssl_share,   # None: fitplan.SSL_SHARE as shipped
            "command": " ".join(cmd), "date": datetime.date.today().isoformat(), **tta}


def _without_flip_tta(clf_dir: Path, test: Path) -> dict:
    """The kept model's test accuracy with and without its flip test-time augmentation, on the
    same weights (a paired measurement of what the averaging buys); {} for a model without it."""
    from selfsup.data import load_dataset
    from selfsup.semisupervised import accuracy, load_classifier

    model, meta = load_classifier(clf_dir)
    if not model.flip_tta:
        return {}
    ds = load_dataset("folder", path=str(test), image_size=int(meta["image_size"]),
                      progress=False).aligned_to(json.loads(meta["classes"]))
    model.flip_tta = False
    return {"test_acc_flip_tta": accuracy(model, ds, "cpu", flip_tta=True),
            "test_acc_no_tta": accuracy(model, ds, "cpu")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--budget", default="10m")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--modes", nargs="+", choices=["unlabeled", "labels"],
                    default=["unlabeled", "labels"], help="with --unlabeled, without, or both")
    ap.add_argument("--out-dir", type=Path, default=Path("runs/fit_photos"))
    ap.add_argument("--results", type=Path,
                    default=Path(__file__).parent / "results" / "fit_photos.jsonl")
    ap.add_argument("--ssl-share", type=float, default=None,
                    help="experiment: pretraining's share of the budget (fitplan.SSL_SHARE)")
    ap.add_argument("--note", default=None, help="recorded in each row")
    ap.add_argument("extra", nargs="*", help="key=value overrides passed to fit")
    a = ap.parse_args()
    for folder in a.folders:
        for seed in a.seeds:
            for mode in a.modes:
                out = a.out_dir / f"{folder.name}-{mode}-s{seed}"
                row = run_fit(folder, out, a.budget, seed, mode == "unlabeled", a.extra,
                              a.ssl_share)
                if a.note:
                    row["note"] = a.note
                with a.results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps({k: row[k] for k in ("folder", "seed", "unlabeled", "test_acc",
                                                      "kept", "wall_s")}), file=sys.stderr)


if __name__ == "__main__":
    main()
