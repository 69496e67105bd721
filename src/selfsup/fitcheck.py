"""What ``selfsup fit`` checks before anything is written or torch is imported: the budget's
syntax, the labeled classes (read from the file listing, nothing decoded), the other folders and
the output folder. Kept free of torch so that a careless input is answered in a fraction of a
second."""

from __future__ import annotations

import re
from pathlib import Path

from .data.sources import DataError, open_source
from .rundir import read_json


class FitDirError(DataError):
    """The output folder cannot be used (printed as one line by the CLI)."""


def parse_budget(text: str | None) -> float | None:
    """'90s', '30m', '2h', '1h30m' or a number of minutes -> seconds."""
    if text is None:
        return None
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t) * 60
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", t)
    if not parts or "".join(a + b for a, b in parts) != t.replace(" ", ""):
        raise ValueError(f"--budget: cannot read '{text}'; write e.g. 90s, 30m, 2h or 1h30m")
    return sum(float(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in parts)


def fit_record(labeled, unlabeled, test, budget, seed, overrides, forced,
               extra_labels=None) -> dict:
    """What ``fit.json`` holds: the arguments that make a fit this fit (resume needs them equal)."""
    return {"labeled": str(labeled), "unlabeled": str(unlabeled) if unlabeled else None,
            **({"extra_labels": str(extra_labels)} if extra_labels else {}),
            "test": str(test) if test else None, "budget": budget, "seed": seed,
            "overrides": list(overrides),
            "forced": {k: v for k, v in (forced or {}).items() if v is not None}}


FIT_ENTRIES = {"choices.json", "fit.json", "summary.json", "report.html", "report.json",
               "pretrain", "candidates", "classifier", ".selfsup-run", ".selfsup-lock"}
MIN_PER_CLASS_FOR_VALIDATION = 5


def _label_counts(labeled: str | Path) -> dict[str, int]:
    """Images per class of the labeled source, from the file listing (nothing decoded)."""
    src = open_source(labeled)
    items = getattr(src, "items", None)
    if items is None:          # archives list their members while they are read
        for _ in src.iter_bytes():
            pass
        items = getattr(src, "items", [])
    counts: dict[str, int] = {}
    for it in items:
        if it.label is not None:
            counts[it.label] = counts.get(it.label, 0) + 1
    return counts


def extra_label_counts(extra: str | Path, classes) -> dict[str, int]:
    """Labeled rows per class of a filled-in ``selfsup select`` CSV (rows left empty are
    skipped); a class that is not one of ``classes`` is refused, naming it."""
    if not str(extra).lower().endswith(".csv"):
        raise DataError(f"--extra-labels {extra}: expected the CSV that `selfsup select` wrote "
                        f"(to_label.csv) with its label column filled in")
    counts = _label_counts(extra)
    unknown = sorted(set(counts) - set(classes))
    if unknown:
        raise DataError(f"--extra-labels {extra}: label(s) {', '.join(map(repr, unknown))} are "
                        f"not classes of the labeled folder ({', '.join(sorted(classes))}); fix "
                        f"the spelling or add a sub-folder for the new class")
    return counts


def preflight(labeled, out: Path, unlabeled=None, test=None, overwrite: bool = False,
              record: dict | None = None, extra_labels=None) -> tuple[dict[str, int], bool]:
    """Every check that can refuse a fit, before anything is written: the labels (at least two
    classes, each with an image), the other folders, and the output folder (a new or empty
    folder, an unfinished fit of the same data to resume, or with ``overwrite`` an earlier fit
    folder holding nothing else). Returns (images per class, resume?)."""
    counts = _label_counts(labeled)
    if extra_labels is not None:
        for c, k in extra_label_counts(extra_labels, counts).items():
            counts[c] += k
    if not counts:
        raise DataError(f"{labeled}: no labeled images found: put the labeled images in one "
                        f"sub-folder per class, or give a CSV of path,label")
    if len(counts) < 2:
        raise DataError(f"{labeled}: only one class ({next(iter(counts))!r}); a classifier needs "
                        f"labeled images of at least two classes (one sub-folder per class)")
    for path, what in ((unlabeled, "--unlabeled"), (test, "--test"),
                       (extra_labels, "--extra-labels")):
        if path is not None and not Path(path).expanduser().exists():
            raise DataError(f"{what} {path}: no such file or folder")
    if out.exists() and not out.is_dir():
        raise FitDirError(f"{out} is a file; choose another --out")
    if not out.exists() or not any(out.iterdir()):
        return counts, False
    if not (out / "fit.json").exists():
        raise FitDirError(f"{out} is not empty and is not a selfsup fit folder; choose another "
                          f"--out (nothing in it was changed)")
    stray = sorted(p.name for p in out.iterdir() if p.name not in FIT_ENTRIES
                   and not re.fullmatch(r"\..+\.tmp-\d+", p.name))   # a killed write's temp file
    same = record is not None and read_json(out / "fit.json", fix="re-run with --overwrite") == record
    finished = (out / "summary.json").exists()
    if overwrite:
        if stray:
            raise FitDirError(f"{out} also holds {', '.join(stray[:5])}, which fit did not write; "
                              f"--overwrite only replaces an earlier fit: choose another --out")
        return counts, False
    if finished:
        raise FitDirError(f"{out} already holds a finished fit; choose another --out, or pass "
                          f"--overwrite to replace it")
    if not same:
        raise FitDirError(f"{out} holds an unfinished fit of other data or settings; re-run "
                          f"that command to resume it, choose another --out, or pass "
                          f"--overwrite to replace it")
    return counts, True


def _clear_fit(out: Path) -> None:
    import shutil

    for name in FIT_ENTRIES - {".selfsup-lock", ".selfsup-run"}:   # the lock is held by us
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


