"""The front door on small real folders: fit from 2 classes x 2 images upward, careless inputs
refused in one line before anything is written, fit -> export (no --check) -> predict, and the
exported preprocessing reproduced from preprocess.json alone agreeing with predict."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from selfsup.cli import main

FAST = ["--ssl-steps", "4", "--steps", "4", "train.progress=false", "augment.flip_p=0"]


def _digits():
    from selfsup.data import load_dataset

    return load_dataset("digits", split="train", image_size=16)


def _write(folder, ds, idx, size=None, fmt="png", classes=True):
    for i in idx:
        d = folder / str(ds.labels[i]) if classes else folder
        d.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(ds.images[i])
        if size:
            img = img.resize((size, int(size * 1.25)), Image.Resampling.BICUBIC)
        img.save(d / f"{i}.{fmt}", quality=90) if fmt == "jpg" else img.save(d / f"{i}.{fmt}")


def test_fit_on_two_classes_of_two_images(tmp_path, capsys):
    ds = _digits()
    idx = np.concatenate([np.flatnonzero(ds.labels == c)[:2] for c in (0, 1)])
    _write(tmp_path / "lab", ds, idx)
    out = tmp_path / "fit"
    assert main(["fit", str(tmp_path / "lab"), "-o", str(out), *FAST]) == 0
    ch = json.loads((out / "choices.json").read_text())
    assert ch["val_fraction"] == 0.0 and "no validation split" in ch["reasons"]["val_fraction"]
    s = json.loads((out / "summary.json").read_text())
    assert s["labeled"] == 4 and s["validation"] == 0 and (out / "classifier" /
                                                            "model.safetensors").exists()
    assert s["uncertainty"]["kind"] == "relative" and s["uncertainty"]["threshold"] == 0.75
    # the same command again is refused (finished), and changes nothing
    before = (out / "choices.json").read_text()
    capsys.readouterr()
    assert main(["fit", str(tmp_path / "lab"), "-o", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and "finished" in err[0]
    assert (out / "choices.json").read_text() == before
    # --overwrite replaces a fit folder, but never one holding files fit did not write
    (out / "notes.txt").write_text("mine")
    assert main(["fit", str(tmp_path / "lab"), "-o", str(out), "--overwrite", *FAST]) == 2
    assert (out / "notes.txt").read_text() == "mine" and "notes.txt" in capsys.readouterr().err
    (out / "notes.txt").unlink()
    assert main(["fit", str(tmp_path / "lab"), "-o", str(out), "--overwrite", *FAST]) == 0


@pytest.mark.parametrize("case", ["one_class", "empty", "no_such_unlabeled"])
def test_careless_inputs_end_in_one_line_and_leave_no_folder(case, tmp_path, capsys):
    ds = _digits()
    lab = tmp_path / "lab"
    lab.mkdir()
    if case != "empty":
        _write(lab, ds, np.flatnonzero(ds.labels == 3)[:6] if case == "one_class" else
               np.concatenate([np.flatnonzero(ds.labels == c)[:3] for c in (0, 1)]))
    extra = ["--unlabeled", str(tmp_path / "missing")] if case == "no_such_unlabeled" else []
    out = tmp_path / "fit"
    assert main(["fit", str(lab), "-o", str(out), *extra, *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("selfsup: error:"), err
    want = {"one_class": "only one class", "empty": "no image files found",
            "no_such_unlabeled": "no such file"}[case]
    assert want in err[0]
    assert not out.exists()


def test_fit_export_predict_agree_with_an_independent_preprocessing(tmp_path):
    """JPEG photos larger than the training size (so Pillow's draft mode matters): fit, export
    without --check, then preprocess every image following preprocess.json with Pillow and numpy
    alone and run the ONNX graph: the same probabilities as `selfsup predict` on every image."""
    import onnxruntime as ort
    from PIL import ImageOps

    ds = _digits()
    rng = np.random.default_rng(0)
    lab_idx = np.concatenate([np.flatnonzero(ds.labels == c)[:6] for c in (0, 1, 2)])
    _write(tmp_path / "lab", ds, lab_idx, size=150, fmt="jpg")
    rest = np.flatnonzero(np.isin(ds.labels, (0, 1, 2)))[20:]
    _write(tmp_path / "unl", ds, rng.choice(rest, 24, replace=False), size=150, fmt="jpg",
           classes=False)
    _write(tmp_path / "new", ds, rest[-12:], size=170, fmt="jpg", classes=False)
    out = tmp_path / "fit"
    assert main(["fit", str(tmp_path / "lab"), "--unlabeled", str(tmp_path / "unl"),
                 "-o", str(out), *FAST]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["comparison"]["kept"] in ("freematch", "labels_only")
    assert set(s["comparison"]["val_acc"]) == {"freematch", "labels_only"}
    exp = out / "export"
    assert main(["export", str(out / "classifier"), "-o", str(exp)]) == 0     # no --check
    assert json.loads((exp / "export.json").read_text())["ok"]
    pred = tmp_path / "p.csv"
    assert main(["predict", str(exp), str(tmp_path / "new"), "-o", str(pred), "--top-k",
                 "3"]) == 0
    rows = {r["path"]: r for r in csv.DictReader(pred.open())}
    pre = json.loads((exp / "preprocess.json").read_text())
    p = pre["preprocessing"]
    size = p["decode_size"]
    sess = ort.InferenceSession(str(exp / "model.onnx"), providers=["CPUExecutionProvider"])
    assert len(rows) == 12
    for path, r in rows.items():
        img = Image.open(path)
        if p["jpeg_draft"]:
            img.draft("RGB", (size, size))
        if p["exif_transpose"]:
            img = ImageOps.exif_transpose(img)
        img = img.convert("RGB")
        if img.size != (size, size):
            img = ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC,
                               centering=tuple(p["fit"]["centering"]))
        x = (np.asarray(img, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]
        assert pre["image_size"] == size          # no extra resize step for this model
        _, probs = sess.run(None, {"image": x})
        k = int(probs[0].argmax())
        assert pre["classes"][k] == r["class"], path
        assert abs(float(probs[0, k]) - float(r["confidence"])) < 1e-4, path


def test_fit_killed_in_stage_two_resumes_with_the_same_command(tmp_path, monkeypatch, capsys):
    import selfsup.fit as fit_mod

    ds = _digits()
    idx = np.concatenate([np.flatnonzero(ds.labels == c)[:6] for c in (0, 1)])
    _write(tmp_path / "lab", ds, idx)
    _write(tmp_path / "unl", ds, np.flatnonzero(ds.labels <= 1)[10:40], classes=False)
    args = ["fit", str(tmp_path / "lab"), "--unlabeled", str(tmp_path / "unl"), "-o",
            str(tmp_path / "fit"), *FAST]
    real = fit_mod.train_semisup

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_mod, "train_semisup", killed)
    assert main(args) == 130
    assert "resume" in capsys.readouterr().err
    pre = tmp_path / "fit" / "pretrain" / "encoder.safetensors"
    assert pre.exists()        # stage 1 finished and is kept
    mtime = pre.stat().st_mtime_ns
    monkeypatch.setattr(fit_mod, "train_semisup", real)
    assert main(args) == 0     # the same command finishes the fit without redoing stage 1
    assert pre.stat().st_mtime_ns == mtime
    assert (tmp_path / "fit" / "classifier" / "model.safetensors").exists()


def test_careless_inputs_are_answered_before_torch_is_imported(tmp_path):
    """One class, a missing folder, an unreadable budget: refused without importing torch (which
    takes seconds, a minute on a loaded machine)."""
    import subprocess
    import sys

    one = tmp_path / "one" / "cat"
    one.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(one / "a.png")
    for args in ([str(tmp_path / "one")], [str(tmp_path / "nope")],
                 [str(tmp_path / "one"), "--budget", "soon"]):
        code = ("import sys; from selfsup.cli import main; rc = main(['fit', *sys.argv[1:], '-o', "
                f"{str(tmp_path / 'out')!r}]); assert rc == 2, rc; "
                "assert 'torch' not in sys.modules, 'torch imported'")
        res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_fit_with_a_budget_measures_plans_and_keeps_to_it(tmp_path):
    """--budget: each stage's step is measured on this machine, the steps are planned from the
    time left, and the whole fit ends near the budget (a regression: the measurement once built
    its configs with 0 steps, which the config checks refuse, so every --budget fit failed)."""
    import time

    ds = _digits()
    idx = np.concatenate([np.flatnonzero(ds.labels == c)[:10] for c in range(3)])
    _write(tmp_path / "lab", ds, idx)
    _write(tmp_path / "unl", ds, np.flatnonzero(ds.labels < 3)[10:70], classes=False)
    out = tmp_path / "fit"
    t0 = time.time()
    assert main(["fit", str(tmp_path / "lab"), "--unlabeled", str(tmp_path / "unl"), "-o",
                 str(out), "--budget", "40s", "train.progress=false"]) == 0
    wall = time.time() - t0
    ch = json.loads((out / "choices.json").read_text())
    measured = ch["reasons"]["measured_s_per_step"]
    assert measured["ssl"] > 0 and measured["semi"] > 0
    assert ch["ssl_steps"] >= 10 and ch["steps"] >= 10 and "budget" in ch["reasons"]["steps"]
    assert wall < 40 * 1.6, wall      # generous: a loaded CI machine; the planner aims at 95%
    assert (out / "classifier" / "model.safetensors").exists()
    # the labels-only candidate ran first and whole (once it got the leftovers and was cut by
    # the clock); the semi-supervised one was then planned for the time really left
    lo = json.loads((out / "candidates" / "labels_only" / "summary.json").read_text())
    assert lo["steps"] == ch["labels_only_steps"] and not lo["stopped_by_time"]
    assert "after the labels-only candidate" in ch["reasons"]["steps"]
    fm = json.loads((out / "candidates" / "freematch" / "summary.json").read_text())
    # it re-plans its steps from its own speed (train.fit_to_time): its schedule ends where the
    # last re-plan put it, unless the clock ended it first
    rows = [json.loads(x) for x in open(out / "candidates" / "freematch" / "metrics.jsonl")]
    planned = [r["total"] for r in rows if r["kind"] == "replan"] or [ch["steps"]]
    assert fm["steps"] > 0 and (fm["steps"] == planned[-1] or fm["stopped_by_time"])
