import hashlib
import io
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from selfsup.data import DataError, class_balanced_subset, load_dataset, stratified_split
from selfsup.data.decode import UnreadableImage, decode_image, to_rgb
from selfsup.data.dataset import from_source


def tree_digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            h.update(p.encode())
            h.update(open(p, "rb").read())
    return h.hexdigest()


def test_class_folder_labels_and_cache_reuse(class_folder, tmp_path):
    ds = from_source(class_folder, image_size=8, progress=False)
    assert len(ds) == 24 and ds.classes == ["salmon", "trout"]
    assert (np.bincount(ds.labels) == 12).all()
    assert ds.images.shape == (24, 8, 8, 3) and ds.images.dtype == np.uint8
    # salmon is red-dominant, trout green-dominant: labels follow folders, pixels follow files
    red = ds.images[..., 0].astype(float).mean((1, 2))
    green = ds.images[..., 1].astype(float).mean((1, 2))
    assert ((red > green) == (ds.labels == 0)).all()
    cache = tmp_path / "cache"
    n_caches = len(list(cache.iterdir()))
    again = from_source(class_folder, image_size=8, progress=False)
    assert isinstance(again.images, np.memmap)
    assert len(list(cache.iterdir())) == n_caches  # reused, not rebuilt
    from_source(class_folder, image_size=12, progress=False)
    assert len(list(cache.iterdir())) == n_caches + 1  # another resolution, another cache


def test_cache_rebuilt_when_source_changes(class_folder):
    a = from_source(class_folder, image_size=8, progress=False)
    img = class_folder / "salmon" / "000.jpg"
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(img)
    os.utime(img, ns=(1, 1))  # a different mtime even on coarse file systems
    b = from_source(class_folder, image_size=8, progress=False)
    i = b.names.index("salmon/000.jpg")
    assert a.images[i].mean() > 50 and b.images[i].max() == 0


def test_flat_and_nested_folders(tmp_path):
    from conftest import make_image
    for i in range(3):
        make_image(tmp_path / "flat" / f"{i}.png", (i * 50, 0, 0))
    make_image(tmp_path / "flat" / "sub" / "deep.png", (0, 0, 0))
    flat = from_source(tmp_path / "flat", image_size=8, progress=False)
    assert len(flat) == 4 and not flat.has_labels and flat.classes == []
    make_image(tmp_path / "nested" / "cat" / "2024" / "jan" / "a.png", (1, 2, 3))
    make_image(tmp_path / "nested" / "dog" / "b.bmp", (1, 2, 3))
    nested = from_source(tmp_path / "nested", image_size=8, progress=False)
    assert nested.classes == ["cat", "dog"] and sorted(nested.names) == ["cat/2024/jan/a.png", "dog/b.bmp"]


def test_broken_files_are_reported_and_good_ones_used(class_folder, tmp_path, capsys):
    (class_folder / "salmon" / "zero.jpg").write_bytes(b"")
    (class_folder / "salmon" / "text.png").write_text("not an image")
    good = (class_folder / "trout" / "000.jpg").read_bytes()
    (class_folder / "trout" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (class_folder / "notes.txt").write_text("ignored: not an image extension")
    before = tree_digest(class_folder)
    ds = from_source(class_folder, image_size=8, progress=False)
    assert tree_digest(class_folder) == before  # the user's folder is never modified
    skipped = {s["name"] for s in ds.skipped}
    assert {"salmon/zero.jpg", "salmon/text.png"} <= skipped
    assert len(ds) == 24 + 3 - len(skipped)  # every good image is used
    assert all(f"{c}/{i:03d}.{'png' if i % 2 else 'jpg'}" in ds.names
               for c in ("salmon", "trout") for i in range(12))
    report = tmp_path / "report.json"
    ds.write_report(report)
    assert "salmon/zero.jpg" in report.read_text() and "empty file" in report.read_text()
    assert "skipped" in capsys.readouterr().err
    with pytest.raises(DataError, match="unreadable file.*--strict"):
        from_source(class_folder, image_size=8, strict=True, progress=False)


def test_tar_and_csv_sources(class_folder, tmp_path):
    arch = tmp_path / "photos.tar.gz"
    with tarfile.open(arch, "w:gz") as tf:
        tf.add(class_folder, arcname="train")
    ds = from_source(arch, split="train", image_size=8, progress=False)
    assert len(ds) == 24 and ds.classes == ["salmon", "trout"]
    with pytest.raises(DataError, match="no image files under 'test/'"):
        from_source(arch, split="test", image_size=8, progress=False)
    csv_path = class_folder / "labels.csv"
    csv_path.write_text("path,label\nsalmon/000.jpg,salmon\ntrout/001.png,trout\nsalmon/002.jpg,\n")
    c = from_source(csv_path, image_size=8, progress=False)
    assert c.classes == ["salmon", "trout"] and list(c.labels) == [0, 1, -1]
    bad = class_folder / "bad.csv"
    bad.write_text("file,label\na.jpg,x\n")
    with pytest.raises(DataError, match="bad.csv.*'path' column"):
        from_source(bad, image_size=8, progress=False)
    dup = class_folder / "dup.csv"
    dup.write_text("path,label\nsalmon/000.jpg,a\nsalmon/000.jpg,b\n")
    with pytest.raises(DataError, match="row 3.*listed twice"):
        from_source(dup, image_size=8, progress=False)


def _png_bytes(img):
    b = io.BytesIO()
    img.save(b, format="PNG" if img.mode not in ("CMYK",) else "TIFF")
    return b.getvalue()


@pytest.mark.parametrize("mode,make,expected", [
    ("L", lambda: Image.new("L", (4, 4), 100), (100, 100, 100)),
    ("LA", lambda: Image.new("LA", (4, 4), (100, 255)), (100, 100, 100)),
    ("LA-transparent", lambda: Image.new("LA", (4, 4), (0, 0)), (255, 255, 255)),
    ("RGBA-half", lambda: Image.new("RGBA", (4, 4), (0, 0, 0, 128)), (127, 127, 127)),
    ("CMYK", lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
    ("I;16", lambda: Image.fromarray(np.full((4, 4), 65535, np.uint16)), (255, 255, 255)),
    ("I;16-mid", lambda: Image.fromarray(np.full((4, 4), 32896, np.uint16)), (128, 128, 128)),
])
def test_every_mode_to_rgb(mode, make, expected):
    arr = decode_image(_png_bytes(make()), 4)
    assert arr.shape == (4, 4, 3) and arr.dtype == np.uint8
    assert np.abs(arr.astype(int) - np.array(expected)).max() <= 1, (mode, arr[0, 0])


def test_palette_with_transparency_and_exif_rotation():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    p.info["transparency"] = 0
    assert to_rgb(p).getpixel((0, 0)) == (255, 255, 255)
    img = Image.new("RGB", (8, 4), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 4, 4))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    b = io.BytesIO()
    img.save(b, format="JPEG", exif=exif, quality=100)
    out = decode_image(b.getvalue(), 4)
    # displayed upright the red left half is on top; without the EXIF turn the top row would be
    # half red and half black
    assert out[0, :, 0].min() > 200 and out[-1, :, 0].max() < 50


def test_unreadable_bytes_raise():
    for data in (b"", b"GIF89a-not-really", b"\x89PNG\r\n\x1a\n" + b"\0" * 20):
        with pytest.raises(UnreadableImage):
            decode_image(data, 4)


def test_splits_are_balanced_and_deterministic():
    labels = np.repeat(np.arange(5), [30, 20, 40, 25, 10])
    a = class_balanced_subset(labels, per_class=4, seed=3)
    assert (np.bincount(labels[a]) == 4).all()
    assert np.array_equal(a, class_balanced_subset(labels, per_class=4, seed=3))
    assert not np.array_equal(a, class_balanced_subset(labels, per_class=4, seed=4))
    f = class_balanced_subset(labels, fraction=0.1, seed=0)
    assert list(np.bincount(labels[f])) == [3, 2, 4, 2, 1]
    with pytest.raises(DataError, match="class '4' has only 10"):
        class_balanced_subset(labels, per_class=11)
    tr, va = stratified_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    assert list(np.bincount(labels[va])) == [6, 4, 8, 5, 2]


def test_builtin_datasets():
    d = load_dataset("digits", image_size=16)
    assert len(d) == 1797 and d.images.shape == (1797, 16, 16, 3)
    tr, te = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    assert len(tr) + len(te) == 1797 and not set(tr.names) & set(te.names)
    with pytest.raises(DataError, match="needs data.path"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; choose one of"):
        load_dataset("imagenet")
