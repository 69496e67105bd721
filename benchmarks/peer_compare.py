"""selfsup and the peer library (lightly) side by side, alternately, in one invocation (issue 20).

Ratios, not absolute figures alone: every round runs both programs back to back (the order
alternates round by round: selfsup first on even rounds, the peer first on odd ones), with the load
average recorded before each run, and the ratio is taken within the round.

  throughput   images/s of SimCLR, ResNet-18 width 0.25 (CIFAR stem), batch 256, 2 threads:
               selfsup's benchmarks/throughput.py (one run per --precision) against
               ../shared/bench/peer_lightly_simclr.py (lightly's CIFAR-10 recipe, its DataLoader
               with --workers processes).
  tta          time to accuracy: each library trains SimCLR with its own CIFAR-10 recipe for
               --epochs; snapshots every --snap-every steps (the clock stops while they are taken)
               are scored by one function, selfsup's kNN (k=200, t=0.1, cosine) with the
               protocol's evaluation: 1,000 labelled training images per class (chosen by --seed)
               as the bank, all 10,000 test images as queries. Reported: training seconds until
               the first snapshot at or above each --thresholds accuracy.

The peer runs in its own venv (``bash ../shared/bench/peers_setup.sh VENV``); selfsup never imports
it. One heavy process at a time: run nothing else on the machine meanwhile.

    python benchmarks/peer_compare.py throughput --data ../shared/datasets/cifar10-jpeg.tar.gz \\
        --peer-venv /tmp/peer-venv --rounds 3 --precision fp32 bf16
    python benchmarks/peer_compare.py tta --data ../shared/datasets/cifar10-jpeg.tar.gz \\
        --peer-venv /tmp/peer-venv --rounds 3 --epochs 2 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BENCH = ROOT.parent / "shared" / "bench"


VARIANTS = ["fp32", "bf16", "fp32-compile", "bf16-compile"]


def variant_args(variant: str) -> list[str]:
    return ["--precision", variant.split("-")[0], *(["--compile"] if "compile" in variant else [])]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_json(cmd: list[str], log: Path) -> dict:
    """Run ``cmd``; its stdout's last JSON object is the result (stderr goes to ``log``)."""
    with open(log, "a") as err:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"{cmd[1]} failed (exit {out.returncode}); see {log}")
    lines = [x for x in out.stdout.splitlines() if x.startswith("{") and x.endswith("}")]
    return json.loads(lines[-1]) if lines else {}


def image_folder(data: str, folder: str | None, tmp: Path) -> Path:
    """The peer reads an image folder (train/<class>/*.jpg, test/...): --folder or the archive
    extracted under ``tmp``."""
    if folder:
        return Path(folder)
    if Path(data).is_dir():
        return Path(data)
    with tarfile.open(data) as tar:
        tar.extractall(tmp, filter="data")
    return tmp


def summarize(ratios: list[float]) -> dict:
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "rounds": len(ratios)}


def round_order(variants: list[str], r: int) -> list[tuple[str, str]]:
    """The runs of round ``r``: selfsup's variants then the peer, reversed in odd rounds."""
    runs = [("selfsup", v) for v in variants] + [("peer", "fp32")]
    return runs[::-1] if r % 2 else runs


def cmd_throughput(a, tmp: Path) -> list[dict]:
    folder = image_folder(a.data, a.folder, tmp / "img")
    log = Path(a.log)
    rows = []
    for r in range(a.rounds):
        runs = round_order(a.precision, r)
        got = {}
        for who, prec in runs:
            before = load()
            if who == "selfsup":
                run_json([sys.executable, "benchmarks/throughput.py", "--data", a.data,
                                "--steps", str(a.steps + 5), *variant_args(prec),
                                "--threads", str(a.threads), "--out", str(tmp / "t.json")], log)
                res = json.loads((tmp / "t.json").read_text())
            else:
                res = run_json([a.peer_python, str(Path(a.peer_bench) / "peer_lightly_simclr.py"),
                                "--data", str(folder), "--width", "0.25", "--batch", "256",
                                "--steps", str(a.steps), "--workers", str(a.workers),
                                "--threads", str(a.threads)], log)
            got[(who, prec)] = res["images_per_s"]
            row = {"kind": "throughput", "round": r, "who": who, "precision": prec,
                   "images_per_s": res["images_per_s"], "load_before": before,
                   "load_after": load(), **{k: res[k] for k in ("data_fraction", "step_overhead")
                                            if k in res}}
            rows.append(row)
            print(json.dumps(row), flush=True)
        for prec in a.precision:
            ratio = got[("selfsup", prec)] / got[("peer", "fp32")]
            rows.append({"kind": "throughput_ratio", "round": r, "precision": prec, "ratio": ratio})
            print(f"round {r}: selfsup {prec} / peer = {ratio:.2f}x", flush=True)
    return rows


def eval_lists(a) -> tuple[dict, object, object]:
    """The protocol's evaluation images: the bank (1,000 per class by seed) and every test image."""
    from selfsup.config import load_config
    from selfsup.evaluate.protocol import labeled_train_subset
    from selfsup.pretrain import load_data

    cfg = load_config("simclr_cifar10_cpu", [f"data.path={a.data}"])
    train_ds, test_ds = load_data(cfg, "train", False), load_data(cfg, "test", False)
    bank = labeled_train_subset(train_ds, labels_per_class=1000, seed=a.seed)
    return ({"bank": [f"train/{n}" for n in bank.names],
             "test": [f"test/{n}" for n in test_ds.names]}, bank, test_ds)


def score(snap_dir: Path, bank_y, test_y) -> list[dict]:
    from selfsup.evaluate.knn import knn_accuracy

    curve = []
    for f in sorted(snap_dir.glob("snap_*.npz")):
        z = np.load(f)
        acc = knn_accuracy(z["bank"], bank_y, z["test"], test_y, 10, 200, 0.1)["knn200_acc"]
        curve.append({"step": int(z["step"]), "wall_s": float(z["wall_s"]),
                      "cpu_s": float(z["cpu_s"]), "knn200": acc})
    return curve


def time_to(curve: list[dict], threshold: float) -> float | None:
    hit = [c["wall_s"] for c in curve if c["knn200"] >= threshold]
    return hit[0] if hit else None


def cmd_tta(a, tmp: Path) -> list[dict]:
    folder = image_folder(a.data, a.folder, tmp / "img")
    lists, bank, test_ds = eval_lists(a)
    (tmp / "eval.json").write_text(json.dumps(lists))
    log = Path(a.log)
    rows = []
    for r in range(a.rounds):
        runs = round_order(a.precision, r)
        times = {}
        for who, prec in runs:
            snaps = tmp / f"snaps-{r}-{who}-{prec}"
            before, t0 = load(), time.time()
            if who == "selfsup":
                run_json([sys.executable, __file__, "_selfsup_tta", "--data", a.data,
                          "--eval-list", str(tmp / "eval.json"), "--out", str(snaps),
                          "--epochs", str(a.epochs), "--snap-every", str(a.snap_every),
                          *variant_args(prec), "--seed", str(a.seed),
                          "--threads", str(a.threads)], log)
            else:
                run_json([a.peer_python, str(ROOT / "benchmarks" / "peer_lightly_tta.py"),
                          "--data", str(folder), "--eval-list", str(tmp / "eval.json"),
                          "--out", str(snaps), "--epochs", str(a.epochs),
                          "--snap-every", str(a.snap_every), "--workers", str(a.workers),
                          "--threads", str(a.threads), "--seed", str(a.seed)], log)
            curve = score(snaps, bank.labels, test_ds.labels)
            tt = {str(th): time_to(curve, th) for th in a.thresholds}
            times[(who, prec)] = tt
            row = {"kind": "tta", "round": r, "who": who, "precision": prec, "epochs": a.epochs,
                   "seed": a.seed, "load_before": before, "load_after": load(),
                   "elapsed_s": time.time() - t0, "time_to": tt, "curve": curve}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
            print("  " + " ".join(f"{c['wall_s']:.0f}s:{100 * c['knn200']:.1f}" for c in curve),
                  flush=True)
        for prec in a.precision:
            for th in a.thresholds:
                ours, peer = times[("selfsup", prec)][str(th)], times[("peer", "fp32")][str(th)]
                ratio = peer / ours if ours and peer else None
                rows.append({"kind": "tta_ratio", "round": r, "precision": prec,
                             "threshold": th, "selfsup_s": ours, "peer_s": peer,
                             "ratio": ratio})
                print(f"round {r}: kNN >= {100 * th:.0f}%: selfsup {prec} {ours} s, peer {peer} s"
                      f" -> {'%.2fx' % ratio if ratio else 'n/a'}", flush=True)
    return rows


def cmd_selfsup_tta(a) -> None:
    """One selfsup run of the race (a fresh process, like the peer's): simclr_cifar10_cpu's recipe
    on ResNet-18 width 0.25; snapshots of the encoder's features with the clock stopped."""
    import torch

    from selfsup.config import load_config
    from selfsup.evaluate.features import extract_features
    from selfsup.pretrain import build_method, load_data
    from selfsup.train.loop import train

    lists = json.loads(Path(a.eval_list).read_text())
    steps = int(round(a.epochs * (50_000 // 256)))
    cfg = load_config("simclr_cifar10_cpu", [
        f"data.path={a.data}", "model.backbone=resnet18", "model.width=0.25",
        "model.cifar_stem=true", f"train.steps={steps}", f"train.seed={a.seed}",
        f"train.precision={a.precision[0].split('-')[0]}", f"train.compile={str(a.compile).lower()}",
        f"train.eval_every={a.snap_every}",
        f"train.threads={a.threads}", "eval.monitor=false", "train.progress=false",
        f"train.checkpoint_every={10 ** 9}"])
    torch.set_num_threads(a.threads)
    train_ds, test_ds = load_data(cfg, "train", False), load_data(cfg, "test", False)
    pos = {f"train/{n}": i for i, n in enumerate(train_ds.names)}
    pos.update({f"test/{n}": i for i, n in enumerate(test_ds.names)})
    sets = {"bank": train_ds.subset(np.array([pos[f] for f in lists["bank"]])),
            "test": test_ds.subset(np.array([pos[f] for f in lists["test"]]))}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)     # the initial weights, as the peer seeds its own
    method = build_method(cfg)
    state = {"paused": 0.0, "paused_cpu": 0.0, "step": 0}
    t0, c0 = time.perf_counter(), time.process_time()

    def snapshot(encoder) -> dict:
        w, c = time.perf_counter(), time.process_time()
        state["step"] += a.snap_every
        step = min(state["step"], steps)
        feats = {k: extract_features(encoder, v) for k, v in sets.items()}
        np.savez(out / f"snap_{step:05d}.npz", step=step, wall_s=w - t0 - state["paused"],
                 cpu_s=c - c0 - state["paused_cpu"], **feats)
        state["paused"] += time.perf_counter() - w
        state["paused_cpu"] += time.process_time() - c
        return {}

    with tempfile.TemporaryDirectory() as d:
        train(method, train_ds, cfg, Path(d), monitor=snapshot)
    print(json.dumps({"done": steps}))


def cmd_report(a) -> None:
    """Markdown tables of the latest throughput and tta invocations in --results."""
    rows = [json.loads(x) for x in (ROOT / a.results).read_text().splitlines() if x.strip()]
    for kind in ("throughput", "tta"):
        runs = [r for r in rows if r["kind"] == kind]
        if not runs:
            continue
        latest = [r for r in rows if r["date"] == runs[-1]["date"]]
        variants = sorted({r["precision"] for r in latest if r["kind"] == kind
                           and r["who"] == "selfsup"})
        print(f"\n{kind}, {runs[-1]['date']}, {runs[-1]['machine']}\n")
        if kind == "throughput":
            print("| round | peer img/s | " + " | ".join(f"selfsup {v} img/s | ratio"
                                                      for v in variants) + " | load before |")
            print("|---" * (2 + 2 * len(variants) + 1) + "|")
            for rnd in sorted({r["round"] for r in latest}):
                got = {(r["who"], r["precision"]): r for r in latest
                       if r["kind"] == kind and r["round"] == rnd}
                peer = got[("peer", "fp32")]["images_per_s"]
                cells = [f"{got[('selfsup', v)]['images_per_s']:.1f} | "
                         f"{got[('selfsup', v)]['images_per_s'] / peer:.2f}x" for v in variants]
                loads = [r["load_before"][0] for r in got.values()]
                print(f"| {rnd} | {peer:.1f} | " + " | ".join(cells)
                      + f" | {min(loads):.2f}-{max(loads):.2f} |")
        else:
            for r in latest:
                if r["kind"] == "tta":
                    curve = " ".join(f"{c['wall_s']:.0f}s:{100 * c['knn200']:.1f}"
                                     for c in r["curve"])
                    print(f"- round {r['round']} {r['who']} {r['precision']}: {curve}")
            print("\n| round | threshold | peer s | " + " | ".join(
                f"selfsup {v} s | ratio" for v in variants) + " |")
            print("|---" * (3 + 2 * len(variants)) + "|")
            ths = sorted({r["threshold"] for r in latest if r["kind"] == "tta_ratio"})
            for rnd in sorted({r["round"] for r in latest}):
                for th in ths:
                    got = {r["precision"]: r for r in latest if r["kind"] == "tta_ratio"
                           and r["round"] == rnd and r["threshold"] == th}
                    peer = next(iter(got.values()))["peer_s"]
                    cells = [(f"{got[v]['selfsup_s']:.0f} | {got[v]['ratio']:.2f}x"
                              if got[v]["ratio"] else
                              f"{got[v]['selfsup_s'] or 'not reached'} | n/a") for v in variants]
                    print(f"| {rnd} | {100 * th:.1f}% | "
                          f"{'%.0f' % peer if peer else 'not reached'} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("command", choices=["throughput", "tta", "report", "_selfsup_tta"],
                    help="report: markdown tables of the latest runs in --results")
    ap.add_argument("--data", help="CIFAR-10 archive (.tar.gz) or folder")
    ap.add_argument("--folder", default=None,
                    help="the archive already extracted (train/, test/) for the peer")
    ap.add_argument("--peer-venv", default=os.path.expanduser("~/.cache/selfsup-peer-venv"))
    ap.add_argument("--peer-bench", default=str(DEFAULT_BENCH))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=VARIANTS,
                    help="selfsup's variants: train.precision, '-compile' adds train.compile")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="the peer's DataLoader processes")
    ap.add_argument("--steps", type=int, default=20, help="throughput: timed steps")
    ap.add_argument("--epochs", type=float, default=2.0, help="tta: training length")
    ap.add_argument("--snap-every", type=int, default=49, help="tta: steps between snapshots")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.40, 0.425, 0.45])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--eval-list", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--results", default="benchmarks/results/peer_compare.jsonl")
    ap.add_argument("--log", default="/tmp/peer_compare.log", help="the runs' stderr")
    a = ap.parse_args()
    if a.command == "report":
        return cmd_report(a)
    if not a.data:
        ap.error("--data is required")
    if a.command == "_selfsup_tta":
        return cmd_selfsup_tta(a)
    a.peer_python = str(Path(a.peer_venv) / "bin" / "python")
    if not Path(a.peer_python).exists():
        raise SystemExit(f"--peer-venv {a.peer_venv}: no python there; make it with "
                         f"bash {a.peer_bench}/peers_setup.sh {a.peer_venv}")
    with tempfile.TemporaryDirectory() as d:
        rows = (cmd_throughput if a.command == "throughput" else cmd_tta)(a, Path(d))
    from selfsup.train.loop import cpu_has_fast_bf16

    stamp = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": cpu_model(),
             "fast_bf16": cpu_has_fast_bf16(), "cpus": os.cpu_count(), "threads": a.threads}
    with open(ROOT / a.results, "a") as f:
        for row in rows:
            f.write(json.dumps({**row, **stamp}) + "\n")
    groups = ([(p, None) for p in a.precision] if a.command == "throughput"
              else [(p, th) for p in a.precision for th in a.thresholds])
    for prec, th in groups:
        rs = [r["ratio"] for r in rows if r["kind"].endswith("_ratio") and r["precision"] == prec
              and r.get("threshold") == th and r["ratio"] is not None]
        what = f"kNN >= {th}" if th is not None else "images/s"
        print(f"selfsup {prec} / peer, {what}: "
              + (json.dumps(summarize(rs)) if rs else "not reached by both"))

if __name__ == "__main__":
    main()
