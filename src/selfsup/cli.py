"""The command line: thin wrappers that parse -> config -> library call."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__

OVERRIDES_HELP = ("section.key=value overrides, e.g. optim.lr=0.5 train.steps=200 "
                  "method.temperature=0.2 (unknown keys are an error listing the valid ones)")


def _training_config(args):
    """The preset + overrides of a training command, with its --out/--strict/--overwrite."""
    from .config import load_config

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    if getattr(args, "strict", False):
        overrides.append("data.strict=true")
    if args.overwrite:
        overrides.append("train.overwrite=true")
    if getattr(args, "allow_data_change", False):
        overrides.append("train.allow_data_change=true")
    return load_config(args.preset, overrides)


def _cmd_pretrain(args) -> int:
    from .pretrain import pretrain

    cfg = _training_config(args)
    run_dir, summary = pretrain(cfg)
    print(json.dumps(summary, indent=1))
    print(f"run directory: {run_dir}")
    return 0


def _cmd_semisup(args) -> int:
    from .semisupervised import mpl_with_finetune, noisy_student, train_semisup

    cfg = _training_config(args)
    name = cfg.method.get("name")
    if name == "noisy_student":
        run_dir, summary = noisy_student(cfg, rounds=args.rounds, init=args.init,
                                         teacher_overrides=args.teacher)
    elif name == "mpl" and args.finetune_steps:
        run_dir, summary = mpl_with_finetune(cfg, args.finetune_steps, init=args.init)
    else:
        run_dir, summary = train_semisup(cfg, init=args.init)
    print(json.dumps(summary, indent=1))
    print(f"run directory: {run_dir}")
    return 0


def _cmd_fit(args) -> int:
    from pathlib import Path

    # careless inputs are answered before torch is imported (that takes seconds)
    for path, what in ((args.labeled, "labeled folder"), (args.unlabeled, "--unlabeled"),
                       (args.test, "--test"), (args.extra_labels, "--extra-labels")):
        if path is not None and not Path(path).expanduser().exists():
            print(f"selfsup: error: {what} {path}: no such file or folder", file=sys.stderr)
            return 2
    from .fitcheck import fit_record, parse_budget, preflight

    try:
        parse_budget(args.budget)
    except ValueError as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
    forced = {"image_size": args.image_size, "backbone": args.backbone,
              "ssl_steps": args.ssl_steps, "steps": args.steps, "ssl_method": args.ssl_method,
              "semisup_method": args.semisup_method}
    preflight(args.labeled, Path(args.out), args.unlabeled, args.test, args.overwrite,
              fit_record(args.labeled, args.unlabeled, args.test, args.budget, args.seed,
                         args.overrides, forced, args.extra_labels), args.extra_labels)
    from .fit import fit

    summary = fit(args.labeled, args.out, unlabeled=args.unlabeled, test=args.test,
                  budget=args.budget, overrides=args.overrides, forced=forced, seed=args.seed,
                  overwrite=args.overwrite, allow_data_change=args.allow_data_change,
                  extra_labels=args.extra_labels)
    print(json.dumps(summary, indent=1))
    h = summary.get("headline")
    if h:
        lo, hi = h["test_acc_95ci"]
        print(f"test accuracy {100 * h['test_acc']:.1f}% (95% interval {100 * lo:.1f}-"
              f"{100 * hi:.1f}%), balanced {100 * h['balanced_acc']:.1f}%, majority class "
              f"{100 * h['majority_rate']:.1f}%")
    print(f"kept: {summary['comparison']['kept']} ({summary['comparison']['reason']})")
    print(f"model: {summary['model']}\nnext: selfsup predict {args.out}/classifier PATH... ; "
          f"selfsup export {args.out}/classifier -o {args.out}/export")
    return 0


def _cmd_select(args) -> int:
    from .select import select

    s = select(args.model, args.pool, args.out, n=args.n, labeled=args.labeled,
               strategy=args.strategy, seed=args.seed, device=args.device)
    print(json.dumps(s, indent=1))
    print(f"next: fill in the label column of {s['csv']} (thumbnails: {s['contact_sheet']}), "
          f"then selfsup fit LABELED --extra-labels {s['csv']} ...")
    return 0


def _cmd_report(args) -> int:
    from .report.html import build_report

    path = build_report(args.run, args.out)
    print(f"report: {path}")
    return 0


def _cmd_predict(args) -> int:
    from .inference import predict

    res = predict(args.model, args.paths, args.out, top_k=args.top_k,
                  low_confidence=args.low_confidence, batch_size=args.batch_size,
                  device=args.device, overwrite=args.overwrite)
    print(json.dumps(res, indent=1))
    return 0


def _cmd_embed(args) -> int:
    from .inference import embed

    res = embed(args.run, args.paths, args.out, batch_size=args.batch_size, device=args.device,
                overwrite=args.overwrite)
    print(json.dumps(res, indent=1))
    return 0


def _cmd_export(args) -> int:
    from .export import export_model

    res = export_model(args.run, args.out, check_images=args.check or None,
                       overwrite=args.overwrite)
    print(json.dumps(res, indent=1))
    return 0


def _cmd_eval(args) -> int:
    import torch

    from .config import apply_overrides, load_config
    from .evaluate.protocol import evaluate_encoder, labeled_train_subset
    from .pretrain import build_backbone, load_data, load_encoder

    if args.run:
        encoder, cfg = load_encoder(args.run)
        if args.overrides:  # the run's own config, then the command line's overrides
            cfg = apply_overrides(cfg, args.overrides)
    else:
        cfg = load_config(args.preset, args.overrides)
        torch.manual_seed(cfg.train.seed)
        encoder = build_backbone(cfg)
        print("selfsup: no --run given: evaluating a random-init encoder", file=sys.stderr)
    if not cfg.data.test_split:
        print("selfsup eval needs labeled held-out images: set data.test_split=<sub-folder>",
              file=sys.stderr)
        return 2
    train = load_data(cfg, cfg.data.split, cfg.train.progress)
    test = load_data(cfg, cfg.data.test_split, cfg.train.progress)
    if train.has_labels and test.has_labels:
        test = test.aligned_to(train.classes)
    if not train.has_labels or not test.has_labels:
        print("selfsup eval needs class sub-folders (labels) in both splits", file=sys.stderr)
        return 2
    if args.kind == "sweep":
        import numpy as np

        from .evaluate.protocol import label_sweep
        from .pretrain import probe_encoder

        rows = label_sweep(probe_encoder(encoder, cfg.eval.stage), train, test,
                           per_class=args.per_class, fractions=args.fractions, seeds=args.seeds,
                           knn_k=20, knn_temperature=cfg.eval.knn_temperature)
        print("| labels | seeds | kNN (k<=20) % | linear % |\n|---|---|---|---|")
        for name in dict.fromkeys(r["labels"] for r in rows):
            rs = [r for r in rows if r["labels"] == name]
            f = lambda k: f"{100 * np.mean([r[k] for r in rs]):.1f} ± {100 * np.std([r[k] for r in rs]):.1f}"  # noqa: E731,E501
            print(f"| {name} ({rs[0]['n_labels']}) | {len(rs)} | {f('knn_acc')} | "
                  f"{f('linear_acc')} |")
        print(json.dumps(rows))
        return 0
    probe = labeled_train_subset(train, cfg.eval.labels_per_class, cfg.eval.label_fraction,
                                 cfg.train.seed)
    from .pretrain import probe_encoder

    res = evaluate_encoder(probe_encoder(encoder, cfg.eval.stage), probe, test,
                           kinds=(args.kind,), knn_k=(cfg.eval.knn_k, 20), knn_temperature=cfg.eval.knn_temperature,
                           val_fraction=cfg.eval.val_fraction, seed=cfg.train.seed)
    print(json.dumps(res, indent=1))
    return 0


def _cmd_list(args) -> int:
    if args.what == "methods":
        from .methods import METHODS
        semi = [n for n in METHODS.names() if getattr(METHODS.get(n), "semi_supervised", False)]
        print("self-supervised (selfsup pretrain):")
        print("\n".join(f"  {n}" for n in METHODS.names() if n not in semi))
        print("semi-supervised (selfsup semisup, selfsup fit --semisup-method):")
        print("\n".join(f"  {n}" for n in semi))
        return 0
    elif args.what == "backbones":
        from . import backbones
        names = backbones.names()
    elif args.what == "datasets":
        from .data import DATASETS
        names = DATASETS.names()
    else:
        from .config import preset_names
        names = preset_names()
    print("\n".join(names))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, labels_per_class=args.labels_per_class, steps=args.steps)
    return 0


def _int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _float_list(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfsup", description="Learn from unlabeled images. "
                                "Start with `selfsup fit LABELED --unlabeled PHOTOS` (a classifier "
                                "in one command), then predict/export/report; pretrain, semisup "
                                "and eval for research; chem for molecules; demo to try it.")
    p.add_argument("--version", action="version", version=f"selfsup {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    pt = sub.add_parser("pretrain", help="self-supervised pretraining of an encoder",
                        description="Pretrain an encoder. Writes a run directory with the "
                        "resolved config, run.json (version, git sha, seed), metrics.jsonl/csv, "
                        "checkpoints/last.pt, encoder.safetensors and summary.json. Re-running "
                        "with the same out_dir resumes from the last checkpoint.")
    pt.add_argument("--preset", "-p", default=None,
                    help="YAML preset: a file or a bundled name (selfsup list presets)")
    pt.add_argument("--out", "-o", default=None, help="run directory (default runs/<method>-<time>)")
    pt.add_argument("--strict", action="store_true", help="fail on unreadable images")
    pt.add_argument("--overwrite", action="store_true",
                    help="replace a finished run in --out (never needed to resume)")
    pt.add_argument("--allow-data-change", action="store_true",
                    help="resume even though the training images changed since the run started "
                    "(refused by default)")
    pt.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    pt.set_defaults(func=_cmd_pretrain)

    ss = sub.add_parser("semisup", help="train a classifier from a few labels + unlabeled images",
                        description="Semi-supervised training (supervised, pseudo_label, fixmatch, "
                        "flexmatch, freematch, "
                        "distill, noisy_student, mpl: set method.name or use a preset). Labels: "
                        "data.labels_per_class per class chosen by seed (the rest unlabeled); "
                        "data.val_per_class per class held out for model selection. Writes a run "
                        "directory with config.yaml, splits.json, metrics.jsonl, eval_history.json, "
                        "model.safetensors (classifier), encoder.safetensors and summary.json "
                        "(final test accuracy, median of the last evaluations, test accuracy at "
                        "the best validation accuracy). Re-running with the same --out resumes.")
    ss.add_argument("--preset", "-p", default=None,
                    help="YAML preset: a file or a bundled name (selfsup list presets)")
    ss.add_argument("--out", "-o", default=None, help="run directory (default runs/<method>-<time>)")
    ss.add_argument("--overwrite", action="store_true",
                    help="replace a finished run in --out (never needed to resume)")
    ss.add_argument("--allow-data-change", action="store_true",
                    help="resume even though the training images changed since the run started "
                    "(refused by default)")
    ss.add_argument("--init", default=None, help="start from a run directory: a self-supervised "
                    "run (its encoder: 'SSL + fine-tune') or a semi-supervised one (its classifier)")
    ss.add_argument("--rounds", type=int, default=2, help="noisy_student: student rounds after "
                    "the labels-only teacher (default 2)")
    ss.add_argument("--teacher", action="append", default=None, metavar="KEY=VALUE",
                    help="noisy_student: an override for the round-0 teacher only, e.g. "
                    "--teacher model.width=0.5 (repeatable)")
    ss.add_argument("--finetune-steps", type=int, default=0, help="mpl: fine-tune the student on "
                    "the labels alone for this many steps afterwards (the paper's last stage)")
    ss.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    ss.set_defaults(func=_cmd_semisup)

    ev = sub.add_parser("eval", help="kNN, linear-probe or label-sweep evaluation of an encoder",
                        description="Evaluate frozen features: 'knn' (cosine, temperature-weighted "
                        "votes, k=eval.knn_k and 20), 'linear' (logistic regression, L2 chosen "
                        "on a validation split), or 'sweep' (both, with only N labels per class "
                        "or a fraction of each class known, over several seeds: a Markdown "
                        "table of mean ± std, then the rows as JSON). Labeled train images come "
                        "from data.split, test images from data.test_split. Prints JSON.")
    ev.add_argument("kind", choices=["knn", "linear", "sweep"])
    ev.add_argument("--per-class", type=_int_list, default=[1, 5, 10], metavar="N,N,...",
                    help="sweep: labels per class to try (default 1,5,10)")
    ev.add_argument("--fractions", type=_float_list, default=[0.01, 0.1], metavar="F,F,...",
                    help="sweep: fractions of each class's labels to try (default 0.01,0.1)")
    ev.add_argument("--seeds", type=_int_list, default=[0, 1, 2], metavar="S,S,...",
                    help="sweep: seeds of the labeled subsets (default 0,1,2)")
    ev.add_argument("--run", "-r", default=None, help="run directory of a pretrained encoder "
                    "(omit to evaluate a random-init encoder)")
    ev.add_argument("--preset", "-p", default=None, help="preset used when --run is omitted")
    ev.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    ev.set_defaults(func=_cmd_eval)

    ft = sub.add_parser("fit", help="labeled (+ unlabeled) photos -> a classifier, in one command",
                        description="Look at the data, choose a recipe (input size, backbone, "
                        "steps; printed and saved in OUT/choices.json), pretrain SimCLR on every "
                        "image, train FreeMatch from it on the labels (labels-only fine-tuning if "
                        "there are no unlabeled images) and labels-only fine-tuning beside it, keep "
                        "FreeMatch unless labels-only is more accurate by more than one standard "
                        "error on a validation split held out per class (20 percent of the "
                        "labels up to 50 images, then 50 or 10 percent, whichever is more; none "
                        "when a class has fewer than 5 labels), evaluate on "
                        "--test, and write OUT/ with pretrain/, candidates/, "
                        "classifier/model.safetensors (the kept model, with calibration.json "
                        "for predict's uncertainty flag), summary.json and report.html. "
                        "Re-running the same command resumes; nothing is written before the "
                        "inputs are checked.")
    ft.add_argument("labeled", help="folder with one sub-folder per class, a .tar.gz of it, or a "
                    "CSV of path,label")
    ft.add_argument("--unlabeled", "-u", default=None, help="folder/archive of unlabeled images")
    ft.add_argument("--extra-labels", default=None, metavar="CSV",
                    help="more labels: the to_label.csv that `selfsup select` wrote, with its "
                    "label column filled in (rows left empty are skipped)")
    ft.add_argument("--test", default=None, help="labeled images kept for a final test")
    ft.add_argument("--budget", default=None, help="time budget, e.g. 30m, 2h, 90s (default: a "
                    "fixed recipe from the data size)")
    ft.add_argument("--out", "-o", default="runs/fit", help="output folder (default runs/fit)")
    ft.add_argument("--overwrite", action="store_true",
                    help="replace an earlier fit in --out (only a folder fit wrote)")
    ft.add_argument("--allow-data-change", action="store_true",
                    help="resume a killed fit even though its images changed since it started")
    ft.add_argument("--image-size", type=int, default=None,
                    help="training resolution in pixels (default: 32 for small images, 64 on CPU, "
                    "96 on GPU)")
    ft.add_argument("--backbone", default=None,
                    help="encoder architecture (selfsup list backbones; default convnet on CPU, "
                    "resnet18 on GPU)")
    ft.add_argument("--ssl-method", default=None,
                    help="self-supervised method of stage 1 (default simclr)")
    ft.add_argument("--semisup-method", default=None,
                    help="semi-supervised method of stage 2 (default freematch when there are "
                    "unlabeled images; e.g. fixmatch, freematch, supervised)")
    ft.add_argument("--ssl-steps", type=int, default=None, help="pretraining steps")
    ft.add_argument("--steps", type=int, default=None, help="semi-supervised steps")
    ft.add_argument("--seed", type=int, default=0, help="seed of the split and the training")
    ft.add_argument("overrides", nargs="*", help="key=value overrides applied to both stages")
    ft.set_defaults(func=_cmd_fit)

    rp = sub.add_parser("report", help="a self-contained HTML report of a run",
                        description="Write RUN/report.html (one file, figures embedded, nothing "
                        "fetched from the network): training curves, label-efficiency curve "
                        "(pretrained vs random-init), confusion matrix and per-class accuracy, "
                        "t-SNE map with thumbnails, nearest-neighbour retrievals, most confident "
                        "mistakes, collapse metrics, skipped files. `fit` writes it itself.")
    rp.add_argument("run", help="a fit directory or a pretrain / semisup run directory")
    rp.add_argument("--out", "-o", default=None, help="HTML file (default RUN/report.html)")
    rp.set_defaults(func=_cmd_report)

    pr = sub.add_parser("predict", help="classify images with a trained model -> CSV",
                        description="Classify every image in the given files, folders (recursive) "
                        "and archives with a trained classifier (a `selfsup semisup`/`fit` run "
                        "directory, an exported folder or a model.safetensors). Writes a CSV: "
                        "path, class, confidence, top-k, low_confidence (1 below the threshold), "
                        "error (unreadable files are listed, not fatal).")
    pr.add_argument("model", help="run directory, export folder or model.safetensors")
    pr.add_argument("paths", nargs="+", help="image files, folders or .tar/.tar.gz archives")
    pr.add_argument("--out", "-o", default="predictions.csv", help="CSV to write "
                    "(default predictions.csv; an existing file is kept unless --overwrite)")
    pr.add_argument("--top-k", type=int, default=3, help="classes listed per image (default 3)")
    pr.add_argument("--low-confidence", type=float, default=None,
                    help="flag predictions whose confidence is below this (default: the rule "
                    "calibrated on held-out images in the model's calibration.json, else "
                    "(1 + 1/classes) / 2)")
    pr.add_argument("--batch-size", type=int, default=256, help="images per batch")
    pr.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --out CSV")
    pr.set_defaults(func=_cmd_predict)

    em = sub.add_parser("embed", help="write the encoder's embeddings of images (.npz)",
                        description="Run a run's encoder on every image in the given files, "
                        "folders and archives; write OUT.npz with 'embeddings' [N, D], 'paths' "
                        "[N] and 'unreadable'.")
    em.add_argument("run", help="run directory (self- or semi-supervised)")
    em.add_argument("paths", nargs="+")
    em.add_argument("--out", "-o", default="embeddings.npz")
    em.add_argument("--batch-size", type=int, default=256)
    em.add_argument("--device", default="cpu")
    em.add_argument("--overwrite", action="store_true")
    em.set_defaults(func=_cmd_embed)

    se = sub.add_parser("select", help="which photos to label next -> a CSV to fill in + a "
                        "contact sheet",
                        description="Choose the N photos of POOL the expert should label next. "
                        "Cold start (an encoder only, or fewer than 10 labels per class): the most "
                        "typical image of each uncovered k-means cluster of the self-supervised "
                        "embedding (TypiClust). Later rounds (a classifier from `selfsup fit`): "
                        "uncertain and diverse images (BADGE: k-means++ on the last layer's "
                        "gradient embeddings). Writes OUT/to_label.csv (fill in the label "
                        "column), OUT/images/ (copies of the chosen photos), "
                        "OUT/contact_sheet.html (thumbnails in labeling order) and "
                        "OUT/selection.json; then `selfsup fit LABELED --extra-labels "
                        "OUT/to_label.csv`.")
    se.add_argument("pool", help="folder/archive of unlabeled photos to choose from")
    se.add_argument("--model", "-m", required=True, help="a fit folder, or a semisup or "
                    "pretrain run (its encoder embeds the photos)")
    se.add_argument("--labeled", "-l", default=None, help="the photos labeled so far (class "
                    "sub-folders or a CSV): their clusters count as covered, and pool photos "
                    "with the same pixels are never chosen again")
    se.add_argument("-n", type=int, default=50, help="how many photos to choose (default 50)")
    se.add_argument("--strategy", default="auto", choices=["auto", "typiclust", "badge",
                                                           "margin", "random"],
                    help="auto (default): typiclust at cold start, badge once a classifier has "
                    ">= 10 labels per class")
    se.add_argument("--out", "-o", default="runs/select", help="output folder (default "
                    "runs/select; must be new or empty)")
    se.add_argument("--seed", type=int, default=0)
    se.add_argument("--device", default="cpu")
    se.set_defaults(func=_cmd_select)

    ex = sub.add_parser("export", help="export a classifier to safetensors + ONNX",
                        description="Write OUT/model.safetensors, OUT/model.onnx (input: float32 "
                        "RGB [B, 3, S, S] in [0, 1]; outputs logits and probabilities; "
                        "normalisation inside; preprocessing and class names in its metadata), "
                        "OUT/preprocess.json and OUT/export.json with the ONNX-vs-PyTorch "
                        "difference on real images (onnxruntime; must be <= 1e-4).")
    ex.add_argument("run", help="a run directory with model.safetensors (semisup / fit)")
    ex.add_argument("--out", "-o", default="export", help="output folder (default ./export)")
    ex.add_argument("--check", nargs="*", default=None, metavar="PATH",
                    help="images to check parity on (default: the run's training data)")
    ex.add_argument("--overwrite", action="store_true")
    ex.set_defaults(func=_cmd_export)

    ls = sub.add_parser("list", help="list registered methods, backbones, datasets or presets",
                        description="methods are listed by kind: self-supervised (selfsup "
                        "pretrain) and semi-supervised (selfsup semisup, fit --semisup-method)")
    ls.add_argument("what", choices=["methods", "backbones", "datasets", "presets"])
    ls.set_defaults(func=_cmd_list)

    dm = sub.add_parser("demo", help="SimCLR on the bundled digits vs random-init vs raw pixels",
                        description="Pretrains SimCLR on scikit-learn's bundled digits (no "
                        "download), then compares linear-probe and kNN accuracy with a few labels "
                        "per class against a random-init encoder and raw pixels.")
    dm.add_argument("--out", "-o", default=None, help="run directory (default runs/demo-<time>)")
    dm.add_argument("--labels-per-class", type=int, default=5)
    dm.add_argument("--steps", type=int, default=300)
    dm.set_defaults(func=_cmd_demo)

    from .chem.cli import add_parsers as add_chem_parsers

    add_chem_parsers(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    # overrides may come before or after options (argparse stops positionals at an option)
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "func", None) is None:     # bare `selfsup` (or `selfsup chem`): help
        (getattr(args, "_parser", None) or parser).print_help()
        return 0
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("selfsup: interrupted; re-run the same command to resume from the last checkpoint",
              file=sys.stderr)
        return 130
    except Exception as e:
        # user-facing errors: one line, no traceback (imported here, only when something failed,
        # so that a mistyped folder is answered before torch is imported)
        from .data.sources import DataError

        if isinstance(e, DataError):      # without importing torch
            print(f"selfsup: error: {e}", file=sys.stderr)
            return 2
        from .config import ConfigError
        from .pretrain import RunDirError
        from .registry import UnknownNameError
        from .backbones.external import InitError
        from .rundir import RunFileError
        from .train.checkpoint import DamagedCheckpointError, UnsafeCheckpointError
        from .train.loop import NonFiniteLossError

        if isinstance(e, (ConfigError, DataError, RunDirError, UnknownNameError, RunFileError,
                          UnsafeCheckpointError, DamagedCheckpointError, NonFiniteLossError,
                          InitError)):
            print(f"selfsup: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
