"""predict / embed / export on a model trained on real images (digits)."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from selfsup.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from selfsup.config import load_config
    from selfsup.semisupervised import train_semisup

    root = tmp_path_factory.mktemp("deploy")
    cfg = load_config("fixmatch_digits", ["method.name=supervised", "train.steps=60",
                                          "train.eval_every=60", "train.progress=false",
                                          "data.labels_per_class=20"])
    run, summary = train_semisup(cfg, root / "run")
    # a folder of real test images as PNG files in class sub-folders, plus a broken file
    from selfsup.data import load_dataset

    test = load_dataset("digits", split="test", image_size=16)
    photos = root / "photos"
    for i in range(40):
        d = photos / str(test.labels[i])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i]).save(d / f"{i:03d}.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    return run, summary, photos, test


def test_predict_csv_contents(trained, tmp_path, capsys):
    run, summary, photos, test = trained
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(photos), "-o", str(out), "--top-k", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["images"] == 40 and res["unreadable"] == 1 and res["images_per_s"] > 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 41
    broken = [r for r in rows if r["error"]]
    assert len(broken) == 1 and broken[0]["path"].endswith("broken.jpg")
    good = [r for r in rows if not r["error"]]
    for r in good:
        conf = float(r["confidence"])
        assert 0 <= conf <= 1 and r["class"] in [str(i) for i in range(10)]
        top = r["top2"].split(";")
        assert top[0].split(":")[0] == r["class"] and float(top[0].split(":")[1]) == conf
        assert r["low_confidence"] == str(int(conf < 0.5))
    # the predictions are the model's: accuracy on these real digits is far above chance
    acc = np.mean([r["class"] == r["path"].split("/")[-2] for r in good])
    assert acc > 0.5, acc
    # the output is not overwritten by accident
    assert main(["predict", str(run), str(photos), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_predict_single_files_and_archives(trained, tmp_path, capsys):
    import tarfile

    run, _, photos, _ = trained
    tar = tmp_path / "batch.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(photos / "3", arcname="3")
    one = next((photos / "7").glob("*.png"))
    out = tmp_path / "p.csv"
    assert main(["predict", str(run / "model.safetensors"), str(one), str(tar), "-o",
                 str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["path"] == str(one) and any(":3/" in r["path"] for r in rows[1:])
    assert len(rows) == 1 + len(list((photos / "3").glob("*.png")))


def test_export_onnx_parity_on_real_images(trained, tmp_path, capsys):
    import onnx

    run, _, photos, _ = trained
    out = tmp_path / "export"
    assert main(["export", str(run), "-o", str(out), "--check", str(photos)]) == 0
    rep = json.loads((out / "export.json").read_text())
    assert rep["ok"] and rep["max_abs_diff"] <= 1e-4 and rep["parity_images"] == 40
    assert rep["same_predictions"]
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(meta["classes"]) == [str(i) for i in range(10)]
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406] and meta["image_size"] == "16"
    pre = json.loads((out / "preprocess.json").read_text())
    assert pre["image_size"] == 16 and "RGB in [0, 1]" in pre["input"]
    # the exported folder is itself a model predict can use
    capsys.readouterr()
    assert main(["predict", str(out), str(photos / "1"), "-o", str(tmp_path / "e.csv")]) == 0
    # default parity images: the run's own training data
    assert main(["export", str(run), "-o", str(tmp_path / "e2")]) == 0
    assert json.loads((tmp_path / "e2" / "export.json").read_text())["parity_images"] == 64
    # an existing, non-empty output folder is refused
    assert main(["export", str(run), "-o", str(out)]) == 2


def test_embed_writes_features(trained, tmp_path, capsys):
    run, _, photos, _ = trained
    out = tmp_path / "emb.npz"
    assert main(["embed", str(run), str(photos), "-o", str(out)]) == 0
    z = np.load(out)
    assert z["embeddings"].shape[0] == 40 == len(z["paths"]) and len(z["unreadable"]) == 1
    assert np.isfinite(z["embeddings"]).all() and z["embeddings"].std() > 0
    assert main(["embed", str(run), str(photos), "-o", str(tmp_path / "x.csv")]) == 2


@pytest.mark.skipif(__import__("shutil").which("chromium") is None,
                    reason="headless Chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(trained, tmp_path):
    """The report of a classifier run, opened in Chromium with the network refused: every figure
    is in the rendered page as an embedded image."""
    import subprocess

    from selfsup.report.html import build_report

    run, _, _, _ = trained
    page = build_report(run, tmp_path / "report.html")
    r = subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--host-resolver-rules=MAP * ~NOTFOUND", "--dump-dom",
                        f"file://{page}"], capture_output=True, text=True, timeout=120)
    dom = r.stdout
    assert "<h2>Classifier on the validation split</h2>" in dom
    imgs = dom.count("<img ")
    assert imgs >= 5 and imgs == dom.count('src="data:image/png;base64,')
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1200,2000",
                    f"--screenshot={shot}", f"file://{page}"], capture_output=True, timeout=120)
    from PIL import Image

    im = Image.open(shot)
    import numpy as np

    assert im.size == (1200, 2000) and len(np.unique(np.asarray(im.convert("L")))) > 50  # not blank
