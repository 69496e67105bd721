"""selfsup fit on real images (digits written as PNG files), then predict and export its model."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from selfsup.cli import main
from selfsup.fitcheck import parse_budget
from selfsup.fitplan import Choices, choose, decide, replanned_steps


def test_parse_budget():
    assert parse_budget("90s") == 90 and parse_budget("30m") == 1800
    assert parse_budget("1h30m") == 5400 and parse_budget("2") == 120 and parse_budget(None) is None
    import pytest

    with pytest.raises(ValueError, match="cannot read"):
        parse_budget("soon")


def test_choose_uses_the_budget_and_the_data():
    c = choose(500, 5000, 30, "cpu", 600, lambda c: (0.5, 0.25), spent=lambda: 100.0)
    assert isinstance(c, Choices) and c.image_size == 32 and c.backbone == "convnet"
    # 500 s left after measuring: 20% to SimCLR; FreeMatch with the EMA teacher and the
    # labels-only candidate (same steps; a step trains on B images where FreeMatch's trains on
    # B + 4B and runs the teacher forward on 4B more: 1 / (1 + 4 + 4/3)) share the rest
    assert c.semisup_method == "freematch" and c.ema_teacher and c.ssl_steps == int(0.2 * 500 / 0.5)
    assert c.steps == int(0.8 * 500 / (0.25 * (1 + 3 / 19))) and "measuring" in c.reasons["steps"]
    lo = choose(500, 0, 30, "cpu", 600, lambda c: (0.5, 0.25), spent=lambda: 100.0)
    assert lo.semisup_method == "supervised" and lo.ssl_steps == int(0.45 * 500 / 0.5)
    assert not lo.ema_teacher
    c = choose(500, 0, 400, "cuda", None)
    assert (c.image_size, c.backbone, c.semisup_method) == (96, "resnet18", "supervised")
    assert choose(500, 0, 400, "cpu", None).image_size == 64


def test_the_budget_keeps_the_time_the_evaluations_after_training_need():
    """The test and validation images are scored after training (flip-averaged: twice), at a
    speed read off the measured step; that time is taken off the training plan (2026-12-02: on
    a slow CPU a fixed reserve let a 10-minute fit run 638 s)."""
    from selfsup.fitplan import evaluation_reserve

    base = choose(500, 5000, 30, "cpu", 600, lambda c: (0.5, 0.25), spent=lambda: 100.0)
    c = choose(500, 5000, 30, "cpu", 600, lambda c: (0.5, 0.25), spent=lambda: 100.0,
               n_test=10000, n_val=50)
    forwards = c.batch * (3 * (1 + c.uratio) + c.uratio)   # EMA teacher: B + 4B trained, 4B fwd
    assert c.flip_tta and c.eval_reserve_s == round((2 * 10000 + 6 * 50) * 2 * 0.25 / forwards, 1)
    assert c.ssl_steps == int(0.2 * (500 - c.eval_reserve_s) / 0.5) < base.ssl_steps
    assert base.eval_reserve_s == 0.0 and "10000 test" in c.reasons["eval_reserve_s"]
    c.flip_tta = False
    assert evaluation_reserve(c, 0.25, 10000, 50) == pytest.approx(c.eval_reserve_s / 2, abs=0.1)


def test_replanning_stage2_never_assumes_it_runs_faster_than_measured():
    """Stage 2's steps are re-planned from how stage 1 really ran: slower than measured scales
    stage 2's step time up; faster than measured does not scale it down (stage 2 evaluates and
    keeps an EMA model besides; a bf16 run planned 1,108 steps from a 0.74x stage 1 where 810
    fitted); a stage 1 of a few steps is not a measurement."""
    c = choose(500, 5000, 30, "cpu", 600, lambda c: (0.4, 0.38), spent=lambda: 0.0)
    unscaled = int(346 / (0.38 * (1 + 3 / 19)))
    fast, why = replanned_steps(c, 615, 615 * 0.3, 346)        # stage 1 at 0.75x its measurement
    assert fast == unscaled and "0.75x" in why and "scaled by 1.00" in why
    slow, _ = replanned_steps(c, 615, 615 * 0.6, 346)          # 1.5x: stage 2 assumed 1.5x too
    assert slow == int(346 / (0.38 * 1.5 * (1 + 3 / 19)))
    assert replanned_steps(c, 10, 10 * 2.0, 346)[0] == unscaled  # 10 steps: no re-scaling


def test_decide_keeps_labels_only_only_when_it_leads_by_more_than_one_standard_error():
    # the 2026-11-30 case: 48 vs 49 right out of 100 -> the semi-supervised model is kept
    semi = np.r_[np.ones(48), np.zeros(52)]
    lo = np.r_[np.ones(30), np.zeros(18), np.ones(19), np.zeros(33)]
    r = decide(semi, lo, "freematch")
    d = semi - lo
    se = d.std(ddof=1) / np.sqrt(100)
    assert r["kept"] == "freematch" and abs(r["difference"] + 0.01) < 1e-12
    assert abs(r["difference_se"] - se) < 1e-12 and 0.3 < r["p_semi_better"] < 0.5
    assert "does not lead" in r["reason"]
    # labels-only 15 images ahead (SE ~0.05): labels-only is kept
    lo2 = np.r_[np.ones(48), np.zeros(37), np.ones(15)]
    r = decide(semi, lo2, "freematch")
    assert r["kept"] == "labels_only" and r["difference"] < -r["margin"] and r["margin"] > 0
    # identical answers: a tie keeps the semi-supervised model; unanimous loss keeps labels-only
    assert decide(semi, semi)["kept"] == "semi"
    assert decide(np.zeros(3), np.ones(3))["kept"] == "labels_only"


def test_decide_rarely_drops_a_better_semi_model_and_usually_drops_a_worse_one():
    """Simulated validation sets of 100 images, two models disagreeing on 30% of them: the
    rule the fit uses against the old "keep whichever is ahead, ties keep labels-only"."""
    rng = np.random.default_rng(0)

    def p_labels_only(gap, rule, reps=300, n=100, disagree=0.3):
        out = 0
        for _ in range(reps):
            u = rng.random(n)
            only_semi = u < (disagree + gap) / 2
            only_lo = (u >= (disagree + gap) / 2) & (u < disagree)
            both = u >= 0.65
            semi, lo = (only_semi | both).astype(float), (only_lo | both).astype(float)
            out += (decide(semi, lo, n_boot=4)["kept"] == "labels_only" if rule == "new"
                    else not semi.mean() > lo.mean())
        return out / reps

    assert p_labels_only(0.06, "new") < 0.05 < 0.10 < p_labels_only(0.06, "old")
    assert p_labels_only(-0.07, "new") > 0.5


def test_choose_picks_bfloat16_only_where_the_cpu_has_it(monkeypatch):
    import selfsup.fitplan as plan

    monkeypatch.setattr(plan, "cpu_has_fast_bf16", lambda: True)
    assert choose(500, 5000, 30, "cpu", None).precision == "bf16"
    monkeypatch.setattr(plan, "cpu_has_fast_bf16", lambda: False)
    assert choose(500, 5000, 30, "cpu", None).precision == "fp32"
    assert choose(500, 5000, 30, "cuda", None).precision == "auto"   # bf16 autocast on CUDA


def test_fit_then_predict_and_export(tmp_path, capsys):
    from selfsup.data import load_dataset

    train = load_dataset("digits", split="train", image_size=16)
    test = load_dataset("digits", split="test", image_size=16)
    lab, unl, tst = tmp_path / "labeled", tmp_path / "unlabeled", tmp_path / "test"
    rng = np.random.default_rng(0)
    for c in range(10):
        idx = np.flatnonzero(train.labels == c)
        for i in idx[:12]:
            (lab / str(c)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(train.images[i]).save(lab / str(c) / f"{i}.png")
    unl.mkdir()
    for i in rng.choice(len(train), 300, replace=False):
        Image.fromarray(train.images[i]).save(unl / f"u{i}.png")
    for i in range(100):
        (tst / str(test.labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i]).save(tst / str(test.labels[i]) / f"t{i}.png")
    out = tmp_path / "fit"
    rc = main(["fit", str(lab), "--unlabeled", str(unl), "--test", str(tst), "-o", str(out),
               "--ssl-steps", "30", "--steps", "30", "train.progress=false", "augment.flip_p=0"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "image_size = 32" in err and "semisup_method = freematch" in err
    choices = json.loads((out / "choices.json").read_text())
    assert choices["ssl_steps"] == 30 and "set on the command line" in choices["reasons"]["steps"]
    s = json.loads((out / "summary.json").read_text())
    assert s["labeled"] == 120 and s["validation"] == 20 and s["unlabeled"] == 300
    assert s["test"] == 100 and s["classes"] == [str(i) for i in range(10)]
    assert 0.1 < s["classifier"]["test_acc_final"] <= 1.0        # learned something real
    assert s["pretrain_eval"]["knn20_acc"] > 0.1
    # the report: one self-contained page with every figure
    page = (out / "report.html").read_text()
    for title in ("Training", "Label efficiency", "Embedding map", "Nearest neighbours",
                  "Classifier on the test set", "Most confident mistakes",
                  "Most unusual images", "Collapse check", "Data report"):
        assert f"<h2>{title}" in page, title
    n_img = page.count("<img src=\"data:image/png;base64,")
    no_mistakes = "no mistakes on the validation split" in page
    assert n_img == (7 if no_mistakes else 8)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    facts = json.loads((out / "report.json").read_text())
    assert abs(facts["val_acc"] - s["classifier"]["val_acc_final"]) < 1e-6
    eff = {(r["encoder"], r["labels_per_class"]): r["val_acc"] for r in facts["label_efficiency"]}
    assert ("pretrained", 1) in eff and ("random-init", 1) in eff
    assert max(k for e, k in eff if e == "random-init") >= 9     # up to every training label
    assert main(["report", str(out), "-o", str(tmp_path / "again.html")]) == 0
    # the model predicts and exports
    pred = tmp_path / "p.csv"
    assert main(["predict", str(out / "classifier"), str(tst), "-o", str(pred)]) == 0
    rows = list(csv.DictReader(pred.open()))
    acc = np.mean([r["class"] == r["path"].split("/")[-2] for r in rows])
    assert len(rows) == 100 and abs(acc - s["classifier"]["test_acc_final"]) < 0.02
    # "not a class we know": a threshold set on the 20 validation images, a score per image
    ood = json.loads((out / "classifier" / "ood.json").read_text())
    assert ood["score"] == "knn_ssl" and ood["bank_images"] == 100
    assert ood["calibration_images"] == 20 and ood["encoder"]["backbone"] == "convnet"
    assert set(ood["thresholds"]) == {"msp", "energy", "knn", "knn_ssl"}
    scores = np.array([float(r["ood_score"]) for r in rows])
    flagged = np.array([r["unknown"] == "1" for r in rows])
    assert np.array_equal(flagged, scores > ood["thresholds"]["knn_ssl"])
    assert flagged.mean() < 0.5          # known-class images mostly pass
    assert main(["export", str(out / "classifier"), "-o", str(tmp_path / "exp"), "--check",
                 str(tst)]) == 0
    assert json.loads((tmp_path / "exp" / "export.json").read_text())["ok"]
    # a later round of labeling: the fit's classifier picks uncertain, diverse photos (BADGE)
    assert main(["select", str(unl), "--model", str(out), "--labeled", str(lab), "-n", "5",
                 "--strategy", "badge", "-o", str(tmp_path / "sel")]) == 0
    picked = list(csv.DictReader((tmp_path / "sel" / "to_label.csv").open()))
    assert len(picked) == 5 and all(r["suggested"] in [str(i) for i in range(10)] for r in picked)
    assert json.loads((tmp_path / "sel" / "selection.json").read_text())["strategy"] == "badge"
    # the export carries the unknown-photo check: predict from it gives the same flags
    assert (tmp_path / "exp" / "ood_encoder.safetensors").exists()
    assert main(["predict", str(tmp_path / "exp"), str(tst), "-o", str(tmp_path / "pe.csv")]) == 0
    rows_e = list(csv.DictReader((tmp_path / "pe.csv").open()))
    assert [r["unknown"] for r in rows_e] == [r["unknown"] for r in rows]


def test_time_step_measures_in_the_layout_the_loop_trains_in(monkeypatch):
    """The budget is planned from ``time_step``; the loop trains channels-last unless
    model.channels_last=false, so the step must be timed in that layout (timed in the default
    one it measured ~1.3x slower than fit's stages then ran, and fit left a sixth of the budget
    unused). Each timed step converts its views exactly when the loop would."""
    import torch

    from selfsup import fitplan

    calls = []
    real = fitplan.channels_last_views
    monkeypatch.setattr(fitplan, "channels_last_views",
                        lambda views: calls.append(1) or real(views))
    c = choose(40, 400, 32, "cpu", None)
    c.ssl_steps = c.steps = 10
    _, semi = fitplan._stage_configs(c, ["train.precision=fp32"], 0)
    x = torch.randint(0, 256, (c.batch + int(c.uratio * c.batch), 3, 32, 32), dtype=torch.uint8)
    y = torch.cat([torch.zeros(c.batch, dtype=torch.long), torch.full((len(x) - c.batch,), -1)])
    assert semi.model.channels_last and fitplan.time_step(semi, x, y, n=2) > 0
    assert len(calls) == 3                       # the warm-up step and the two timed ones
    calls.clear()
    off = fitplan.apply_overrides(semi, ["model.channels_last=false"])
    assert fitplan.time_step(off, x, y, n=2) > 0 and not calls


def test_time_step_averages_the_progressive_resizing_schedule(monkeypatch):
    """With train.progressive_side the planner times a step at each side the schedule visits
    and weights it by the share of steps spent there (the early, small steps are cheaper)."""
    import torch

    from selfsup import fitplan

    c = choose(40, 400, 32, "cpu", None)
    c.ssl_steps = c.steps = 10
    _, semi = fitplan._stage_configs(c, ["train.precision=fp32"], 0)
    semi = fitplan.apply_overrides(semi, ["train.progressive_side=16",
                                          "train.progressive_until=0.5"])
    sides = []
    real = fitplan.resize_views
    monkeypatch.setattr(fitplan, "resize_views",
                        lambda views, side, full: sides.append(side) or real(views, side, full))
    x = torch.randint(0, 256, (c.batch + int(c.uratio * c.batch), 3, 32, 32), dtype=torch.uint8)
    y = torch.cat([torch.zeros(c.batch, dtype=torch.long), torch.full((len(x) - c.batch,), -1)])
    assert fitplan.time_step(semi, x, y, n=1) > 0
    assert sorted(set(sides)) == [16, 20, 24, 28, 32] and sides.count(32) == 2


def test_validation_holds_out_a_fifth_of_few_labels_and_a_count_of_many():
    from selfsup.data.splits import stratified_split
    from selfsup.fitplan import validation_fraction

    assert validation_fraction(100) == pytest.approx(0.2)     # 20 images: a fifth
    assert validation_fraction(250) == pytest.approx(0.2)     # 50 images
    assert validation_fraction(500) == pytest.approx(0.1)     # 50, not 100
    assert validation_fraction(300) == pytest.approx(50 / 300)
    assert validation_fraction(5000) == pytest.approx(0.1)    # 500: 10% beyond 500 labels
    assert validation_fraction(0) == 0.0
    # CIFAR-10 with 500 labels (50 per class): 5 per class held out, 450 to train on
    labels = np.repeat(np.arange(10), 50)
    tr, va = stratified_split(labels, validation_fraction(500), 0)
    assert len(tr) == 450 and np.bincount(labels[va]).tolist() == [5] * 10


def test_fit_runs_freematch_with_a_threshold_momentum_for_short_runs():
    """fit's FreeMatch follows the model's confidence with momentum 0.99 (the paper's 0.999
    lags for half of a 2,000-step stage); other methods keep their own settings."""
    from dataclasses import replace

    from selfsup import fitplan

    c = choose(400, 4000, 32, "cpu", None)
    _, semi = fitplan._stage_configs(c, [], 0)
    assert c.semisup_method == "freematch" and semi.method["ema_p"] == fitplan.FREEMATCH_EMA_P
    assert "freematch_ema_p" in c.reasons
    _, fm = fitplan._stage_configs(replace(c, semisup_method="fixmatch"), [], 0)
    assert "ema_p" not in fm.method
