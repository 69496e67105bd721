"""The report's "Most unusual images" section: the photos least like the known classes, by the
out-of-distribution score ``fit`` calibrated (``selfsup.ood``)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import torch

from .. import rundir


def unusual_section(run_dir: Path, clf: Path, model, meta, ds, classes, where: str,
                     seed: int = 0, max_unlabeled: int = 5000) -> str | None:
    """The photos least like the known classes (ood.json's score): among the fit's unlabeled
    photos when it had some (where unknown things live; up to ``max_unlabeled`` of them, drawn
    by seed), else among ``ds``; with the share of ``ds`` (known classes) flagged as unknown."""
    from ..ood import dataset_scores, load_ood
    from .html import _features, _image_grid, _img, _section, _thumb

    ood, banks, encoder = load_ood(clf)
    name = (ood or {}).get("score")
    thr = (ood or {}).get("thresholds", {}).get(name)
    if thr is None:
        return None
    norm = {"mean": json.loads(meta["mean"]), "std": json.loads(meta["std"])}

    def scores(d):
        return dataset_scores(model, d, banks, int(ood["k"]), encoder=encoder, **norm).get(name)

    sc = scores(ds)
    if sc is None:
        return None
    pool, pool_where = ds, where
    unl = (rundir.read_json(run_dir / "fit.json").get("unlabeled")
           if (run_dir / "fit.json").exists() else None)
    if unl:
        try:
            from ..data import load_dataset

            pool = load_dataset("folder", path=unl, image_size=ds.image_size, progress=False)
            if len(pool) > max_unlabeled:
                pool = pool.subset(np.sort(np.random.default_rng(seed).choice(
                    len(pool), max_unlabeled, replace=False)))
            pool_where = f"unlabeled photos ({len(pool)} scored)"
        except Exception:
            pool, pool_where = ds, where
    psc = sc if pool is ds else scores(pool)
    with torch.no_grad():
        pred = _features(model, pool).argmax(1)
    top = np.argsort(-psc)[:8]
    grid = _image_grid([[_thumb(pool.images[i]) for i in top]],
                       [[f"{psc[i]:.2f}{' unknown' if psc[i] > thr else ''}\n"
                         f"guess: {classes[pred[i]]}" for i in top]], "")
    flagged = float((psc > thr).mean())
    return _section("Most unusual images", _img(grid, f"the {len(top)} {pool_where} least like "
                                                      f"the known classes ({name} score)") +
                    (f"<p>{100 * flagged:.1f}% of the {pool_where} are flagged as unknown.</p>"
                     if pool is not ds else "") +
                    f"<p>{100 * float((sc > thr).mean()):.1f}% of the {len(sc)} images of the "
                    f"{where} (known classes) are flagged as unknown by <code>predict</code> "
                    f"({html.escape(ood.get('rule', ''))}; threshold {thr:.3f}): about "
                    f"{100 * (1 - ood['known_pass_rate']):.0f}% by design.</p>")
