"""``selfsup chem ...``: molecule design with an oracle budget, and the apprentice's pretraining."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from pathlib import Path

from .. import rundir
from .objectives import OBJECTIVES


class ChemError(ValueError):
    """A user-facing error of the chem commands (printed without a traceback)."""


def add_parsers(sub) -> None:
    chem = sub.add_parser("chem", help="molecules: design with GEGL / GA under an oracle budget")
    csub = chem.add_subparsers(dest="chem_command", metavar="COMMAND")
    chem.set_defaults(func=None, _parser=chem)   # bare `selfsup chem` prints this help

    d = csub.add_parser("design", help="optimise an objective with an oracle-call budget",
                        description="Search for molecules maximising an objective, counting every "
                        "call of the objective (the oracle). Writes OUT/molecules.csv (best "
                        "molecules with scores), OUT/history.csv (every scored molecule in order), "
                        "OUT/summary.json (top-1, top-10 mean, AUC of top-10 vs calls) and "
                        "OUT/best.png (a picture grid).")
    d.add_argument("--objective", default="qed", choices=sorted(OBJECTIVES))
    d.add_argument("--budget", type=int, default=1000, help="oracle calls (distinct molecules)")
    d.add_argument("--method", default="gegl",
                   choices=["gegl", "gbga", "ga", "apprentice", "random"],
                   help="gegl = apprentice + genetic expert; gbga = the standard graph GA "
                   "(GB-GA with PMO's settings: 120 random start molecules from --start, "
                   "population 120, offspring 70, mutation 0.067); ga = this project's first "
                   "graph GA (--start-size, --queue, --offspring); apprentice = hill climbing "
                   "without the expert; random = samples of the apprentice")
    d.add_argument("--apprentice", default=None,
                   help="a pretrained apprentice (.pt from `selfsup chem pretrain-apprentice`); "
                   "needed by gegl, apprentice and random")
    d.add_argument("--start", default=None,
                   help="SMILES file (.txt/.gz) whose molecules seed the GA (ga only)")
    d.add_argument("--start-size", type=int, default=1000, help="molecules read from --start")
    d.add_argument("--alerts", default=None,
                   help="structural-alert CSV: molecules breaking an alert score 0")
    d.add_argument("--samples", type=int, default=512, help="apprentice samples per round")
    d.add_argument("--offspring", type=int, default=512, help="expert / GA offspring per round")
    d.add_argument("--queue", type=int, default=1024, help="priority-queue size (GA population)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", "-o", default=None, help="output folder (default runs/chem-<time>)")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    d.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    d.set_defaults(func=cmd_design)

    p = csub.add_parser("pretrain-apprentice", help="train the SMILES LSTM on a corpus",
                        description="Maximum-likelihood training of the apprentice on a SMILES "
                        "corpus (e.g. ZINC 250k). Checkpoints every --checkpoint-every steps to "
                        "OUT.ckpt; re-running the same command resumes. Reports the validity of "
                        "--validity-samples samples at the end (OUT.json).")
    p.add_argument("--corpus", required=True, help="SMILES file (.txt or .txt.gz)")
    p.add_argument("--limit", type=int, default=0, help="use the first N molecules (0 = all)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="constant lr, or cosine decay from --lr to --lr-min over --steps")
    p.add_argument("--lr-min", type=float, default=0.0, help="the cosine schedule's last lr")
    p.add_argument("--init", default=None, metavar="APPRENTICE.pt",
                   help="start from this apprentice's weights, vocabulary and size (a new run: "
                   "fresh optimizer, steps counted from 0); --hidden/--layers are then ignored")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--no-bucket", dest="bucket", action="store_false",
                   help="draw batches uniformly instead of as windows of similar-length SMILES "
                   "(length bucketing, the default: less padding, 1.3-1.6x faster per step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", "-o", required=True, help="the apprentice file to write (.pt)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--validity-samples", type=int, default=1024,
                   help="SMILES sampled at the end to measure the share that RDKit parses")
    p.set_defaults(func=cmd_pretrain_apprentice)

    rt = csub.add_parser("retro-train", help="train the single-step retrosynthesis model "
                         "(and optionally improve it with its own routes)",
                         description="Extract rdchiral templates from atom-mapped reactions, "
                         "train the fingerprint-MLP single-step model, write OUT/templates.json, "
                         "OUT/single_step.safetensors and OUT/building_blocks.txt (the reactant "
                         "side of --reactions and --extra-reactions, minus every target). With "
                         "--rounds R and --targets, run R rounds of self-improvement (Kim et al.: "
                         "search the targets, keep the route reactions the first model backs "
                         "with top-5 and score >= 0.8, add a forward model's validated "
                         "products of their reactants, fine-tune the first model on them), "
                         "measuring the success rate on --eval-targets; OUT/history.json has one "
                         "row per round. Evaluate on targets whose own recorded reactions are not "
                         "in --extra-reactions, or their reactants are building blocks and "
                         "planning is a lookup.")
    rt.add_argument("--reactions", required=True, help="USPTO-style CSV: id,class,"
                    "reactants>reagents>production (atom-mapped); the training reactions")
    rt.add_argument("--extra-reactions", default=None, help="more reactions whose reactants "
                    "are building blocks (not trained on)")
    rt.add_argument("--targets", default=None, help="SMILES file: self-improvement targets")
    rt.add_argument("--eval-targets", default=None, help="SMILES file: held-out targets")
    rt.add_argument("--n-targets", type=int, default=200, help="targets read from each file")
    rt.add_argument("--rounds", type=int, default=0)
    rt.add_argument("--expansions", type=int, default=50, help="search budget per target")
    rt.add_argument("--epochs", type=int, default=30)
    rt.add_argument("--round-epochs", type=int, default=20, help="fine-tuning epochs per round "
                    "(Kim et al.: 20)")
    rt.add_argument("--round-lr", type=float, default=1e-4, help="fine-tuning learning rate per "
                    "round (kim recipe; Kim et al.: 1e-4)")
    rt.add_argument("--recipe", choices=["kim", "union"], default="kim",
                    help="kim: confident route reactions, fine-tune the first model on them; "
                    "union: every route reaction added to the data, keep training")
    rt.add_argument("--augment", choices=["forward", "none"], default="forward",
                    help="forward (Kim et al.): a forward model trained on --reactions adds, for "
                    "each kept route reaction, the products it predicts from its reactants "
                    "with score >= 0.8 that the first model's top template confirms (written "
                    "to OUT/forward); none: route reactions only")
    rt.add_argument("--seed", type=int, default=0)
    rt.add_argument("--out", "-o", required=True)
    rt.add_argument("--overwrite", action="store_true")
    rt.set_defaults(func=cmd_retro_train)

    rr = csub.add_parser("retro", help="plan a route for one molecule",
                         description="Best-first search down to the model's building blocks; "
                         "prints the route tree and saves it as an image and JSON.")
    rr.add_argument("smiles")
    rr.add_argument("--model", "-m", required=True, help="a `selfsup chem retro-train` folder "
                    "(or one of its roundN sub-folders)")
    rr.add_argument("--expansions", type=int, default=100)
    rr.add_argument("--max-depth", type=int, default=6)
    rr.add_argument("--out", "-o", default="route.png", help="route image (JSON beside it)")
    rr.set_defaults(func=cmd_retro)


def _out_dir(path: str | None, overwrite: bool) -> Path:
    out = Path(path or f"runs/chem-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise ChemError(f"{out}: exists and is not a folder")
    finished = rundir.is_run(out) and (out / "summary.json").exists()
    if out.is_dir() and any(p.name not in (rundir.MARKER, rundir.LOCK) for p in out.iterdir()):
        if not overwrite or not finished:
            raise ChemError(f"{out}: not empty; choose another --out"
                            + (" or pass --overwrite" if finished else
                               " (only a finished selfsup chem folder can be overwritten)"))
        rundir.remove(out, keep=(rundir.LOCK, rundir.MARKER))
    try:
        rundir.create(out, "chem")
    except rundir.RunFileError as e:
        raise ChemError(str(e)) from None
    return out


def _write_csv(path: Path, header: list[str], rows) -> None:
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    rundir.write_text(path, buf.getvalue())


def draw_grid(molecules: list[tuple[str, float]], path: Path, per_row: int = 4) -> None:
    from rdkit.Chem import Draw

    from .molecules import to_mol

    mols = [to_mol(s) for s, _ in molecules]
    img = Draw.MolsToGridImage(mols, molsPerRow=per_row, subImgSize=(260, 220),
                               legends=[f"#{i + 1}  {v:.3f}" for i, (_, v) in enumerate(molecules)])
    with rundir.atomic_path(path) as tmp:
        img.save(str(tmp), format="PNG")


def cmd_design(args) -> int:
    import torch
    from tqdm import tqdm

    from .ga import graph_ga
    from .gegl import GEGLConfig, gegl
    from .molecules import read_smiles
    from .objectives import SMILES_LENGTH_CAP, AlertFilter, get_objective
    from .oracle import Oracle

    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.method in ("ga", "gbga") and not args.start:
            raise ChemError(f"--method {args.method} needs --start SMILES_FILE (the library its "
                            f"first population is drawn from)")
        if args.method not in ("ga", "gbga") and not args.apprentice:
            raise ChemError(f"--method {args.method} needs --apprentice FILE.pt (train one with "
                            f"`selfsup chem pretrain-apprentice --corpus ZINC -o FILE.pt`)")
        alerts = AlertFilter(args.alerts) if args.alerts else None
        oracle = Oracle(get_objective(args.objective), args.budget, alerts,
                        max_smiles_length=SMILES_LENGTH_CAP.get(args.objective))
        out = _out_dir(args.out, args.overwrite)
        bar = tqdm(total=args.budget, desc=f"{args.method} {args.objective}", unit="call",
                   file=sys.stderr)

        def tick(*_):
            bar.update(oracle.calls - bar.n)
            bar.set_postfix(best=f"{oracle.metrics()['top1']:.3f}")

        t0 = time.time()
        extra = {}
        if args.method == "gbga":
            from .gbga import gb_ga

            gb_ga(oracle, read_smiles(args.start), seed=args.seed, on_generation=tick)
        elif args.method == "ga":
            start = read_smiles(args.start, limit=args.start_size)
            graph_ga(oracle, start, population_size=args.queue, offspring=args.offspring,
                     seed=args.seed, on_generation=tick)
        else:
            from .apprentice import SmilesLSTM

            model = SmilesLSTM.load(args.apprentice)
            cfg = GEGLConfig(samples=args.samples, offspring=args.offspring, queue_size=args.queue)
            res = gegl(oracle, model, cfg, mode=args.method, seed=args.seed, on_round=tick)
            extra = {"rounds": res["rounds"], "validity": res["validity"], "stopped": res["stopped"]}
        tick()
        bar.close()
    except (FileNotFoundError, ValueError) as e:
        print(f"selfsup chem: error: {e}", file=sys.stderr)
        return 2
    best = oracle.best(100)
    _write_csv(out / "molecules.csv", ["rank", "smiles", "score"],
               [(i + 1, s, f"{v:.6f}") for i, (s, v) in enumerate(best)])
    _write_csv(out / "history.csv", ["call", "smiles", "score"],
               [(i + 1, s, f"{v:.6f}") for i, (s, v) in enumerate(oracle.history)])
    if best:
        draw_grid(best[:12], out / "best.png")
    summary = {"objective": args.objective, "method": args.method, "budget": args.budget,
               "seed": args.seed, **oracle.metrics(), **extra,
               "seconds": round(time.time() - t0, 1), "best": best[:10]}
    rundir.write_json(out / "summary.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "best"}, indent=1))
    print(f"best molecules: {out / 'molecules.csv'}")
    return 0


def cmd_pretrain_apprentice(args) -> int:
    import torch

    from .apprentice import (ApprenticeConfig, SmilesLSTM, Vocab, pretrain_on_corpus,
                             sample_valid)
    from .molecules import read_smiles

    out = Path(args.out)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        corpus = read_smiles(args.corpus, limit=args.limit or None)
        if len(corpus) < 10:
            raise ChemError(f"{args.corpus}: only {len(corpus)} SMILES; need a corpus")
        out.parent.mkdir(parents=True, exist_ok=True)   # before any training, not at step 100
        torch.manual_seed(args.seed)
        if args.init:
            model = SmilesLSTM.load(args.init)
            init_sha = hashlib.sha256(Path(args.init).read_bytes()).hexdigest()
        else:
            init_sha = None
            model = SmilesLSTM(Vocab.from_smiles(corpus),
                               ApprenticeConfig(hidden_dim=args.hidden, layers=args.layers))
        settings = {"corpus": str(args.corpus), "limit": args.limit,
                    "hidden": model.cfg.hidden_dim, "layers": model.cfg.layers,
                    "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                    "bucket": args.bucket}
        if args.lr_schedule != "constant":   # recorded only when used: older checkpoints resume
            settings.update(lr_schedule=args.lr_schedule, lr_min=args.lr_min, steps=args.steps)
        if init_sha:
            settings.update(init=str(args.init), init_sha256=init_sha)
        step = pretrain_on_corpus(model, corpus, out.with_name(out.name + ".ckpt"), settings,
                                  steps=args.steps, checkpoint_every=args.checkpoint_every)
    except (OSError, ValueError) as e:
        print(f"selfsup chem: error: {e}", file=sys.stderr)
        return 2
    model.save(out)
    n = max(1, args.validity_samples)
    _, validity = sample_valid(model, n, torch.Generator().manual_seed(args.seed))
    info = {"apprentice": str(out), "steps": step, "corpus_size": len(corpus),
            "vocab": len(model.vocab), "validity": validity, "validity_samples": n,
            "settings": settings}
    rundir.write_json(out.with_suffix(".json"), info)
    print(json.dumps(info, indent=1))
    return 0


def _read_targets(path, n):
    from .molecules import canonical, read_smiles

    out = []
    for s in read_smiles(path):
        c = canonical(s)
        if c and c not in out:
            out.append(c)
        if len(out) >= n:
            break
    return out


def cmd_retro_train(args) -> int:
    import torch

    from .planning import building_blocks_from, self_improve
    from .retro import (SingleStep, TemplateLibrary, fit_forward, read_reactions,
                        single_step_accuracy)

    try:
        torch.manual_seed(args.seed)
        out = _out_dir(args.out, args.overwrite)
        train = read_reactions(args.reactions)
        extra = read_reactions(args.extra_reactions) if args.extra_reactions else []
        if args.rounds and not (args.targets and args.eval_targets):
            raise ChemError("--rounds needs --targets and --eval-targets (SMILES files)")
        targets = _read_targets(args.targets, args.n_targets) if args.targets else []
        eval_targets = _read_targets(args.eval_targets, args.n_targets) if args.eval_targets \
            else []
        overlap = set(targets) & set(eval_targets)
        targets = [t for t in targets if t not in overlap]   # held-out stays held out
    except (FileNotFoundError, ValueError) as e:
        print(f"selfsup chem: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(train)} training reactions; extracting templates ...", file=sys.stderr)
    lib, labels = TemplateLibrary.from_reactions(train)
    products = [r.product for r in train]
    model = SingleStep(lib)
    losses = model.fit(products, labels, epochs=args.epochs, seed=args.seed)
    bbs = building_blocks_from(train + extra, set(targets) | set(eval_targets))
    model.save(out)
    rundir.write_text(out / "building_blocks.txt", "\n".join(sorted(bbs)) + "\n")
    info = {"reactions": len(train), "templates": len(lib),
            "with_template": int(sum(x >= 0 for x in labels)), "building_blocks": len(bbs),
            "final_loss": losses[-1]}
    if extra:
        info.update({f"extra_{k}": v for k, v in single_step_accuracy(model, extra[:500]).items()})
    if args.rounds:
        forward = None
        if args.augment == "forward" and args.recipe == "kim":
            print("training the forward model (reaction augmentation) ...", file=sys.stderr)
            forward = fit_forward(train, lib, labels, epochs=args.epochs, seed=args.seed)
            forward.save(out / "forward")
        history = self_improve(model, products, labels, targets, eval_targets, bbs, args.rounds,
                               args.expansions, args.round_epochs, args.seed,
                               on_round=lambda row: print(json.dumps(row), file=sys.stderr),
                               save_dir=out, recipe=args.recipe, lr=args.round_lr,
                               forward=forward)
        rundir.write_json(out / "history.json", history)
        info["history"] = history
    rundir.write_json(out / "summary.json", info)
    print(json.dumps(info, indent=1))
    return 0


def cmd_retro(args) -> int:
    from .molecules import canonical
    from .planning import draw_route, plan
    from .retro import SingleStep

    try:
        folder = Path(args.model)
        model = SingleStep.load(folder)
        bb_file = folder / "building_blocks.txt"
        if not bb_file.exists():
            bb_file = folder.parent / "building_blocks.txt"
        if not bb_file.exists():
            raise ChemError(f"{folder}: no building_blocks.txt beside the model")
        bbs = set(bb_file.read_text().split())
        if canonical(args.smiles) is None:
            raise ChemError(f"{args.smiles!r} is not a valid SMILES")
        route, stats = plan(args.smiles, model, bbs, args.expansions, args.max_depth)
    except (FileNotFoundError, ValueError) as e:
        print(f"selfsup chem: error: {e}", file=sys.stderr)
        return 2
    if route is None:
        print(f"no route found within {args.expansions} expansions ({stats['states']} partial "
              f"routes searched)")
        return 1
    print(route.tree(bbs))
    print(f"solved: {len(route.steps)} reactions, cost {route.cost:.2f}, "
          f"{stats['expansions']} expansions")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_route(route, out)
    rundir.write_json(out.with_suffix(".json"), route.to_dict())
    print(f"route image: {out}")
    return 0
