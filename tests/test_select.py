"""selfsup select: typicality and BADGE against naive references, TypiClust's cluster coverage on
separated blobs, and the loop on real images: pretrain -> select -> the expert fills in the CSV
-> fit --extra-labels reads it back."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from selfsup.cli import main
from selfsup.select import badge, margin, typicality, typiclust


def test_typicality_is_the_inverse_mean_distance_to_the_k_nearest():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    k = 5
    want = []
    for i in range(len(x)):      # naive loop
        d = sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)
        want.append(1.0 / np.mean(d[:k]))
    assert np.allclose(typicality(x, k), want, rtol=1e-6)
    assert typicality(x[:1]).tolist() == [0.0]


def test_typiclust_covers_every_blob_with_its_most_typical_image():
    rng = np.random.default_rng(0)
    centres = np.eye(6) * 10
    x = np.concatenate([c + rng.normal(size=(40, 6)) for c in centres])
    labeled = np.zeros(len(x), bool)
    labeled[45] = True               # blob 1 is already covered
    picked, why = typiclust(x, labeled, 5, seed=0)
    assert sorted(i // 40 for i in picked) == [0, 2, 3, 4, 5] and len(why) == 5
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)   # TypiClust works on normalised features
    for i in picked:                 # each pick is its blob's most typical image
        blob = np.arange(i // 40 * 40, i // 40 * 40 + 40)
        assert i == blob[np.argmax(typicality(xn[blob]))]


def test_badge_distance_and_first_pick_match_explicit_gradient_embeddings():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4), size=25)
    h = rng.normal(size=(25, 3))
    u = p.copy()
    u[np.arange(25), p.argmax(1)] -= 1
    g = np.einsum("nc,nd->ncd", u, h).reshape(25, -1)      # explicit outer products
    picked = badge(p, h, 6, seed=0)
    assert picked[0] == int(np.argmax((g * g).sum(1))) and len(set(picked)) == 6
    # the k-means++ choice is proportional to the squared distance to the nearest chosen one:
    # with an explicit-embedding re-implementation and the same random draws the picks agree
    rng2 = np.random.default_rng(0)
    want = [picked[0]]
    d = ((g - g[want[0]]) ** 2).sum(1)
    while len(want) < 6:
        d[want] = 0
        j = int(rng2.choice(25, p=d / d.sum()))
        want.append(j)
        d = np.minimum(d, ((g - g[j]) ** 2).sum(1))
    assert picked == want
    assert np.allclose(margin(np.array([[0.7, 0.2, 0.1]])), [0.5])


@pytest.mark.slow
def test_pretrain_select_label_fit_loop(tmp_path, capsys):
    from selfsup.data import load_dataset

    ds = load_dataset("digits", split="train", image_size=16)
    lab, pool = tmp_path / "lab", tmp_path / "pool"
    for c in range(3):
        for i in np.flatnonzero(ds.labels == c)[:6]:
            (lab / str(c)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(ds.images[i]).save(lab / str(c) / f"{i}.png")
    pool.mkdir()
    pool_idx = np.flatnonzero(ds.labels < 3)[:120]     # includes the labeled ones
    for i in pool_idx:
        Image.fromarray(ds.images[i]).save(pool / f"p{i}.png")
    run = tmp_path / "ssl"
    assert main(["pretrain", "-p", "simclr_digits", "-o", str(run), f"data.path={pool}",
                 "data.dataset=folder", "data.test_split=", "train.steps=5", "train.batch_size=64",
                 "train.progress=false",
                 "eval.monitor=false"]) == 0
    sel = tmp_path / "sel"
    assert main(["select", str(pool), "--model", str(run), "--labeled", str(lab), "-n", "8",
                 "-o", str(sel), "--device", "cpu"]) == 0
    rows = list(csv.DictReader((sel / "to_label.csv").open()))
    assert len(rows) == 8 and [int(r["rank"]) for r in rows] == list(range(1, 9))
    assert all((sel / r["path"]).is_file() for r in rows)
    chosen = {r["source"] for r in rows}
    labeled_names = {f"p{p.stem}.png" for p in lab.rglob("*.png")}
    assert not chosen & labeled_names            # already-labeled photos are never chosen
    s = json.loads((sel / "selection.json").read_text())
    assert s["strategy"] == "typiclust" and s["pool_already_labeled"] == 18
    page = (sel / "contact_sheet.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 8 and "<script" not in page
    # a second selection into the same folder is refused (nothing is overwritten)
    capsys.readouterr()
    assert main(["select", str(pool), "--model", str(run), "-n", "3", "-o", str(sel)]) == 2
    assert "to_label.csv" in capsys.readouterr().err
    # the expert fills in the labels (from the hidden truth) and leaves one row empty
    truth = {f"p{i}.png": str(ds.labels[i]) for i in pool_idx}
    for r in rows[:-1]:
        r["label"] = truth[r["source"]]
    with (sel / "to_label.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "fit"
    assert main(["fit", str(lab), "--extra-labels", str(sel / "to_label.csv"), "-o", str(out),
                 "--ssl-steps", "3", "--steps", "3", "train.progress=false"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labeled"] == 18 + 7
    assert json.loads((out / "fit.json").read_text())["extra_labels"].endswith("to_label.csv")
    # a label that is not a class is refused in one line, before anything is written
    rows[0]["label"] = "salmon"
    bad = tmp_path / "sel" / "bad.csv"
    with bad.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    capsys.readouterr()
    assert main(["fit", str(lab), "--extra-labels", str(bad), "-o", str(tmp_path / "f2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'salmon'" in err[0] and not (tmp_path / "f2").exists()
