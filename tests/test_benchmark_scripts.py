"""The performance scripts of issue 20 run end to end on a tiny CIFAR-shaped folder (CI has no GPU
and no CIFAR-10): the GPU suite's CPU smoke mode, the throughput script (with its plain
forward+backward floor), and the selfsup side of the peer time-to-accuracy race."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture
def tiny_cifar(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 4)):
        for c, name in enumerate(CLASSES):
            for i in range(n):
                color = rng.integers(0, 255, 3).tolist()
                make_image(tmp_path / "cifar" / split / name / f"{i:04d}.jpg", color, size=(32, 32))
    return tmp_path / "cifar"


def run(args, tmp_path, timeout=600, ok=True):
    env = {"SELFSUP_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, env=env)
    if ok:
        assert out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.mark.slow
def test_gpu_suite_smoke_mode_on_cpu(tiny_cifar, tmp_path):
    out = run(["benchmarks/gpu_suite.py", "--data", str(tiny_cifar), "--smoke"], tmp_path)
    res = json.loads(out.stdout[out.stdout.rindex("\n{\n") + 1:])
    assert res["smoke"] and res["device"] == "cpu"
    assert res["simclr_resnet18"]["steps"] == 4 and "knn200_acc" in str(res["simclr_resnet18"])
    assert res["fixmatch_wrn28_2_250"]["steps"] == 4
    rows = [json.loads(x) for x in out.stdout.splitlines() if x.startswith('{"method"')]
    assert len(rows) == 10 and all("images_per_s" in r for r in rows), rows


@pytest.mark.slow
def test_throughput_reports_step_overhead_against_plain_pass(tiny_cifar, tmp_path):
    res_path = tmp_path / "t.json"
    run(["benchmarks/throughput.py", "--data", str(tiny_cifar), "--steps", "4", "--warmup-steps",
         "1", "--batch-size", "16", "--backbone", "convnet", "--plain-steps", "2",
         "--precision", "bf16",
         "--out", str(res_path)], tmp_path)
    res = json.loads(res_path.read_text())
    assert res["precision"] == "bf16" and res["timed_steps"] == 3
    assert res["images_per_s"] > 0 and res["plain_fwd_bwd_s"] > 0
    assert res["step_overhead"] == pytest.approx(res["step_compute_s"] / res["plain_fwd_bwd_s"] - 1)


@pytest.mark.slow
def test_peer_race_selfsup_side_writes_scored_snapshots(tiny_cifar, tmp_path):
    """Snapshots of the bank and test features (in the evaluation list's order) every
    --snap-every steps, with growing training seconds; scored by selfsup's kNN."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import peer_compare

    bank = [f"train/{c}/{i:04d}.jpg" for c in CLASSES for i in (3, 1)]
    test = [f"test/{c}/{i:04d}.jpg" for c in CLASSES for i in range(4)]
    (tmp_path / "eval.json").write_text(json.dumps({"bank": bank, "test": test}))
    run(["benchmarks/peer_compare.py", "_selfsup_tta", "--data", str(tiny_cifar),
         "--eval-list", str(tmp_path / "eval.json"), "--out", str(tmp_path / "snaps"),
         "--epochs", "0.03", "--snap-every", "2", "--precision", "fp32"], tmp_path)
    snaps = sorted((tmp_path / "snaps").glob("snap_*.npz"))
    assert [int(np.load(f)["step"]) for f in snaps] == [2, 4, 6]
    z = [np.load(f) for f in snaps]
    assert z[0]["bank"].shape == (20, 128) and z[0]["test"].shape == (40, 128)
    assert 0 < z[0]["wall_s"] < z[1]["wall_s"] < z[2]["wall_s"]
    curve = peer_compare.score(tmp_path / "snaps", np.repeat(np.arange(10), 2),
                               np.repeat(np.arange(10), 4))
    assert [c["step"] for c in curve] == [2, 4, 6] and all(0 <= c["knn200"] <= 1 for c in curve)
    assert peer_compare.time_to(curve, -1.0) == curve[0]["wall_s"]
    assert peer_compare.time_to(curve, 2.0) is None


def test_photo_folders_split_each_class_without_overlap(tmp_path):
    """benchmarks/photo_folders.py (the real-photo folders of `fit`'s benchmark): per class the
    asked numbers of labeled, unlabeled and test images, no image in two places, labels kept."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import photo_folders

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 12)
    images = rng.integers(0, 255, (36, 8, 8), dtype=np.uint8)
    images[:, 0, 0] = np.arange(36)              # each image identifiable by its first pixel
    counts = photo_folders.write_folders(images, labels, ["a", "b", "c"], tmp_path, 2, 5, 4,
                                         seed=1)
    assert counts == {"labeled": 6, "unlabeled": 15, "test": 12}
    from PIL import Image

    seen = {}
    for p in tmp_path.rglob("*.png"):
        i = int(np.asarray(Image.open(p))[0, 0])
        assert i not in seen, (p, seen.get(i))
        seen[i] = p
        if p.parent.name in ("a", "b", "c"):
            assert ["a", "b", "c"].index(p.parent.name) == labels[i]
    assert len(seen) == 33
    with pytest.raises(SystemExit, match="class a: 12 images, 13 asked for"):
        photo_folders.write_folders(images, labels, ["a", "b", "c"], tmp_path / "x", 4, 5, 4)


@pytest.mark.slow
def test_semisup_benchmark_reuses_a_finished_run_only_with_the_same_settings(tiny_cifar, tmp_path):
    """A finished run folder stands for its row only when its settings are the ones asked for:
    a 4-step run must not be reported as the 6-step row (as happened with 2,000-step folders
    under an 8,000-step request)."""
    res = tmp_path / "r.jsonl"
    base = ["benchmarks/cifar10_semisup.py", "--data", str(tiny_cifar), "--labels", "2",
            "--seeds", "0", "--only", "supervised", "--out-dir", str(tmp_path / "runs"),
            "--results", str(res), "--set", "data.val_per_class=2", "train.batch_size=8",
            "train.eval_every=0"]
    run(base + ["--steps", "4"], tmp_path)
    run(base + ["--steps", "4"], tmp_path)          # reused: the same row again
    rows = [json.loads(x) for x in res.read_text().splitlines()]
    assert [r["steps"] for r in rows] == [4, 4] and rows[0]["test_acc_final"] == \
        rows[1]["test_acc_final"]
    out = run(base + ["--steps", "6"], tmp_path, ok=False)
    assert out.returncode != 0 and "train.steps" in out.stderr and "--out-dir" in out.stderr
    assert len(res.read_text().splitlines()) == 2


def test_fit_stage2_trains_fits_recipe_and_logs_pseudo_label_accuracy(tmp_path):
    """benchmarks/fit_stage2.py (section 6's stage-2 rows): fit's stage 2 at fixed steps on a
    folder written as cifar_folders.py writes it; the unlabeled files' class prefixes become
    hidden labels, so the pseudo-labels' accuracy is logged."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES[:3]):
        for i in range(10):
            make_image(tmp_path / "f" / "labeled" / name / f"{i:04d}.jpg",
                       rng.integers(0, 255, 3).tolist(), size=(32, 32))
            make_image(tmp_path / "f" / "unlabeled" / f"{name}_{i:04d}.jpg",
                       rng.integers(0, 255, 3).tolist(), size=(32, 32))
        for i in range(3):
            make_image(tmp_path / "f" / "test" / name / f"{i:04d}.jpg",
                       rng.integers(0, 255, 3).tolist(), size=(32, 32))
    results = tmp_path / "rows.jsonl"
    run(["benchmarks/fit_stage2.py", str(tmp_path / "f"), "--name", "t", "--steps", "2",
         "--precision", "fp32", "--out-dir", str(tmp_path / "runs"), "--results", str(results),
         "method.ema_teacher=true", "train.eval_every=2"], tmp_path)
    row = json.loads(results.read_text().splitlines()[-1])
    assert row["steps"] == 2 and row["init"] == "scratch" and 0.0 <= row["test_acc"] <= 1.0
    assert 0.0 <= row["test_acc_no_tta"] <= 1.0 and 0.0 <= row["test_acc_flip_tta"] <= 1.0
    logged = [json.loads(x) for x in (tmp_path / "runs" / "t" / "metrics.jsonl").read_text()
              .splitlines()]
    assert any("pl_acc" in r for r in logged if r.get("kind") == "train")
    # --method supervised: fit's labels-only candidate (its own recipe: no unlabeled stream,
    # so no pseudo-labels to score)
    run(["benchmarks/fit_stage2.py", str(tmp_path / "f"), "--name", "lo", "--steps", "2",
         "--method", "supervised", "--precision", "fp32", "--out-dir", str(tmp_path / "runs"),
         "--results", str(results), "train.eval_every=2"], tmp_path)
    row = json.loads(results.read_text().splitlines()[-1])
    assert row["method"] == "supervised" and row["steps"] == 2 and 0.0 <= row["test_acc"] <= 1.0
    cfg = (tmp_path / "runs" / "lo" / "config.yaml").read_text()
    assert "name: supervised" in cfg and "\n  uratio:" not in cfg   # (not "saturation")
    logged = [json.loads(x) for x in (tmp_path / "runs" / "lo" / "metrics.jsonl").read_text()
              .splitlines()]
    assert not any("pl_acc" in r for r in logged if r.get("kind") == "train")
