"""Crash safety, hostile inputs and safe model files (issue 9)."""

import io
import json
import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from selfsup.cli import main
from selfsup.data.decode import UnreadableImage, decode_image
from selfsup.data.sources import DataError

DIGITS = ["-p", "simclr_digits", "train.steps=4", "train.batch_size=32", "train.progress=false",
          "eval.monitor=false", "train.checkpoint_every=2",
          "eval.labels_per_class=5"]   # the end-of-run probes on 50 images: seconds less


# ---------------------------------------------------------------- safe model files

class _Evil:
    """Unpickling this would create a file: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_pickle_checkpoint_is_refused_not_run(tmp_path, capsys):
    from selfsup.train.checkpoint import UnsafeCheckpointError, load_checkpoint

    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"model": _Evil(str(marker))}, bad)
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        load_checkpoint(bad)
    assert not marker.exists()
    # the same file planted as a run's last checkpoint: resuming refuses it, nothing runs
    run = tmp_path / "run"
    assert main(["pretrain", "-o", str(run), *DIGITS, "train.steps=2"]) == 0
    (run / "summary.json").unlink()
    shutil.copy(bad, run / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert main(["pretrain", "-o", str(run), *DIGITS, "train.steps=2"]) == 2
    assert "refused to load" in capsys.readouterr().err and not marker.exists()


def test_model_files_are_safetensors_with_json_metadata(tmp_path):
    from safetensors import safe_open

    run = tmp_path / "run"
    assert main(["pretrain", "-o", str(run), *DIGITS]) == 0
    with safe_open(str(run / "encoder.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["backbone"] == "convnet" and json.loads(meta["mean"])[0] == 0.485


# ---------------------------------------------------------------- run directories

def test_finished_run_is_not_overwritten_without_flag(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "-o", str(run), *DIGITS]) == 0
    first = (run / "summary.json").read_text()
    capsys.readouterr()
    assert main(["pretrain", "-o", str(run), *DIGITS]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run / "summary.json").read_text() == first
    assert main(["pretrain", "-o", str(run), *DIGITS, "--overwrite", "train.seed=1"]) == 0
    assert json.loads((run / "summary.json").read_text())["seed"] == 1


def test_resume_with_changed_config_lists_the_keys(tmp_path, capsys):
    run = tmp_path / "run"
    from selfsup.config import load_config
    from selfsup.pretrain import pretrain

    pretrain(load_config("simclr_digits", DIGITS[2:]), run, stop_after=2)
    capsys.readouterr()
    assert main(["pretrain", "-o", str(run), *DIGITS, "optim.lr=0.5", "method.temperature=0.3"]) == 2
    err = capsys.readouterr().err
    assert "method.temperature" in err and "optim.lr" in err


def test_foreign_folder_and_file_are_never_touched(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "keep.jpg").write_bytes(b"mine")
    assert main(["pretrain", "-o", str(photos), *DIGITS, "--overwrite"]) == 2
    assert "was not made by selfsup" in capsys.readouterr().err
    assert os.listdir(photos) == ["keep.jpg"] and (photos / "keep.jpg").read_bytes() == b"mine"
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["pretrain", "-o", str(f), *DIGITS]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["pretrain", "-o", str(f / "sub"), *DIGITS]) == 2
    assert "cannot create" in capsys.readouterr().err


def test_full_disk_is_detected_before_training(tmp_path, capsys, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: real(p)._replace(free=1 << 20))  # 1 MiB left
    run = tmp_path / "run"
    assert main(["pretrain", "-o", str(run), *DIGITS]) == 2
    assert "MiB free" in capsys.readouterr().err
    assert not (run / "checkpoints").exists()  # nothing trained


# ---------------------------------------------------------------- hostile inputs

def _save(img, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


def _hostile_corpus(root):
    """Good images and every kind of bad file, in two class folders. Returns (good, bad)
    names relative to root."""
    rng = np.random.default_rng(0)
    good, bad = [], []

    def rgb(w=16, h=16):
        return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))

    for i in range(4):
        _save(rgb(), root / "a" / f"good{i}.png")
        good.append(f"a/good{i}.png")
    # readable but unusual: kept
    _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), root / "a" / "cmyk.jpg")
    _save(Image.fromarray(np.full((16, 16), 40000, np.uint16)), root / "a" / "sixteen.png")
    p = Image.new("P", (16, 16), 0)
    p.putpalette([10, 20, 30] * 256)
    _save(p, root / "a" / "palette.png", transparency=0)
    frames = [rgb(), rgb()]
    (root / "b").mkdir(parents=True, exist_ok=True)
    frames[0].save(root / "b" / "animated.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(rgb(24, 16), root / "b" / "rotated.jpg", exif=exif)
    _save(rgb(3000, 2000), root / "b" / "huge.jpg", quality=50)
    _save(rgb(1, 1), root / "b" / "tiny.png")
    weird = os.fsencode(str(root / "b")) + b"/caf\xe9-\xff.png"   # not UTF-8
    buf = io.BytesIO()
    rgb().save(buf, format="PNG")
    with open(weird, "wb") as f:
        f.write(buf.getvalue())
    good += ["a/cmyk.jpg", "a/sixteen.png", "a/palette.png", "b/animated.gif", "b/rotated.jpg",
             "b/huge.jpg", "b/tiny.png"]
    # unreadable: skipped and reported by name
    (root / "b" / "zero.jpg").write_bytes(b"")
    (root / "b" / "text.png").write_text("hello, I am not a picture")
    buf = io.BytesIO()
    rgb(64, 64).save(buf, format="JPEG")
    (root / "b" / "truncated.jpg").write_bytes(buf.getvalue()[:200])
    bomb = Image.new("1", (20000, 20000))
    bomb.save(root / "b" / "bomb.png")
    bad += ["b/zero.jpg", "b/text.png", "b/truncated.jpg", "b/bomb.png"]
    # a symlink loop must not hang the folder walk
    os.symlink(root / "b", root / "b" / "loop")
    return good, bad


def test_hostile_folder_every_case_has_its_outcome(tmp_path, capsys):
    from selfsup.data.dataset import from_source

    root = tmp_path / "messy"
    good, bad = _hostile_corpus(root)
    ds = from_source(root, image_size=16, cache_dir=tmp_path / "cache", progress=False)
    names = set(ds.names)
    assert set(good) <= names                                  # good data is never dropped
    non_utf8 = [n for n in names if n.startswith("b/caf")]
    assert len(non_utf8) == 1                                  # the odd name is kept too
    skipped = {s["name"]: s["reason"] for s in ds.skipped}
    assert set(skipped) == set(bad)
    assert "empty file" in skipped["b/zero.jpg"]
    assert "decompression bomb" in skipped["b/bomb.png"]
    assert not any("loop/" in n for n in names)               # no image counted twice
    assert ds.images.shape[1:] == (16, 16, 3) and ds.classes == ["a", "b"]
    rotated = ds.images[ds.names.index("b/rotated.jpg")]
    assert rotated.shape == (16, 16, 3)
    with pytest.raises(DataError, match="unreadable file"):
        from_source(root, image_size=16, cache_dir=tmp_path / "cache2", strict=True,
                    progress=False)


def test_bad_label_csvs_name_the_row_or_file(tmp_path):
    from selfsup.data.dataset import from_source

    root = tmp_path / "imgs"
    for i in range(3):
        _save(Image.new("RGB", (8, 8), (i * 50, 0, 0)), root / f"{i}.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\nimgs/0.png,salmon\nimgs/missing.png,trout\nimgs/1.png,\n"
                   "imgs/2.png,trout\n")
    ds = from_source(csv, image_size=8, cache_dir=tmp_path / "c", progress=False)
    assert ds.names == ["imgs/0.png", "imgs/1.png", "imgs/2.png"]       # good rows all kept
    assert ds.labels.tolist() == [0, -1, 1]                           # empty label: unlabeled
    assert [s["name"] for s in ds.skipped] == ["imgs/missing.png"]
    dup = tmp_path / "dup.csv"
    dup.write_text("path,label\nimgs/0.png,a\nimgs/1.png,b\nimgs/0.png,b\n")
    with pytest.raises(DataError, match=r"dup.csv, row 4: 'imgs/0.png' is listed twice \(first at row 2\)"):
        from_source(dup, image_size=8, progress=False)
    nohead = tmp_path / "nohead.csv"
    nohead.write_text("imgs/0.png,a\n")
    with pytest.raises(DataError, match="header with a 'path' column"):
        from_source(nohead, image_size=8, progress=False)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,label\nimgs/0.png,sa\xefmon\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        from_source(latin, image_size=8, progress=False)


def test_test_split_with_an_unknown_class_is_an_error_not_a_silent_shift(tmp_path):
    from selfsup.data import ImageDataset

    imgs = np.zeros((3, 4, 4, 3), np.uint8)
    test = ImageDataset(imgs, np.array([0, 1, 1]), ["salmon", "trout"], ["x", "y", "z"], "test")
    aligned = test.aligned_to(["cod", "salmon", "trout"])   # test lacks 'cod': fine, re-indexed
    assert aligned.labels.tolist() == [1, 2, 2]
    with pytest.raises(DataError, match="class\\(es\\) trout are not in the training classes"):
        test.aligned_to(["cod", "salmon"])


# ---------------------------------------------------------------- fuzzing (bounded)

def _valid(fmt):
    b = io.BytesIO()
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(b, format=fmt)
    return b.getvalue()


SEEDS = [_valid("PNG"), _valid("JPEG"), _valid("BMP"), _valid("GIF"), _valid("WEBP")]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                        max_size=8), st.integers(0, 400))
def test_fuzz_decoder_never_crashes(seed, flips, cut):
    data = bytearray(seed)
    for pos, val in flips:
        data[pos % len(data)] = val
    data = bytes(data[:max(1, len(data) - cut)])
    try:
        out = decode_image(data, 8)
    except UnreadableImage:
        return
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300))
def test_fuzz_csv_loader_never_crashes(tmp_path, text):
    from selfsup.data.sources import CsvSource

    p = tmp_path / "fuzz.csv"
    p.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        src = CsvSource(p)
    except DataError:
        return
    for item, data in src.iter_bytes():   # missing files come back as errors, not exceptions
        assert isinstance(item.name, str) and (isinstance(data, (bytes, Exception)))
