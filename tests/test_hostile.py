"""Reliability round 2 (issue 18): every file a run writes is crash-safe, locked and confined;
hostile folders, files and settings end in one clear line or a correct recovery, and nothing
outside the run folder changes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup import rundir
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.pretrain import pretrain

DIGITS = ["-p", "simclr_digits", "train.steps=4", "train.batch_size=32", "train.progress=false",
          "eval.monitor=false", "train.checkpoint_every=2",
          "eval.labels_per_class=5"]   # the end-of-run probes on 50 images: seconds less


def _cfg(*extra):
    return load_config("simclr_digits", [*DIGITS[2:], *extra])


def _no_temporaries(folder):
    return [str(p) for p in folder.rglob("*") if rundir.is_temporary(p.name)]


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


# ---------------------------------------------------------------- overwrite and markers

def test_overwrite_never_deletes_a_folder_selfsup_did_not_make(tmp_path, capsys):
    """A folder that merely looks like a run (config.yaml + summary.json) is not one."""
    mine = tmp_path / "mine"
    mine.mkdir()
    for name, text in (("config.yaml", "a: 1\n"), ("summary.json", "{}"), ("thesis.tex", "x")):
        (mine / name).write_text(text)
    assert main(["pretrain", "-o", str(mine), *DIGITS, "--overwrite"]) == 2
    assert "not made by selfsup" in _err_line(capsys)
    assert sorted(os.listdir(mine)) == ["config.yaml", "summary.json", "thesis.tex"]
    with pytest.raises(rundir.RunFileError, match="not made by selfsup"):
        rundir.remove(mine)
    assert (mine / "thesis.tex").read_text() == "x"


# ---------------------------------------------------------------- kills during writes

WRITES = [".selfsup-run", "config.yaml", "run.json", "data.json", "splits.json", "metrics.csv",
          "last.pt", "encoder.safetensors", "summary.json"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return pretrain(_cfg(), tmp_path_factory.mktemp("whole") / "run")[1]


@pytest.mark.parametrize("target", WRITES)
@pytest.mark.parametrize("when", ["writing", "renaming"])
def test_a_kill_during_any_write_leaves_the_old_file_and_the_rerun_recovers(
        tmp_path, monkeypatch, target, when, uninterrupted):
    """The process dies (SystemExit stands for the kill) while ``target``'s temporary file is
    being written, or just before it is renamed into place. The folder then holds the previous
    version (or nothing) under that name, never a torn file; re-running the same command
    finishes the run, removes the temporary files, and ends like an uninterrupted run."""
    run = tmp_path / "run"
    real_replace, real_fsync = os.replace, os.fsync
    hit = {"n": 0}

    def is_target(name) -> bool:
        return rundir.is_temporary(name) and f".{target}.tmp-" in name

    def replace(src, dst, *a, **k):
        if when == "renaming" and is_target(os.path.basename(str(src))):
            hit["n"] += 1
            raise SystemExit("killed")
        return real_replace(src, dst, *a, **k)

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if when == "writing" and is_target(os.path.basename(path)):
            hit["n"] += 1
            os.truncate(path, os.path.getsize(path) // 2)   # half the bytes reached the disk
            raise SystemExit("killed")
        return real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(SystemExit):
        pretrain(_cfg(), run)
    assert hit["n"] == 1
    if (run / target).exists():           # an earlier version, complete
        assert (run / target).stat().st_size > 0
    monkeypatch.setattr(os, "replace", real_replace)
    monkeypatch.setattr(os, "fsync", real_fsync)
    _, summary = pretrain(_cfg(), run)
    assert summary["steps"] == 4
    assert not _no_temporaries(run)
    assert summary["final_loss"] == uninterrupted["final_loss"]
    assert summary["eval"] == uninterrupted["eval"]
    json.loads((run / "summary.json").read_text())


def test_files_torn_by_older_versions_are_recovered(tmp_path, capsys):
    """0-byte files (what a non-atomic writer leaves) and a torn metrics line: the run resumes,
    config.yaml is rebuilt from the checkpoint, a 0-byte summary.json means unfinished."""
    run = tmp_path / "run"
    pretrain(_cfg("train.log_every=1"), run, stop_after=2)
    (run / "config.yaml").write_text("")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')                       # a disk that filled up
    assert main(["pretrain", "-o", str(run), *DIGITS, "train.log_every=1"]) == 0
    assert "rebuilt from the checkpoint" in capsys.readouterr().err
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
    (run / "summary.json").write_text("")
    again = [*DIGITS, "train.log_every=1"]
    assert main(["pretrain", "-o", str(run), *again]) == 0     # finishes it again
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
    assert main(["pretrain", "-o", str(run), *again]) == 2     # now it is finished


def test_semisup_eval_history_is_rebuilt_from_the_metrics_log(tmp_path):
    from selfsup.semisupervised import train_semisup

    args = ["-p", "fixmatch_digits", "train.steps=6", "train.eval_every=2",
            "train.checkpoint_every=2", "train.progress=false", "train.batch_size=16",
            "method.uratio=2"]
    cfg = load_config(args[1], args[2:])
    run = tmp_path / "run"
    train_semisup(cfg, run, stop_after=4)
    (run / "eval_history.json").write_text("")            # killed mid-write by an old version
    _, s = train_semisup(cfg, run)
    _, whole = train_semisup(cfg, tmp_path / "whole")
    assert s["evaluations"] == whole["evaluations"] == 3
    assert s["test_acc_final"] == whole["test_acc_final"]
    assert json.loads((run / "eval_history.json").read_text()) == \
        json.loads((tmp_path / "whole" / "eval_history.json").read_text())


# ---------------------------------------------------------------- checkpoints

def test_damaged_checkpoints_fall_back_or_say_what_to_do(tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(_cfg("train.steps=6"), run, stop_after=4)      # checkpoints at 2 (prev) and 4
    last = run / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0x01                              # one flipped bit
    last.write_bytes(bytes(data))
    from selfsup.train.checkpoint import DamagedCheckpointError, load_checkpoint

    with pytest.raises(DamagedCheckpointError, match="checksum mismatch"):
        load_checkpoint(last)
    assert main(["pretrain", "-o", str(run), *DIGITS, "train.steps=6"]) == 0
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "step 2" in err       # resumed from prev.pt
    # both damaged (truncated, empty): one line naming the file and what to do
    pretrain(_cfg("train.steps=6", "train.seed=1"), tmp_path / "r2", stop_after=4)
    ck = tmp_path / "r2" / "checkpoints"
    (ck / "last.pt").write_bytes((ck / "last.pt").read_bytes()[:1000])
    (ck / "prev.pt").write_bytes(b"")
    assert main(["pretrain", "-o", str(tmp_path / "r2"), *DIGITS, "train.steps=6",
                 "train.seed=1"]) == 2
    line = _err_line(capsys)
    assert "last.pt is damaged" in line and "--overwrite" in line


def test_a_diverging_run_never_checkpoints_non_finite_state(tmp_path, capsys, monkeypatch):
    """A step that leaves non-finite BatchNorm statistics (what lr=1e6 did) with a finite loss:
    the checkpoint after it is not written, the error says what to do, and the checkpoint a
    resume would start from is finite."""
    from selfsup.methods.simclr import SimCLR

    real = SimCLR.after_optimizer_step

    def poisoned(self, progress):
        real(self, progress)
        if progress >= 0.5:     # from the third step of four
            for m in self.backbone.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_var.fill_(float("inf"))

    monkeypatch.setattr(SimCLR, "after_optimizer_step", poisoned)
    run = tmp_path / "run"
    assert main(["pretrain", "-o", str(run), *DIGITS, "train.checkpoint_every=1"]) == 2
    line = _err_line(capsys)
    assert "non-finite values in backbone." in line and "Lower optim.lr" in line
    from selfsup.train.checkpoint import load_resumable

    ck, _ = load_resumable(run / "checkpoints")
    assert ck["step"] == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


# ---------------------------------------------------------------- locks

def test_a_second_process_on_the_same_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(_cfg(), run, stop_after=2)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,os,sys,time;"
         f"fd=os.open({str(run / rundir.LOCK)!r}, os.O_RDWR);"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (run / "metrics.jsonl").read_text()
        assert main(["pretrain", "-o", str(run), *DIGITS]) == 2
        assert "in use by another selfsup process" in _err_line(capsys)
        assert (run / "metrics.jsonl").read_text() == before   # nothing written twice
    finally:
        holder.kill()
        holder.wait()
    assert main(["pretrain", "-o", str(run), *DIGITS]) == 0   # the kernel released the lock


# ---------------------------------------------------------------- symbolic links

def test_links_planted_in_a_run_folder_are_replaced_never_written_through(tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(_cfg(), run, stop_after=2)
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = {}
    for name in ("summary.json", "metrics.csv", "encoder.safetensors", "splits.json",
                 "metrics.jsonl", "run.json"):
        v = outside / name
        v.write_text(f"precious {name}")
        victims[v] = v.read_text()
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(v)
    assert main(["pretrain", "-o", str(run), *DIGITS]) == 0
    assert all(v.read_text() == text for v, text in victims.items())
    assert not (run / "summary.json").is_symlink()
    # a file selfsup must read back (the data fingerprint) is not read through a link either
    run3 = tmp_path / "run3"
    pretrain(_cfg("train.seed=2"), run3, stop_after=2)
    (run3 / "data.json").unlink()
    (run3 / "data.json").symlink_to(outside / "summary.json")
    assert main(["pretrain", "-o", str(run3), *DIGITS, "train.seed=2"]) == 2
    assert "data.json is a symbolic link" in _err_line(capsys)
    # a linked checkpoints folder would put checkpoints elsewhere: refused
    run2 = tmp_path / "run2"
    pretrain(_cfg("train.seed=1"), run2, stop_after=2)
    os.rename(run2 / "checkpoints", outside / "ck")
    (run2 / "checkpoints").symlink_to(outside / "ck")
    assert main(["pretrain", "-o", str(run2), *DIGITS, "train.seed=1"]) == 2
    assert "symbolic link" in _err_line(capsys)


def test_export_overwrite_does_not_follow_links_out_of_the_export(tmp_path, capsys):
    from selfsup.semisupervised import train_semisup

    cfg = load_config("fixmatch_digits", ["train.steps=2", "train.progress=false",
                                          "train.batch_size=16", "method.uratio=1"])
    run, _ = train_semisup(cfg, tmp_path / "run")
    photos = tmp_path / "photos"
    for i in range(4):
        photos.mkdir(exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(photos / f"{i}.png")
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--check", str(photos)]) == 0
    outside = tmp_path / "outside.onnx"
    outside.write_text("precious")
    (out / "model.onnx").unlink()
    (out / "model.onnx").symlink_to(outside)
    assert main(["export", str(run), "--out", str(out), "--check", str(photos),
                 "--overwrite"]) == 0
    assert outside.read_text() == "precious" and not (out / "model.onnx").is_symlink()
    # an export folder without selfsup's marker is not replaced
    (out / rundir.MARKER).unlink()
    assert main(["export", str(run), "--out", str(out), "--check", str(photos),
                 "--overwrite"]) == 2
    assert "only replaces an earlier export" in _err_line(capsys)


# ---------------------------------------------------------------- hostile data

def test_special_files_and_oversized_files_are_skipped_and_reported(tmp_path, monkeypatch):
    from selfsup.data import sources
    from selfsup.data.dataset import from_source

    root = tmp_path / "photos"
    for c in ("a", "b"):
        for i in range(3):
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 16, 3), 30 * i, np.uint8)).save(root / c / f"{i}.png")
    os.mkfifo(root / "a" / "pipe.jpg")                    # would block a plain open()
    (root / "a" / "zero.png").symlink_to("/dev/zero")     # would fill the memory
    (root / "b" / "big.png").write_bytes(b"\x89PNG" + b"\0" * 5000)
    monkeypatch.setattr(sources, "MAX_IMAGE_BYTES", 4096)
    ds = from_source(root, image_size=16, cache_dir=tmp_path / "cache", progress=False)
    skipped = {s["name"]: s["reason"] for s in ds.skipped}
    assert "not a regular file" in skipped["a/pipe.jpg"]
    assert "not a regular file" in skipped["a/zero.png"]
    assert "limit for one image" in skipped["b/big.png"]
    assert len(ds) == 6


def test_csv_rows_cannot_point_outside_the_csv_folder(tmp_path):
    from selfsup.data.sources import CsvSource, DataError

    (tmp_path / "d").mkdir()
    for row in ("/etc/passwd", "../secret.png", "imgs/../../x.png"):
        (tmp_path / "d" / "l.csv").write_text(f"path,label\n{row},a\n")
        with pytest.raises(DataError, match="row 2: .* is outside the CSV's folder"):
            CsvSource(tmp_path / "d" / "l.csv")


def test_an_edit_that_restores_size_and_mtime_still_changes_the_fingerprint(tmp_path):
    from selfsup.data.sources import FolderSource

    (tmp_path / "p").mkdir()
    f = tmp_path / "p" / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(f)
    before = FolderSource(tmp_path / "p").fingerprint()
    st = os.stat(f)
    data = bytearray(f.read_bytes())
    data[-20] ^= 0xFF
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(f).st_size == st.st_size and os.stat(f).st_mtime_ns == st.st_mtime_ns
    assert FolderSource(tmp_path / "p").fingerprint() != before


def test_images_added_between_kill_and_resume_are_refused_unless_allowed(tmp_path, capsys):
    root = tmp_path / "photos"
    for c in ("a", "b"):
        for i in range(24):
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 16, 3), 8 * i + (c == "b") * 9, np.uint8)).save(
                root / c / f"{i}.png")
    args = ["-p", "simclr_digits", "data.dataset=folder", f"data.path={root}", "data.test_split=",
            "data.image_size=16", "augment.size=16", f"data.cache_dir={tmp_path / 'cache'}",
            "train.steps=4", "train.batch_size=16", "train.progress=false", "eval.monitor=false",
            "train.checkpoint_every=2"]
    run = tmp_path / "run"
    pretrain(load_config(args[1], args[2:]), run, stop_after=2)
    Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(root / "a" / "new.png")
    assert main(["pretrain", "-o", str(run), *args]) == 2
    line = _err_line(capsys)
    assert "changed since this run started" in line and "--allow-data-change" in line
    assert main(["pretrain", "-o", str(run), *args, "--allow-data-change"]) == 0
    assert json.loads((run / "data.json").read_text())["images"] == 49


def test_predict_writes_a_row_for_a_file_name_that_is_not_utf8(tmp_path):
    from selfsup.semisupervised import train_semisup

    cfg = load_config("fixmatch_digits", ["train.steps=2", "train.progress=false",
                                          "train.batch_size=16", "method.uratio=1"])
    run, _ = train_semisup(cfg, tmp_path / "run")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(photos / "ok.png")
    Image.fromarray(np.full((16, 16, 3), 20, np.uint8)).save(
        os.fsencode(str(photos)) + b"/caf\xe9.png")
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(photos), "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "caf\\udce9.png" in text and "ok.png" in text and len(text.splitlines()) == 3


# ---------------------------------------------------------------- bad settings and metadata

@pytest.mark.parametrize("setting, expect", [
    ("optim.lr=nan", "optim.lr=nan: must be a finite number"),
    ("optim.lr=1e6", "optim.lr=1000000.0: out of range"),
    ("train.batch_size=-4", "train.batch_size=-4: out of range"),
    ("train.steps=0", "train.steps=0: out of range"),
    ("train.steps=-5", "train.steps=-5: out of range"),
    ("data.image_size=1", "data.image_size=1: out of range"),
    ("train.checkpoint_every=0", "train.checkpoint_every=0: out of range"),
    ("method.temperature=inf", "method.temperature=inf: must be a finite number"),
])
def test_bad_numbers_are_one_line_naming_the_key_and_nothing_is_created(
        tmp_path, capsys, setting, expect):
    run = tmp_path / "run"
    assert main(["pretrain", "-o", str(run), *DIGITS, setting]) == 2
    assert expect in _err_line(capsys)
    assert not run.exists()


@pytest.mark.parametrize("field, value, expect", [
    ("width", "100000", "'width' is 100000, outside"),
    ("mean", "[NaN, 0.4, 0.4]", "'mean' is not three finite numbers"),
    ("std", "[0.2, 0, 0.2]", "'std' has a value <= 0"),
    ("classes", "\"salmon\"", "'classes' is not a list"),
    ("image_size", "banana", "'image_size' is 'banana', not a number"),
])
def test_hostile_model_metadata_is_refused_before_building(tmp_path, capsys, field, value,
                                                          expect):
    from safetensors.torch import save_file

    from selfsup.semisupervised import train_semisup

    cfg = load_config("fixmatch_digits", ["train.steps=1", "train.progress=false",
                                          "train.batch_size=16", "method.uratio=1"])
    run, _ = train_semisup(cfg, tmp_path / "run")
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), "pt") as f:
        meta = dict(f.metadata())
        state = {k: f.get_tensor(k) for k in f.keys()}
    meta[field] = value
    save_file(state, str(run / "model.safetensors"), metadata=meta)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "x.png")
    assert main(["predict", str(run), str(tmp_path / "x.png"), "-o", str(tmp_path / "p.csv")]) == 2
    assert expect in _err_line(capsys)
    assert not (tmp_path / "p.csv").exists()
