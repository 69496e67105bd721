"""Turn benchmarks/results/cifar10_protocol.jsonl into the Markdown tables of BENCHMARKS.md
(mean ± std over seeds; population std, as numpy's default).

    python benchmarks/summarize.py [--results benchmarks/results/cifar10_protocol.jsonl]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

LABELS = {
    "simclr": "SimCLR (crop + colour, MLP head)",
    "random": "random-init encoder",
    "raw": "raw pixels (3,072-d)",
    "crop_only": "SimCLR, crop only (no colour jitter/grayscale)",
    "color_only": "SimCLR, colour only (no crop)",
    "head_linear": "SimCLR, linear head",
    "head_none": "SimCLR, no head",
    "mocov2": "MoCo v2", "byol": "BYOL", "simsiam": "SimSiam", "barlow_twins": "Barlow Twins",
    "vicreg": "VICReg", "swav": "SwAV (2+2 crops)", "dino": "DINO (2+2 crops), old preset: no head BN, tt 0.04->0.07",
    "dino_head_bn": "DINO (2+2 crops), head BN, tt 0.04 (preset until 2026-12-02)",
    "dino_matched": "DINO, BYOL's two views and optimizer (preset since 2026-12-02)",
    "deepcluster_v2": "DeepCluster-v2", "supcon": "SupCon (uses all labels)",
    "dino_sgd": "DINO, official ResNet recipe (SGD, teacher temp 0.04)",
    "simsiam_no_sg": "SimSiam without stop-gradient",
    "supcon_labeled": "SupCon, labels of the labeled split (1,000/class)",
    "ce_labeled": "cross-entropy, same 1,000 labels/class",
    "simclr_augself": "SimCLR + AugSelf (crop + colour, lambda 1)",
    "rotnet": "RotNet (4 rotations)", "rotnet_stage2": "RotNet, read at stage 2",
    "rotnet_stage3": "RotNet, read at stage 3", "jigsaw": "Jigsaw (3x3, 100 permutations)",
    "jigsaw_stage3": "Jigsaw, stage 3", "relative_position": "relative patch position",
    "relative_position_stage3": "relative patch position, stage 3",
    "colorization": "colorization (L -> ab classes)", "colorization_stage3": "colorization, stage 3",
    "inpainting": "context-encoder inpainting", "inpainting_stage3": "inpainting, stage 3",
    "denoising_ae": "denoising autoencoder (25% masking)",
    "denoising_ae_stage3": "denoising autoencoder, stage 3",
    "vae": "VAE (beta 1)", "vae_stage3": "VAE, stage 3",
    "mae": "MAE, ViT-Tiny/4 (linear probe: own backbone)",
    "igpt": "iGPT-style masked colour tokens (16 px, own transformer)",
}
METHODS = ["random", "simclr", "mocov2", "byol", "simsiam", "simsiam_no_sg", "barlow_twins",
           "vicreg", "swav",
           "dino", "dino_head_bn", "dino_sgd", "deepcluster_v2", "supcon"]
TABLES = {
    "Pretraining vs baselines": ["simclr", "random", "raw"],
    "Claim: crop + colour beats either alone": ["simclr", "crop_only", "color_only"],
    "Claim: an MLP projection head beats none / linear": ["simclr", "head_linear", "head_none"],
    "Claim: SimSiam collapses without its stop-gradient": ["simsiam", "simsiam_no_sg"],
    "Claim: SupCon >= cross-entropy on the same labels": ["supcon_labeled", "ce_labeled",
                                                          "supcon"],
    "Claim: AugSelf keeps (or improves) CIFAR-10 accuracy": ["simclr", "simclr_augself"],
}


def _mean_std(values, scale: float = 1.0, digits: int = 3) -> str:
    v = np.array(values, dtype=float) * scale
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def fmt(values) -> str:
    return _mean_std(values, 100, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", default="benchmarks/results/cifar10_protocol.jsonl")
    a = ap.parse_args()
    rows = [json.loads(x) for x in open(a.results) if x.strip()]
    latest = {}  # the results file is append-only: a re-run of (variant, seed) replaces the old row
    for r in rows:
        latest[(r["variant"], r["seed"])] = r
    by = defaultdict(list)
    for (v, _), r in sorted(latest.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        by[v].append(r)
    for title, variants in TABLES.items():
        print(f"\n**{title}**\n")
        print("| features | seeds | kNN k=200 % | kNN k=20 % | linear % | embed std (healthy) | eff. rank | train img/s |")
        print("|---|---|---|---|---|---|---|---|")
        for v in variants:
            rs = by.get(v, [])
            if not rs:
                print(f"| {LABELS[v]} | – | not run | | | | | |")
                continue
            seeds = ",".join(str(r["seed"]) for r in rs)
            ips = [r["images_per_s"] for r in rs if "images_per_s" in r and r["seed"] == 0]
            std = np.mean([r["embed_std"] for r in rs])
            healthy = rs[0]["embed_std_healthy"]
            ips_s = f"{np.mean(ips):.0f}" if ips else "–"
            print(f"| {LABELS[v]} | {seeds} | {fmt([r['knn200_acc'] for r in rs])} | "
                  f"{fmt([r['knn20_acc'] for r in rs])} | {fmt([r['linear_acc'] for r in rs])} | "
                  f"{std:.4f} ({healthy:.4f}) | {np.mean([r['effective_rank'] for r in rs]):.1f} | "
                  f"{ips_s} |")
    print("\n**Joint-embedding methods at the same budget** (collapse metrics of the method's own "
          "output embeddings on the last batch: std of l2-normalised embeddings vs its healthy "
          "1/sqrt(d), and effective rank)\n")
    print("| method | seeds | kNN k=200 % | kNN k=20 % | linear % | train img/s | z std (healthy) | z eff. rank | collapsed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for v in METHODS:
        rs = by.get(v, [])
        if not rs:
            continue
        seeds = ",".join(str(r["seed"]) for r in rs)
        # throughput from seed 0 only: those runs had the machine to themselves
        ips = [r["images_per_s"] for r in rs if "images_per_s" in r and r["seed"] == 0]
        zs = [r["z_std"] for r in rs if r.get("z_std") is not None]
        zr = [r["z_rank"] for r in rs if r.get("z_rank") is not None]
        healthy = next((r["z_std_healthy"] for r in rs if r.get("z_std_healthy")), None)
        z_s = f"{np.mean(zs):.4f} ({healthy:.4f})" if zs else "–"
        col = ",".join(str(r["collapsed"]).lower() for r in rs if "collapsed" in r) or "–"
        print(f"| {LABELS[v]} | {seeds} | {fmt([r['knn200_acc'] for r in rs])} | "
              f"{fmt([r['knn20_acc'] for r in rs])} | {fmt([r['linear_acc'] for r in rs])} | "
              f"{f'{np.mean(ips):.0f}' if ips else '–'} | {z_s} | "
              f"{f'{np.mean(zr):.1f}' if zr else '–'} | {col} |")

    pretext_table(by)
    semisup_tables()
    issue6_tables()
    chem_tables()


PRETEXT = ["random", "simclr", "rotnet", "rotnet_stage2", "rotnet_stage3", "jigsaw",
           "jigsaw_stage3", "relative_position", "relative_position_stage3", "colorization",
           "colorization_stage3", "inpainting", "inpainting_stage3", "denoising_ae",
           "denoising_ae_stage3", "vae", "vae_stage3", "mae", "igpt"]


FT_LABELS = {"mae_finetune": "MAE-pretrained, fine-tuned",
             "vit_scratch_finetune": "random init, same fine-tuning"}


def pretext_table(by) -> None:
    if not any(v in by for v in PRETEXT[2:]):
        return
    print("\n**Pretext and generative tasks at the same budget** (`_stageK`: the same run's "
          "convnet read after stage K of 4)\n")
    print("| method | seeds | kNN k=200 % | kNN k=20 % | linear % | train img/s |")
    print("|---|---|---|---|---|---|")
    for v in PRETEXT:
        rs = by.get(v, [])
        if not rs:
            continue
        seeds = ",".join(str(r["seed"]) for r in rs)
        ips = [r["images_per_s"] for r in rs if "images_per_s" in r and r["seed"] == 0]
        print(f"| {LABELS.get(v, v)} | {seeds} | {fmt([r['knn200_acc'] for r in rs])} | "
              f"{fmt([r['knn20_acc'] for r in rs])} | {fmt([r['linear_acc'] for r in rs])} | "
              f"{f'{np.mean(ips):.0f}' if ips else '–'} |")
    ft = {v: by.get(v, []) for v in ("mae_finetune", "vit_scratch_finetune")}
    if any(ft.values()):
        print("\n| ViT-Tiny/4 (width 0.5) fine-tuned on 1,000 labels per class | seeds | test % "
              "(final) | test % (at best val) |")
        print("|---|---|---|---|")
        for v, rs in ft.items():
            if rs:
                print(f"| {FT_LABELS[v]} | {','.join(str(r['seed']) for r in rs)} | "
                      f"{fmt([r['finetune_acc'] for r in rs])} | "
                      f"{fmt([r['finetune_acc_at_best_val'] for r in rs])} |")


SEMI_LABELS = {
    "supervised": "labels only",
    "pl_lee2013": "Pseudo-Label, Lee 2013 (no threshold, alpha(t))",
    "pl_oliver2018": "Pseudo-Label, thresholded 0.95 + ramp (Oliver 2018)",
    "fixmatch": "FixMatch",
    "noisy_student_round0": "Noisy Student teacher (= labels only)",
    "noisy_student_round1": "Noisy Student, round 1",
    "noisy_student_round2": "Noisy Student, round 2",
    "mpl_no_finetune": "Meta Pseudo Labels (student, before fine-tuning)",
    "mpl": "Meta Pseudo Labels (+ fine-tune on labels)",
    "simclr_finetune": "SimCLR + fine-tune on labels",
    "simclr_fixmatch": "SimCLR init + FixMatch",
    "distill": "KD: same-size student of the FixMatch model",
}


def semisup_tables(path: str = "benchmarks/results/cifar10_semisup.jsonl") -> None:
    import os

    if not os.path.exists(path):
        return
    rows = [json.loads(x) for x in open(path) if x.strip()]
    latest = {}
    for r in rows:  # a re-run of the same (variant, labels, seed) replaces the older row
        latest[(r["variant"], r["labels"], r["seed"])] = r
    labels = sorted({k[1] for k in latest})
    print("\n**Semi-supervised, CIFAR-10 CPU protocol** (test accuracy %, EMA model; final / "
          "median of the last evaluations (eval.median_last) / at the best validation accuracy)\n")
    head = " | ".join(f"{n} labels: final | median last | at best val" for n in labels)
    print(f"| method | seeds | {head} | s/run |")
    print("|---|---|" + "---|---|---|" * len(labels) + "---|")
    for v, name in SEMI_LABELS.items():
        cells, seeds, secs = [], set(), []
        for n in labels:
            rs = [r for (vv, ll, _), r in sorted(latest.items()) if vv == v and ll == n]
            seeds |= {r["seed"] for r in rs}
            secs += [r["seconds"] for r in rs if r.get("seconds")]
            if not rs:
                cells.append("– | – | –")
                continue
            get = lambda k: [r[k] for r in rs if k in r]  # noqa: E731
            cells.append(" | ".join(fmt(get(k)) if get(k) else "–" for k in (
                "test_acc_final", "test_acc_median_last", "test_acc_at_best_val")))
        if not seeds:
            continue
        s = ",".join(str(x) for x in sorted(seeds))
        print(f"| {name} | {s} | {' | '.join(cells)} | {f'{np.mean(secs):.0f}' if secs else '–'} |")


def _latest(path: str, key) -> dict:
    import os

    if not os.path.exists(path):
        return {}
    latest = {}
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            latest[key(r)] = r   # append-only files: a re-run replaces the older row
    return latest


SLA_LABELS = {("baseline", "head"): "supervised baseline",
              ("da", "head"): "rotation as label-preserving augmentation (DA)",
              ("mt", "head"): "multi-task: class head + rotation head (MT)",
              ("sla", "joint_single"): "SLA + single inference (SI)",
              ("sla", "aggregated"): "SLA + aggregated inference (AG)",
              ("sla_sd", "head"): "SLA + self-distillation (SD, single head)",
              ("sla_sd", "aggregated"): "SLA+SD model, joint head aggregated"}


def issue6_tables() -> None:
    sla = _latest("benchmarks/results/cifar10_sla.jsonl",
                  lambda r: (r["variant"], r["inference"], r["labels"], r["seed"]))
    if sla:
        print("\n**SLA on CIFAR-10 labels** (rotation, M = 4; test accuracy %, EMA model)\n")
        print("| variant | labels | seeds | test acc % | train img/s (seed 0) |")
        print("|---|---|---|---|---|")
        for (v, inf), name in SLA_LABELS.items():
            for n in sorted({k[2] for k in sla}):
                rs = [r for k, r in sorted(sla.items()) if k[:3] == (v, inf, n)]
                if rs:
                    ips = [r["images_per_s"] for r in rs if r["seed"] == 0 and r.get("images_per_s")]
                    print(f"| {name} | {n} | {','.join(str(r['seed']) for r in rs)} | "
                          f"{fmt([r['test_acc'] for r in rs])} | "
                          f"{f'{np.mean(ips):.0f}' if ips else '–'} |")
    hue = _latest("benchmarks/results/augself_color.jsonl", lambda r: (r["variant"], r["seed"]))
    if hue:
        names = {"raw": "raw pixels", "random": "random-init encoder", "simclr": "SimCLR",
                 "simclr_augself": "SimCLR + AugSelf"}
        maj = next(iter(hue.values()))["majority"]
        print(f"\n**AugSelf: dominant-hue task** (6 hue sectors; linear probe accuracy %, "
              f"majority class {maj * 100:.1f}%)\n")
        print("| features | seeds | hue accuracy % |")
        print("|---|---|---|")
        for v, name in names.items():
            rs = [r for k, r in sorted(hue.items()) if k[0] == v]
            if rs:
                print(f"| {name} | {','.join(str(r['seed']) for r in rs)} | "
                      f"{fmt([r['hue_acc'] for r in rs])} |")
    dense = _latest("benchmarks/results/dense_selfpatch.jsonl", lambda r: (r["variant"], r["seed"]))
    if dense:
        names = {"random": "random-init ViT", "dino": "DINO", "selfpatch": "DINO + SelfPatch"}
        print("\n**SelfPatch: dense task on CIFAR-10 mosaics** (linear probe on frozen patch "
              "tokens; patch accuracy and mean IoU %)\n")
        print("| features | seeds | patch acc % | mIoU % | train img/s (seed 0) |")
        print("|---|---|---|---|---|")
        for v, name in names.items():
            rs = [r for k, r in sorted(dense.items()) if k[0] == v]
            if rs:
                ips = [r["images_per_s"] for r in rs if r["seed"] == 0 and r.get("images_per_s")]
                print(f"| {name} | {','.join(str(r['seed']) for r in rs)} | "
                      f"{fmt([r['patch_acc'] for r in rs])} | {fmt([r['patch_miou'] for r in rs])} | "
                      f"{f'{np.mean(ips):.0f}' if ips else '–'} |")


CHEM_METHODS = {"gegl": "GEGL (apprentice + GA expert)",
                "gbga": "standard graph GA (GB-GA, PMO settings)",
                "ga": "graph GA alone (this project's first settings)",
                "apprentice": "apprentice hill-climbing alone", "random": "apprentice sampling, no training"}


def chem_tables() -> None:
    design = _latest("benchmarks/results/chem_design.jsonl",
                     lambda r: (r["objective"], r["method"], r["budget"], r["seed"]))
    if design:
        print("\n**GEGL vs its baselines at equal oracle budgets** (mean ± std over seeds; "
              "AUC: mean top-10 score over the calls so far, averaged over the budget)\n")
        print("| objective | calls | method | seeds | top-1 | top-10 mean | AUC top-10 |")
        print("|---|---|---|---|---|---|---|")
        for obj in dict.fromkeys(k[0] for k in design):
            for b in sorted({k[2] for k in design if k[0] == obj}):
                for m, name in CHEM_METHODS.items():
                    rs = [r for k, r in sorted(design.items()) if k[:3] == (obj, m, b)]
                    if rs:
                        print(f"| {obj} | {b} | {name} | {','.join(str(r['seed']) for r in rs)} | "
                              f"{_mean_std([r['top1'] for r in rs])} | "
                              f"{_mean_std([r['top10_mean'] for r in rs])} | "
                              f"{_mean_std([r['auc_top10'] for r in rs])} |")
    retro = _latest("benchmarks/results/chem_retro.jsonl",
                    lambda r: (r["kind"], r["seed"], r.get("round")))
    single = [r for k, r in sorted(retro.items()) if k[0] == "single_step"]
    if single:
        r0 = single[0]
        print(f"\n**Single-step retrosynthesis** (fingerprint MLP over {r0['templates']} templates "
              f"from the {r0['train_reactions']} validation reactions; USPTO-50k test split)\n")
        print("| test reactions | seeds | top-1 % | top-10 % |")
        print("|---|---|---|---|")
        for n in sorted({r["test_reactions"] for r in single}, reverse=True):
            rs = [r for r in single if r["test_reactions"] == n]
            print(f"| {n} | {','.join(str(r['seed']) for r in rs)} | "
                  f"{_mean_std([r['top1'] for r in rs], 100, 1)} | "
                  f"{_mean_std([r['top10'] for r in rs], 100, 1)} |")
    rounds = sorted({k[2] for k in retro if k[0] in ("self_improve", "control")})
    if rounds:
        print("\n**Planning success on held-out targets** (same expansion budget; % solved)\n")
        print("| round | seeds | self-improved % | control (same fine-tuning, original data) % |")
        print("|---|---|---|---|")
        for rd in rounds:
            si = [r for k, r in sorted(retro.items()) if k[0] == "self_improve" and k[2] == rd]
            co = [r for k, r in sorted(retro.items()) if k[0] == "control" and k[2] == rd]
            print(f"| {rd} | {','.join(str(r['seed']) for r in si)} | "
                  f"{_mean_std([r['eval_success'] for r in si], 100, 1) if si else '–'} | "
                  f"{_mean_std([r['eval_success'] for r in co], 100, 1) if co else '–'} |")


if __name__ == "__main__":
    main()
