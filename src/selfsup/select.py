"""``selfsup select``: which photos the expert should label next.

Two regimes, as the active-learning literature separates them:

- **Cold start** (no labels yet, or a few per class): *TypiClust* (Hacohen, Dekel & Weinshall,
  ICML 2022). Embed the pool with the self-supervised encoder, cluster it into
  ``min(labeled + n, 500)`` k-means clusters, and repeatedly take the cluster with the fewest
  labeled/selected images (the largest among ties; clusters of fewer than 5 images skipped), and
  from it the most *typical* image: typicality(x) = 1 / mean distance to its 20 nearest
  neighbours inside the cluster. At low budgets typical images beat uncertain ones, because an
  uncertain image is usually an outlier that teaches little.
- **Later rounds** (a classifier that already works): *BADGE* (Ash et al., ICLR 2020). Each
  image's gradient embedding g = (p - onehot(argmax p)) (x) h (the last layer's gradient under
  its own pseudo-label: long when the classifier is unsure, pointing where it is unsure) and
  k-means++ seeding on these embeddings: uncertain *and* diverse. Distances between outer
  products are computed without forming them: ||a (x) b - c (x) d||^2 = |a|^2|b|^2 + |c|^2|d|^2
  - 2 (a.c)(b.d).

Output, all inside ``--out``: ``to_label.csv`` (path, label - empty for the expert to fill in -,
rank, suggested class, score, source), ``images/`` (copies of the selected photos, so the CSV
refers only to files in its own folder and ``selfsup fit --extra-labels to_label.csv`` reads it
back), ``contact_sheet.html`` (thumbnails in labeling order) and ``selection.json`` (strategy,
why, parameters).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import sys
from pathlib import Path

import numpy as np

from . import rundir
from .data.sources import DataError, open_source

MIN_CLUSTER_SIZE = 5      # TypiClust: smaller clusters are not sampled from
MAX_CLUSTERS = 500        # TypiClust: at most this many k-means clusters
K_NN = 20                 # TypiClust: neighbours for typicality
COLD_START_PER_CLASS = 10  # below this many labels per class: TypiClust, else BADGE
STRATEGIES = ("auto", "typiclust", "badge", "margin", "random")


# ----------------------------------------------------------------------------- pure functions

def typicality(x: np.ndarray, k: int = K_NN) -> np.ndarray:
    """1 / (mean Euclidean distance to the ``k`` nearest other points) for each row of ``x``
    (k is capped at len(x) - 1; a single point gets typicality 0)."""
    from sklearn.neighbors import NearestNeighbors

    n = len(x)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros(n)
    # brute force in chunks (memory stays bounded for a 50,000-image cluster); the first
    # neighbour of each point is itself
    dist, _ = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x).kneighbors(x)
    return 1.0 / (dist[:, 1:].mean(1) + 1e-12)


def typiclust(emb: np.ndarray, labeled: np.ndarray, n: int, seed: int = 0,
              max_clusters: int = MAX_CLUSTERS, min_size: int = MIN_CLUSTER_SIZE
              ) -> tuple[list[int], list[str]]:
    """TypiClust-DC: ``n`` indices of rows of ``emb`` (L2-normalised here) not marked in
    ``labeled``, with a reason each."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    labeled = np.asarray(labeled, bool)
    k = int(min(labeled.sum() + n, max_clusters, len(emb)))
    km = (KMeans(k, n_init=1, random_state=seed) if k <= 50 else
          MiniBatchKMeans(k, n_init=3, random_state=seed, batch_size=max(1024, 3 * k)))
    assign = km.fit_predict(emb)
    sizes = np.bincount(assign, minlength=k)
    covered = np.bincount(assign[labeled], minlength=k)
    taken = labeled.copy()
    free = np.bincount(assign[~taken], minlength=k)
    chosen, why = [], []
    for _ in range(n):
        ok = (sizes >= min(min_size, sizes.max())) & (free > 0)
        if not ok.any():
            ok = free > 0
        if not ok.any():
            break
        # the least covered cluster, the largest among equals
        order = np.lexsort((-sizes, covered))
        c = int(next(i for i in order if ok[i]))
        members = np.flatnonzero(assign == c)
        typ = typicality(emb[members])
        typ[taken[members]] = -np.inf
        i = int(members[int(np.argmax(typ))])
        chosen.append(i)
        why.append(f"most typical image of cluster {c} ({sizes[c]} images, "
                   f"{covered[c]} labeled or chosen before)")
        covered[c] += 1
        free[c] -= 1
        taken[i] = True
    return chosen, why


def margin(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability (small = uncertain)."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def badge(probs: np.ndarray, feats: np.ndarray, n: int, seed: int = 0) -> list[int]:
    """k-means++ seeding on the gradient embeddings (p - onehot(argmax p)) (x) h, computed through
    the factorised distance (no N x C x D array). The first pick is the longest embedding."""
    rng = np.random.default_rng(seed)
    u = probs.astype(np.float64).copy()
    u[np.arange(len(u)), u.argmax(1)] -= 1.0
    h = feats.astype(np.float64)
    norm2 = (u * u).sum(1) * (h * h).sum(1)

    def dist2(j):
        return np.maximum(norm2 + norm2[j] - 2.0 * (u @ u[j]) * (h @ h[j]), 0.0)

    first = int(np.argmax(norm2))
    chosen = [first]
    d = dist2(first)
    while len(chosen) < min(n, len(u)):
        d[chosen] = 0.0
        total = d.sum()
        j = int(rng.choice(len(u), p=d / total)) if total > 0 else int(
            rng.choice(np.setdiff1d(np.arange(len(u)), chosen)))
        chosen.append(j)
        d = np.minimum(d, dist2(j))
    return chosen


# ----------------------------------------------------------------------------- the command

def _pixel_keys(images: np.ndarray) -> list[str]:
    return [hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=12).hexdigest()
            for im in images]


def _model_parts(model: Path):
    """(encoder for typicality, classifier or None, image size, mean/std for the classifier)."""
    from .semisupervised import load_classifier

    if (model / "classifier" / "model.safetensors").exists():        # a fit folder
        clf_dir, enc_dir = model / "classifier", model / "pretrain"
    elif (model / "model.safetensors").exists():                     # a semisup run
        clf_dir, enc_dir = model, None
    else:                                                            # a pretraining run
        clf_dir, enc_dir = None, model
    clf = meta = None
    if clf_dir is not None:
        clf, meta = load_classifier(clf_dir)
        clf.eval()
    if enc_dir is not None and ((enc_dir / "encoder.safetensors").exists()
                                or (enc_dir / "checkpoints").exists()):
        from .pretrain import load_encoder

        enc, cfg = load_encoder(enc_dir)
        size = cfg.data.image_size
    elif clf is not None:
        enc, size = clf.backbone, int(meta["image_size"])
    else:
        raise DataError(f"{model}: not a selfsup fit, semisup or pretrain run (no "
                        f"classifier/model.safetensors, model.safetensors or encoder); give "
                        f"--model a folder that selfsup wrote")
    enc.eval()
    return enc, clf, meta, size


def select(model: str | Path, pool: str | Path, out: str | Path, n: int = 50,
           labeled: str | Path | None = None, strategy: str = "auto", seed: int = 0,
           device: str = "cpu", progress: bool = True) -> dict:
    """Choose ``n`` images of ``pool`` for the expert to label; see the module docstring."""
    import json

    import torch

    from .data import load_dataset
    from .evaluate.features import extract_features

    if strategy not in STRATEGIES:
        raise DataError(f"--strategy {strategy}: choose one of {', '.join(STRATEGIES)}")
    if n < 1:
        raise DataError(f"-n {n}: ask for at least one image")
    model, out = Path(model), Path(out)
    if not model.is_dir():
        raise DataError(f"{model}: no such run folder (--model)")
    if (out / "to_label.csv").exists():
        raise DataError(f"{out} already holds a selection (to_label.csv); label it and pass it to "
                        f"`selfsup fit --extra-labels`, or choose another --out")
    enc, clf, meta, size = _model_parts(model)
    ds = load_dataset("folder", path=str(pool), image_size=size, progress=progress)
    if len(ds) == 0:
        raise DataError(f"{pool}: no readable images to choose from")
    keys = _pixel_keys(ds.images)
    n_lab, n_classes = 0, None
    lab_ds, lab_keys = None, []
    if labeled:
        lab_ds = load_dataset("folder", path=str(labeled), image_size=size, progress=progress)
        lab_keys = _pixel_keys(lab_ds.images)
        n_lab = int((lab_ds.labels >= 0).sum())
        n_classes = len(lab_ds.classes)
    known = set(lab_keys)
    in_pool_labeled = np.array([k in known for k in keys])
    if clf is not None:
        n_classes = len(json.loads(meta["classes"]))
    free = int((~in_pool_labeled).sum())
    if free == 0:
        raise DataError(f"{pool}: every image is already labeled (same pixels as --labeled)")
    n = min(n, free)
    reasons = {}
    if strategy == "auto":
        per_class = n_lab / max(1, n_classes or 1)
        if clf is None or per_class < COLD_START_PER_CLASS:
            strategy = "typiclust"
            reasons["strategy"] = (
                "no classifier yet: typicality in the self-supervised embedding (TypiClust)"
                if clf is None else
                f"{n_lab} labels ({per_class:.1f} per class, fewer than {COLD_START_PER_CLASS}): "
                f"cold start, typical images teach more than uncertain ones (TypiClust)")
        else:
            strategy = "badge"
            reasons["strategy"] = (f"{n_lab} labels ({per_class:.1f} per class): the classifier's "
                                   f"uncertainty combined with diversity (BADGE)")
    else:
        reasons["strategy"] = "set with --strategy"
    if strategy in ("badge", "margin") and clf is None:
        raise DataError(f"--strategy {strategy} needs a classifier; give --model a fit or "
                        f"semisup run (this one has only an encoder)")
    suggested = [""] * len(ds)
    probs = None
    if clf is not None:
        mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
        feats_c = extract_features(clf.backbone, ds, device=device, mean=mean, std=std)
        with torch.no_grad():
            logits = clf.fc(torch.from_numpy(feats_c).to(clf.fc.weight.device))
        probs = logits.softmax(1).cpu().numpy()
        classes = json.loads(meta["classes"])
        suggested = [classes[i] for i in probs.argmax(1)]
    cand = np.flatnonzero(~in_pool_labeled)
    if strategy == "typiclust":
        emb = extract_features(enc, ds, device=device)
        marks = in_pool_labeled.copy()
        if lab_ds is not None:   # labeled images outside the pool cover their clusters too
            pool_keys = set(keys)
            outside = [i for i, k in enumerate(lab_keys) if k not in pool_keys]
            if outside:
                emb = np.concatenate([emb, extract_features(enc, lab_ds.subset(outside),
                                                            device=device)])
                marks = np.concatenate([marks, np.ones(len(outside), bool)])
        picked, why = typiclust(emb, marks, n, seed)
        score = {i: float(s) for i, s in zip(picked, range(len(picked), 0, -1))}
    elif strategy == "badge":
        sub = badge(probs[cand], feats_c[cand], n, seed)
        picked = [int(cand[j]) for j in sub]
        m = margin(probs)
        why = [f"margin {m[i]:.2f}; its last-layer gradient is far from those of the images "
               f"chosen before it" for i in picked]
        score = {i: float(m[i]) for i in picked}
    elif strategy == "margin":
        m = margin(probs)
        picked = [int(i) for i in cand[np.argsort(m[cand], kind="stable")[:n]]]
        why = [f"smallest margin between the top two classes ({m[i]:.2f})" for i in picked]
        score = {i: float(m[i]) for i in picked}
    else:
        picked = [int(i) for i in np.random.default_rng(seed).choice(cand, n, replace=False)]
        why = ["random (a control)"] * len(picked)
        score = {i: 0.0 for i in picked}
    return _write_selection(out, ds, pool, picked, why, score, suggested, strategy, reasons,
                            {"n": n, "seed": seed, "model": str(model), "pool": str(pool),
                             "labeled": str(labeled) if labeled else None, "labels_known": n_lab,
                             "pool_images": len(ds),
                             "pool_already_labeled": int(in_pool_labeled.sum())})


def _thumbnail_uri(data: bytes, side: int = 128) -> str:
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((side, side))
            if min(im.size) < 64:   # tiny photos are shown larger, pixel for pixel
                f = max(1, 64 // min(im.size))
                im = im.resize((im.width * f, im.height * f), Image.Resampling.NEAREST)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
    except Exception:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _safe_name(rank: int, name: str) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in Path(name).name)
    return f"{rank:04d}_{stem or 'image'}"


def _write_selection(out: Path, ds, pool, picked, why, score, suggested, strategy, reasons,
                     params) -> dict:
    wanted = {ds.names[i]: r for r, i in enumerate(picked, start=1)}
    data: dict[str, bytes] = {}
    for item, b in open_source(pool).iter_bytes():
        if item.name in wanted and not isinstance(b, Exception):
            data[item.name] = b
    rundir.create(out, "select")
    rundir.lock(out)
    try:
        img_dir = rundir.subdir(out, "images")
        rows, cards = [], []
        for r, i in enumerate(picked, start=1):
            name = ds.names[i]
            local = f"images/{_safe_name(r, name)}"
            rundir.write_bytes(out / local, data[name])
            rows.append([local, "", r, suggested[i], f"{score[i]:.4f}", name])
            uri = _thumbnail_uri(data[name])
            cards.append(
                f'<div class="c"><img src="{uri}" alt="{html.escape(local)}"><b>{r}</b> '
                f'{html.escape(Path(name).name)}' +
                (f"<br><i>guess: {html.escape(suggested[i])}</i>" if suggested[i] else "") +
                f"<br><small>{html.escape(why[r - 1])}</small></div>")
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "label", "rank", "suggested", "score", "source"])
        w.writerows(rows)
        rundir.write_text(out / "to_label.csv", buf.getvalue())
        page = (
            "<!doctype html><meta charset='utf-8'><title>selfsup: photos to label next</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
            ".g{display:flex;flex-wrap:wrap;gap:10px}.c{width:150px;font-size:12px}"
            ".c img{width:140px;height:140px;object-fit:contain;background:#eee;display:block}"
            "</style>"
            f"<h1>{len(picked)} photos to label next</h1>"
            f"<p>Strategy: <b>{html.escape(strategy)}</b> - {html.escape(reasons['strategy'])}. "
            f"Label them in this order: write each class in the <code>label</code> column of "
            f"<code>to_label.csv</code> (leave it empty to skip one), then run <code>selfsup fit "
            f"LABELED --extra-labels {html.escape(str(out / 'to_label.csv'))} ...</code></p>"
            f"<div class='g'>{''.join(cards)}</div>")
        rundir.write_text(out / "contact_sheet.html", page)
        summary = {"strategy": strategy, "reasons": reasons, **params, "selected": len(picked),
                   "csv": str(out / "to_label.csv"),
                   "contact_sheet": str(out / "contact_sheet.html"), "images": str(img_dir)}
        rundir.write_json(out / "selection.json", summary)
    finally:
        rundir.unlock(out)
    print(f"selfsup select: {len(picked)} photos ({strategy}) -> {out / 'to_label.csv'} and "
          f"{out / 'contact_sheet.html'}", file=sys.stderr)
    return summary
