import json
import subprocess
import sys

import pytest

from selfsup.cli import main


@pytest.mark.parametrize("argv", [[], ["pretrain"], ["semisup"], ["eval"], ["list"], ["demo"],
                                  ["predict"], ["embed"], ["export"], ["fit"], ["report"],
                                  ["chem"], ["chem", "design"], ["chem", "pretrain-apprentice"],
                                  ["chem", "retro"], ["chem", "retro-train"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    assert "usage: selfsup" in capsys.readouterr().out


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "selfsup", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "pretrain" in out.stdout and "demo" in out.stdout


@pytest.mark.parametrize("what,expected", [("methods", "simclr"), ("backbones", "resnet50"),
                                           ("datasets", "cifar10"), ("presets", "simclr_digits")])
def test_list(what, expected, capsys):
    assert main(["list", what]) == 0
    assert expected in capsys.readouterr().out.split()


def test_bad_override_is_a_clear_error(capsys):
    assert main(["pretrain", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) optim.lrr" in err and "valid keys in 'optim'" in err


def test_pretrain_on_folder_with_broken_files_then_eval(class_folder, tmp_path, capsys):
    (class_folder / "trout" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    run = tmp_path / "run"
    common = ["data.dataset=folder", f"data.path={class_folder}", "data.image_size=12",
              "augment.size=12", "model.backbone=convnet", "model.width=0.25",
              "train.batch_size=8", "train.progress=false", "eval.knn_k=5", "eval.monitor_size=8"]
    rc = main(["pretrain", "-o", str(run), *common, "train.steps=4", "train.checkpoint_every=2"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "skipped 1 unreadable file(s)" in captured.err
    report = json.loads((run / "data_report.json").read_text())
    assert report["used"] == 24 and report["skipped"][0]["name"] == "trout/broken.jpg"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["skipped_files"] == 1
    # eval the run's encoder: train = the folder, test = the folder (smoke: it must run and
    # separate two colour-coded classes)
    rc = main(["eval", "knn", "--run", str(run), "data.test_split=", "train.progress=false"])
    assert rc == 2 and "data.test_split" in capsys.readouterr().err
    (class_folder.parent / "split").mkdir()
    import shutil
    shutil.copytree(class_folder, class_folder.parent / "split" / "train",
                    ignore=shutil.ignore_patterns("broken.jpg"))
    shutil.copytree(class_folder, class_folder.parent / "split" / "test",
                    ignore=shutil.ignore_patterns("broken.jpg"))
    split_args = [f"data.path={class_folder.parent / 'split'}", "data.split=train",
                  "data.test_split=test", "train.progress=false"]
    assert main(["eval", "knn", "--run", str(run), *split_args]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["knn5_acc"] > 0.9 and res["n_test"] == 24
    assert main(["eval", "linear", "--run", str(run), *split_args]) == 0
    assert json.loads(capsys.readouterr().out)["linear_acc"] > 0.9
    assert main(["eval", "knn", *common, *split_args]) == 0  # random-init encoder
    assert "random-init" in capsys.readouterr().err


def test_missing_data_path_is_a_clear_error(tmp_path, capsys):
    rc = main(["pretrain", "data.dataset=folder", f"data.path={tmp_path}/nowhere",
               f"train.out_dir={tmp_path}/r"])
    assert rc == 2 and "nowhere: no such file or folder (data.path)" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_prints_the_comparison(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--steps", "40"]) == 0
    out = capsys.readouterr().out
    for row in ("SimCLR (pretrained)", "random-init encoder", "raw pixels"):
        assert row in out
    assert (tmp_path / "demo" / "simclr" / "encoder.safetensors").exists()


def test_semisup_on_a_folder_with_ssl_init(class_folder, tmp_path, capsys):
    """The cannery path: a folder of labeled photos, 2 labels per class kept, 2 per class held
    out for validation, FixMatch started from a self-supervised run."""
    common = ["data.dataset=folder", f"data.path={class_folder}", "data.image_size=12",
              "augment.size=12", "model.backbone=convnet", "model.width=0.25",
              "train.batch_size=4", "train.progress=false"]
    ssl = tmp_path / "ssl"
    assert main(["pretrain", "-o", str(ssl), *common, "train.steps=2", "eval.knn_k=5",
                 "eval.monitor_size=8"]) == 0
    capsys.readouterr()
    run = tmp_path / "fm"
    rc = main(["semisup", "-o", str(run), "--init", str(ssl), *common, "method.name=fixmatch",
               "method.uratio=2", "data.labels_per_class=2", "data.val_per_class=2",
               "train.steps=4", "train.eval_every=2", "optim.name=sgd", "optim.scale_lr=false",
               "optim.lr=0.03"])
    assert rc == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_labeled"] == 4 and summary["n_val"] == 4 and summary["n_train"] == 20
    assert json.loads((run / "init.json").read_text())["loaded"] == "encoder"
    assert (run / "model.safetensors").exists() and "val_acc_best" in summary
    # a self-supervised command refuses a semi-supervised method, and vice versa
    assert main(["pretrain", *common, "method.name=fixmatch", f"train.out_dir={tmp_path}/x"]) == 2
    assert "selfsup semisup" in capsys.readouterr().err
    assert main(["semisup", *common, "method.name=simclr", f"train.out_dir={tmp_path}/y"]) == 2
    assert "selfsup pretrain" in capsys.readouterr().err
    # a backbone mismatch with --init names both
    rc = main(["semisup", "-o", str(tmp_path / "bad"), "--init", str(ssl), *common,
               "model.width=0.5", "method.name=supervised", "train.steps=1"])
    assert rc == 2 and "width" in capsys.readouterr().err


def test_eval_sweep_on_digits(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "-p", "simclr_digits", "-o", str(run), "train.steps=20",
                 "train.progress=false", "eval.monitor=false"]) == 0
    capsys.readouterr()
    assert main(["eval", "sweep", "--run", str(run), "--per-class", "1,5", "--fractions", "0.5",
                 "--seeds", "0,1", "data.split=train", "train.progress=false"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| labels |") and len([x for x in out if x.startswith("| ")]) == 4
    rows = __import__("json").loads(out[-1])
    assert {(r["labels"], r["seed"]) for r in rows} == {(a, s) for a in ("1/class", "5/class",
                                                                         "50%") for s in (0, 1)}
    assert all(r["n_labels"] == {"1/class": 10, "5/class": 50}.get(r["labels"], r["n_labels"])
               for r in rows)
    assert all(0 <= r["linear_acc"] <= 1 for r in rows)
    half = [r for r in rows if r["labels"] == "50%"]
    one = [r for r in rows if r["labels"] == "1/class"]
    assert sum(r["linear_acc"] for r in half) > sum(r["linear_acc"] for r in one)  # more labels help
