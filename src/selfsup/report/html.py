"""``selfsup report RUN_DIR``: one self-contained HTML file (every figure embedded as a PNG data
URI, no scripts, no external links) that shows a person why they can trust the model:

training curves; the pretraining monitor (kNN accuracy, collapse metrics) over training; a
label-efficiency curve (linear-probe accuracy vs labels per class, pretrained vs random-init
encoder); the confusion matrix and per-class accuracy on the validation split; a 2-D t-SNE map of
the embeddings with thumbnails; nearest-neighbour retrievals; the most confident mistakes; the
data report (skipped files).

Works on a ``selfsup fit`` directory (pretrain/ + classifier/) and on a single pretrain or
semi-supervised run directory (the sections that need what is missing are left out, saying why).
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__, rundir

FIGSIZE = (6.4, 3.6)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _read_metrics(run: Path) -> list[dict]:
    p = run / "metrics.jsonl"
    if not p.exists():
        return []
    return rundir.read_jsonl(p)[0]


def _curves(run: Path, title: str) -> str | None:
    rows = _read_metrics(run)
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    if not train:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    axes[0].set(xlabel="step", ylabel="training loss", title=f"{title}: loss")
    ax = axes[1]
    plotted = False
    for key, label in (("knn_acc", "kNN accuracy (monitor)"), ("val_acc", "validation accuracy"),
                       ("test_acc", "test accuracy")):
        pts = [(r["step"], r[key]) for r in evals if key in r]
        if not pts:
            pts = [(r["step"], v) for r in evals for k, v in r.items()
                   if key == "knn_acc" and k.startswith("knn") and k.endswith("_acc")]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=label)
            plotted = True
    z = [(r["step"], r["embed_std"]) for r in evals if "embed_std" in r]
    if plotted:
        ax.set(xlabel="step", ylabel="accuracy", title=f"{title}: accuracy during training")
        ax.legend(fontsize=8)
    elif z:
        ax.plot(*zip(*z), marker="o", ms=3)
        ax.set(xlabel="step", ylabel="feature std", title="collapse monitor: feature std")
    else:
        ax.axis("off")
    return _png(fig)


def _features(encoder, ds, device="cpu") -> np.ndarray:
    from ..evaluate.features import extract_features

    return extract_features(encoder, ds, device=device)


def _label_efficiency(enc, random_enc, train_ds, val_ds, seed: int) -> tuple[str, list]:
    """Linear-probe accuracy on the validation split vs labels per class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ..data.splits import class_balanced_subset

    counts = np.bincount(train_ds.labels[train_ds.labels >= 0])
    top = int(counts[counts > 0].min())
    ks = sorted({k for k in (1, 2, 5, 10, 20, 50, 100, 200) if k <= top} | {top})
    rows = []
    feats = {"pretrained": (_features(enc, train_ds), _features(enc, val_ds))}
    if random_enc is not None:
        feats["random-init"] = (_features(random_enc, train_ds), _features(random_enc, val_ds))
    for name, (ftr, fva) in feats.items():
        for k in ks:
            idx = class_balanced_subset(train_ds.labels, per_class=k, seed=seed)
            sc = StandardScaler().fit(ftr[idx])
            clf = LogisticRegression(max_iter=2000, C=0.1)
            clf.fit(sc.transform(ftr[idx]), train_ds.labels[idx])
            acc = float((clf.predict(sc.transform(fva)) == val_ds.labels).mean())
            rows.append({"encoder": name, "labels_per_class": k, "val_acc": acc})
    plt = _plt()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for name in feats:
        pts = [(r["labels_per_class"], r["val_acc"]) for r in rows if r["encoder"] == name]
        ax.plot(*zip(*pts), marker="o", label=f"{name} encoder")
    ax.set(xscale="log", xlabel="labels per class (log)", ylabel="validation accuracy",
           title="Label efficiency: linear probe on frozen features")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig), rows


def _thumb(img: np.ndarray):
    return img if img.shape[0] >= 24 else np.kron(img, np.ones((2, 2, 1), dtype=img.dtype))


def _embedding_map(feats, images, labels, classes, seed: int, n: int = 300) -> str:
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(feats), min(n, len(feats)), replace=False))
    xy = TSNE(n_components=2, perplexity=min(30, max(2, len(idx) // 4)), init="pca",
              random_state=seed).fit_transform(feats[idx])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 8))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for c in range(len(classes)):
        m = labels[idx] == c
        ax.scatter(xy[m, 0], xy[m, 1], s=8, color=cmap(c % cmap.N), label=classes[c])
    for j in rng.choice(len(idx), min(60, len(idx)), replace=False):
        ab = AnnotationBbox(OffsetImage(_thumb(images[idx[j]]), zoom=0.8), xy[j], frameon=True,
                            pad=0.05, bboxprops={"edgecolor": cmap(labels[idx[j]] % cmap.N)})
        ax.add_artist(ab)
    ax.set(title="t-SNE map of the embeddings (thumbnails framed in their class colour)",
           xticks=[], yticks=[])
    if len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=2, loc="best")
    return _png(fig)


def _image_grid(rows: list[list[np.ndarray]], captions: list[list[str]], title: str) -> str:
    plt = _plt()
    nr, nc = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nr, nc, figsize=(1.5 * nc, 1.6 * nr), squeeze=False)
    for i in range(nr):
        for j in range(nc):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(rows[i]):
                ax.imshow(rows[i][j], interpolation="nearest")
                ax.set_title(captions[i][j], fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def _confusion(y_true, y_pred, classes, where: str = "validation split") -> tuple[str, list]:
    from sklearn.metrics import confusion_matrix

    k = len(classes)
    cm = confusion_matrix(y_true, y_pred, labels=list(range(k)))
    per_class = [{"class": classes[c], "n": int(cm[c].sum()),
                  "acc": float(cm[c, c] / cm[c].sum()) if cm[c].sum() else None} for c in range(k)]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(0.5 * k + 3, 0.5 * k + 2.5))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true",
           title=f"Confusion matrix ({where})")
    ax.set_xticklabels(classes, rotation=90, fontsize=7)
    ax.set_yticklabels(classes, fontsize=7)
    return _png(fig), per_class


def _section(title: str, body: str) -> str:
    anchor = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")
    return f"<section id='{anchor}'><h2>{html.escape(title)}</h2>{body}</section>"


def _img(uri: str, alt: str) -> str:
    return f'<figure><img src="{uri}" alt="{html.escape(alt)}"><figcaption>' \
           f"{html.escape(alt)}</figcaption></figure>"


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
    body = "".join("<tr>" + "".join(
        f"<td>{html.escape(f'{r[k]:.3f}' if isinstance(r[k], float) else str(r[k]))}</td>"
        for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em}
.note{color:#666;font-style:italic}"""


def _headline_section(summary: dict) -> str:
    """The answer first: test accuracy with its interval, balanced accuracy, the majority-class
    rate, and whether the unlabeled photos helped (``selfsup fit`` runs)."""
    h, comp = summary.get("headline"), summary.get("comparison")
    if not h and not comp:
        return ""
    parts = []
    if h:
        lo, hi = h["test_acc_95ci"]
        parts.append(f"<p class=headline>Test accuracy <b>{100 * h['test_acc']:.1f}%</b> "
                     f"(95% interval {100 * lo:.1f}-{100 * hi:.1f}%) on {h['test_images']} test "
                     f"images; balanced accuracy {100 * h['balanced_acc']:.1f}%. Always answering "
                     f"the most common class would score {100 * h['majority_rate']:.1f}%.</p>")
    if comp:
        parts.append(f"<p>Model kept: <b>{html.escape(comp['kept'])}</b>: "
                     f"{html.escape(comp['reason'])}.</p>")
    return _section("Headline", "".join(parts))


def build_report(run_dir: str | Path, out: str | Path | None = None, seed: int = 0,
                 summary: dict | None = None) -> Path:
    """Write ``run_dir/report.html`` (or ``out``) and return its path. ``summary``: the run's
    summary when it is not yet on disk (``selfsup fit`` writes the report before it)."""
    from ..pretrain import build_backbone, load_data, load_encoder

    run_dir = Path(run_dir)
    pre = run_dir / "pretrain" if (run_dir / "pretrain").exists() else None
    clf = run_dir / "classifier" if (run_dir / "classifier").exists() else None
    if pre is None and clf is None:  # a single run directory
        if (run_dir / "model.safetensors").exists():
            clf = run_dir
        elif (run_dir / "encoder.safetensors").exists():
            pre = run_dir
        else:
            raise FileNotFoundError(f"{run_dir}: not a finished selfsup run (no model or encoder)")
    sections, facts = [], {}
    if summary is None:
        summary = rundir.read_json(run_dir / "summary.json") \
            if (run_dir / "summary.json").exists() else {}
    # 1. training curves
    curves = [(_curves(d, name), name) for d, name in ((pre, "pretraining"), (clf, "classifier"))
              if d is not None]
    sections.append(_section("Training", "".join(_img(u, f"{n}: loss and accuracy over steps")
                                                  for u, n in curves if u)
                             or "<p class=note>no training metrics found</p>"))
    # the data the model is judged on: the validation split of a fit/semisup run
    enc_dir = pre or clf
    encoder, cfg = load_encoder(enc_dir)
    encoder.eval()
    from ..pretrain import load_run_config

    ccfg = load_run_config(clf) if clf else cfg
    val_ds = train_ds = None
    splits_path = (clf or pre) / "splits.json"
    if clf is not None and splits_path.exists():
        sp = rundir.read_json(splits_path)
        full = _load_full(run_dir, ccfg)
        if full is not None and sp.get("val_names"):
            pos = {n: i for i, n in enumerate(full.names)}
            v = [pos[n] for n in sp["val_names"] if n in pos]
            t = [pos[n] for n in sp.get("labeled_names", []) if n in pos]
            val_ds, train_ds = full.subset(np.array(v)), full.subset(np.array(t))
    if val_ds is None and cfg.data.test_split:
        try:
            train_ds = load_data(cfg, cfg.data.split, progress=False)
            val_ds = load_data(cfg, cfg.data.test_split, progress=False).aligned_to(
                train_ds.classes)
        except Exception:
            val_ds = None
    if val_ds is not None and train_ds is not None and train_ds.has_labels:
        classes = train_ds.classes
        torch.manual_seed(seed)
        random_enc = build_backbone(cfg) if getattr(encoder, "embed_dim", None) and \
            type(encoder).__name__ not in ("IGPTEncoder", "LightnessInput") else None
        uri, eff = _label_efficiency(encoder, random_enc, train_ds, val_ds, seed)
        facts["label_efficiency"] = eff
        sections.append(_section("Label efficiency", _img(uri, "validation accuracy of a linear "
                                 "probe vs the number of labels per class") + _table(eff)))
        fv = _features(encoder, val_ds)
        ftr = _features(encoder, train_ds)
        sections.append(_section("Embedding map", _img(_embedding_map(
            np.concatenate([ftr, fv]), np.concatenate([np.asarray(train_ds.images),
                                                       np.asarray(val_ds.images)]),
            np.concatenate([train_ds.labels, val_ds.labels]), classes, seed),
            "t-SNE of labeled training + validation embeddings")))
        # nearest neighbours of validation images among the labeled training images
        a = fv / np.linalg.norm(fv, axis=1, keepdims=True).clip(1e-12)
        b = ftr / np.linalg.norm(ftr, axis=1, keepdims=True).clip(1e-12)
        q = np.random.default_rng(seed).choice(len(val_ds), min(6, len(val_ds)), replace=False)
        nn_idx = np.argsort(-(a[q] @ b.T), axis=1)[:, :5]
        rows = [[_thumb(val_ds.images[i])] + [_thumb(train_ds.images[j]) for j in nn_idx[r]]
                for r, i in enumerate(q)]
        caps = [[f"query: {classes[val_ds.labels[i]]}"] + [classes[train_ds.labels[j]]
                                                          for j in nn_idx[r]]
                for r, i in enumerate(q)]
        sections.append(_section("Nearest neighbours", _img(_image_grid(
            rows, caps, "validation images (left) and their 5 nearest labeled training images"),
            "retrieval with cosine similarity of the embeddings")))
        if clf is not None:
            from ..semisupervised import load_classifier

            model, meta = load_classifier(clf)
            facts["val_acc"] = float((_features(model, val_ds).argmax(1) == val_ds.labels).mean())
            # judged on the test set when the fit had one (the validation split is small)
            judge, where = val_ds, "validation split"
            test_path = (rundir.read_json(run_dir / "fit.json").get("test")
                         if (run_dir / "fit.json").exists() else None)
            if test_path:
                try:
                    from ..data import load_dataset

                    judge = load_dataset("folder", path=test_path,
                                         image_size=ccfg.data.image_size,
                                         progress=False).aligned_to(classes)
                    where = "test set"
                except Exception:
                    judge, where = val_ds, "validation split"
            logits = _features(model, judge)
            probs = torch.from_numpy(logits).softmax(1).numpy()
            pred, conf = probs.argmax(1), probs.max(1)
            uri, per_class = _confusion(judge.labels, pred, classes, where)
            acc = float((pred == judge.labels).mean())
            n = len(judge)
            from ..evaluate.stats import wilson_interval

            lo, hi = wilson_interval(acc, n)
            if where == "test set":
                facts["test_acc"] = acc
            sections.append(_section(f"Classifier on the {where}",
                                     f"<p>accuracy <b>{acc:.3f}</b> (95% Wilson interval "
                                     f"{lo:.3f}-{hi:.3f}) "
                                     f"on {n} held-out labeled images"
                                     + (" (per-class rows below rest on fewer images each: read "
                                        "them with that in mind)" if n < 200 else "") + "</p>"
                                     + _img(uri, "confusion matrix") + _table(per_class)))
            wrong = np.flatnonzero(pred != judge.labels)
            worst = wrong[np.argsort(-conf[wrong])][:8]
            if len(worst):
                grid = _image_grid([[_thumb(judge.images[i]) for i in worst]],
                                   [[f"{classes[pred[i]]} {conf[i]:.2f}\n(true "
                                     f"{classes[judge.labels[i]]})" for i in worst]],
                                   "most confident mistakes")
                sections.append(_section("Most confident mistakes", _img(
                    grid, "predicted class and confidence, with the true class")))
            else:
                sections.append(_section("Most confident mistakes",
                                         f"<p>no mistakes on the {where}</p>"))
            from .unusual import unusual_section

            unusual = unusual_section(run_dir, clf, model, meta, judge, classes, where, seed)
            if unusual:
                sections.append(unusual)
    else:
        sections.append(_section("Evaluation", "<p class=note>no labeled validation or test "
                                 "images in this run: label efficiency, confusion matrix, maps "
                                 "and retrievals need them</p>"))
    # collapse metrics and data report
    pre_summary = rundir.read_json(pre / "summary.json") \
        if pre is not None and (pre / "summary.json").exists() else {}
    ev = pre_summary.get("eval", {})
    col = [{"metric": k, "value": ev[k]} for k in ("embed_std", "embed_std_healthy",
                                                   "effective_rank", "knn20_acc", "linear_acc")
           if k in ev]
    col.append({"metric": "collapsed during training", "value": pre_summary.get("collapsed")})
    sections.append(_section("Collapse check (pretrained features)", _table(col) + (
        "<p class=note>embed_std is the standard deviation of the L2-normalised embeddings per "
        "dimension; a healthy (uniformly spread) embedding has about 1/sqrt(d) "
        "(embed_std_healthy). effective_rank is exp(entropy) of the normalised singular values. "
        "The run counts as collapsed when the std falls below a tenth of the healthy value or "
        "the effective rank below 1.5 (or 1% of d): a lower std or rank with 'collapsed: False' "
        "means the features concentrate in few directions without collapsing to a point, "
        "common after short pretraining on few images.</p>")))
    rep_rows = []
    for d in (pre, clf):
        if d is not None and (d / "data_report.json").exists():
            rep = rundir.read_json(d / "data_report.json")
            rep_rows += [{"file": s["name"], "reason": s["reason"]} for s in rep.get("skipped", [])]
    sections.append(_section("Data report: skipped files", _table(
        list({r["file"]: r for r in rep_rows}.values()))))
    title = f"selfsup report: {run_dir.name}"
    overview = _table([{"item": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
                       for k, v in summary.items() if k in ("labeled", "validation", "unlabeled",
                                                            "test", "classes", "classifier",
                                                            "method", "steps")])
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>generated {time.strftime('%Y-%m-%d %H:%M')} by selfsup {__version__} from "
            f"<code>{html.escape(str(run_dir))}</code></p>{_headline_section(summary)}"
            f"{overview}{''.join(sections)}"
            f"</body></html>")
    out = Path(out) if out else run_dir / "report.html"
    rundir.write_text(out, page)
    rundir.write_json(out.with_suffix(".json"), facts)
    return out


def _load_full(run_dir: Path, cfg):
    """The labeled images of a fit/semisup run, decoded as the run did."""
    from ..data import load_dataset
    from ..pretrain import load_data

    choices = run_dir / "choices.json"
    fit_args = run_dir / "fit.json"
    try:
        if fit_args.exists():
            a = rundir.read_json(fit_args)
            return load_dataset("folder", path=a["labeled"], image_size=cfg.data.image_size,
                                progress=False)
        if choices.exists():
            return None
        return load_data(cfg, cfg.data.split, progress=False)
    except Exception:
        return None
