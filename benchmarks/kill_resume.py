"""Crash safety: SIGKILL training runs, resume each with the same command, and compare the final
weights with an uninterrupted run's, bit for bit. Three parts (all by default):

    python benchmarks/kill_resume.py [--parts random,writes,methods] [--kills 10] [--steps 60]

random   `selfsup pretrain -p simclr_digits` killed at --kills random steps (the process is
         killed as soon as its metrics show that step; a checkpoint every 5 steps, so most kills
         fall between checkpoints and the resume redoes some steps).
writes   a run killed *inside* each kind of file write, for pretrain (simclr_digits) and semisup
         (fixmatch_digits): the child process replaces os.fsync / os.replace with a SIGKILL of
         itself when the temporary file of the chosen file is being flushed ("writing": half its
         bytes on disk) or is about to be renamed into place ("renaming"), at the chosen
         occurrence of that write. Then the same command resumes it.
methods  every registered method (its preset shrunk as in tests/test_resume_every_method.py:
         64 digits at 16 px, a checkpoint every 5 of 30 steps) killed at a random step in a
         child process and resumed; the final state_dict (weights, buffers, queues, memories)
         is compared with an uninterrupted child's.

Results: benchmarks/results/kill_resume.json (one key per part).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- commands


def pretrain_command(run_dir: Path, steps: int) -> list[str]:
    return ["pretrain", "-p", "simclr_digits", "-o", str(run_dir), f"train.steps={steps}",
            "train.checkpoint_every=5", "train.log_every=1", "train.progress=false",
            "eval.monitor=false", "train.threads=1"]


def semisup_command(run_dir: Path, steps: int) -> list[str]:
    return ["semisup", "-p", "fixmatch_digits", "-o", str(run_dir), f"train.steps={steps}",
            "train.checkpoint_every=5", "train.eval_every=5", "train.log_every=1",
            "train.progress=false", "train.threads=1", "train.batch_size=16", "method.uratio=2"]


def cli(args: list[str], inject: dict | None = None) -> list[str]:
    """The command line of a child process; ``inject``: {"file", "phase", "nth"} kills it
    inside that write."""
    if inject is None:
        return [sys.executable, "-m", "selfsup", *args]
    return [sys.executable, __file__, "--child-inject", json.dumps(inject), "--", *args]


def child_inject(spec: str, args: list[str]) -> None:
    """Run the CLI with os.fsync / os.replace wrapped: SIGKILL this process at the nth write
    of the named file, while flushing its temporary file or just before renaming it."""
    want = json.loads(spec)
    seen = {"n": 0}
    real_fsync, real_replace = os.fsync, os.replace

    def is_target(name: str) -> bool:
        return name.startswith(f".{want['file']}.tmp-")

    def hit() -> bool:
        seen["n"] += 1
        return seen["n"] == want["nth"]

    def fsync(fd):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if want["phase"] == "writing" and is_target(os.path.basename(path)) and hit():
            os.truncate(path, os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_fsync(fd)

    def replace(src, dst, *a, **k):
        if want["phase"] == "renaming" and is_target(os.path.basename(str(src))) and hit():
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *a, **k)

    os.fsync, os.replace = fsync, replace
    from selfsup.cli import main

    sys.exit(main(args))


def logged_step(run_dir: Path) -> int:
    m = run_dir / "metrics.jsonl"
    if not m.exists():
        return 0
    steps = []
    for x in m.read_text(errors="replace").splitlines():
        try:
            steps.append(json.loads(x).get("step", 0))
        except ValueError:
            pass
    return max(steps, default=0)


def weights(run_dir: Path, file: str) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(run_dir / file))


def compare(a: dict, b: dict) -> tuple[bool, float]:
    equal = set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    diff = max((float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a if k in b),
               default=float("inf"))
    return equal, diff


# ---------------------------------------------------------------- parts

def part_random(out: Path, kills: int, steps: int, seed: int) -> dict:
    ref, killed = out / "random_reference", out / "random_killed"
    t0 = time.time()
    subprocess.run(cli(pretrain_command(ref, steps)), check=True, capture_output=True)
    t_ref = time.time() - t0
    points = sorted(np.random.default_rng(seed).choice(np.arange(1, steps), kills,
                                                       replace=False).tolist())
    done_kills, restarts = [], 0
    for k in points:
        if logged_step(killed) >= k:   # already past this point after an earlier resume
            continue
        p = subprocess.Popen(cli(pretrain_command(killed, steps)), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        restarts += 1
        while p.poll() is None and logged_step(killed) < k:
            time.sleep(0.02)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            done_kills.append({"target_step": k, "killed_after_step": logged_step(killed)})
    final = subprocess.run(cli(pretrain_command(killed, steps)), capture_output=True, text=True)
    restarts += 1
    if final.returncode != 0:
        raise SystemExit(f"the resumed run failed: {final.stderr[-2000:]}")
    equal, diff = compare(weights(ref, "encoder.safetensors"),
                          weights(killed, "encoder.safetensors"))
    return {"kills": done_kills, "n_kills": len(done_kills), "restarts": restarts,
            "steps": steps, "checkpoint_every": 5, "bitwise_equal": equal, "max_abs_diff": diff,
            "reference_seconds": round(t_ref, 1), "seconds": round(time.time() - t0, 1),
            "command": "selfsup " + " ".join(pretrain_command(Path("RUN"), steps))}


# (file, which occurrence of its write): every kind of file the two commands write; nth > 1
# where the file is written several times (a checkpoint in the middle of training)
PRETRAIN_WRITES = [(".selfsup-run", 1), ("config.yaml", 1), ("run.json", 1), ("data.json", 1),
                   ("data_report.json", 1), ("splits.json", 1), ("last.pt", 2),
                   ("metrics.csv", 1), ("encoder.safetensors", 1), ("summary.json", 1)]
# (pictures.png: written by the reconstruction methods only; the same atomic_path as the rest)
SEMISUP_WRITES = [(".selfsup-run", 1), ("config.yaml", 1), ("data.json", 1), ("splits.json", 1),
                  ("eval_history.json", 2), ("last.pt", 2), ("metrics.csv", 1),
                  ("model.safetensors", 1), ("encoder.safetensors", 1), ("summary.json", 1)]


def part_writes(out: Path) -> dict:
    rows = []
    for name, command, writes, weight_file, steps in (
            ("pretrain", pretrain_command, PRETRAIN_WRITES, "encoder.safetensors", 12),
            ("semisup", semisup_command, SEMISUP_WRITES, "model.safetensors", 12)):
        ref = out / f"writes_{name}_reference"
        subprocess.run(cli(command(ref, steps)), check=True, capture_output=True)
        for file, nth in writes:
            for phase in ("writing", "renaming"):
                run = out / f"writes_{name}_{file.strip('.')}_{phase}"
                t0 = time.time()
                p = subprocess.run(cli(command(run, steps), {"file": file, "phase": phase,
                                                             "nth": nth}),
                                   capture_output=True, text=True)
                killed = p.returncode == -signal.SIGKILL
                leftovers = sorted(q.name for q in run.rglob("*") if ".tmp-" in q.name)
                resumed = subprocess.run(cli(command(run, steps)), capture_output=True, text=True)
                ok = resumed.returncode == 0
                equal, diff = (compare(weights(ref, weight_file), weights(run, weight_file))
                               if ok else (False, float("inf")))
                after = sorted(q.name for q in run.rglob("*") if ".tmp-" in q.name)
                try:
                    json.loads((run / "summary.json").read_text())
                    summary_ok = True
                except (OSError, ValueError):
                    summary_ok = False
                rows.append({"command": name, "file": file, "occurrence": nth, "phase": phase,
                             "killed": killed, "temporaries_left_by_kill": leftovers,
                             "resumed_ok": ok, "bitwise_equal": equal, "max_abs_diff": diff,
                             "summary_readable": summary_ok, "temporaries_after_resume": after,
                             "error": "" if ok else resumed.stderr.strip().splitlines()[-1:],
                             "seconds": round(time.time() - t0, 1)})
                print(json.dumps(rows[-1]), flush=True)
    return {"cases": rows, "n": len(rows), "all_killed": all(r["killed"] for r in rows),
            "all_equal": all(r["bitwise_equal"] and r["summary_readable"]
                             and not r["temporaries_after_resume"] for r in rows),
            "commands": {"pretrain": "selfsup " + " ".join(pretrain_command(Path("RUN"), 12)),
                         "semisup": "selfsup " + " ".join(semisup_command(Path("RUN"), 12))}}


METHOD_STEPS = 30


def child_method(name: str, run_dir: str, dump: str) -> None:
    """Train one registered method (tests/test_resume_every_method.py's shrunk settings) in
    this process, resuming from run_dir's checkpoint if any; save its final state_dict."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    import test_resume_every_method as t

    torch.set_num_threads(1)
    t.STEPS = METHOD_STEPS
    real_config = t._config

    def config(n, d):
        from selfsup.config import apply_overrides

        return apply_overrides(real_config(n, d), ["train.checkpoint_every=5",
                                                   "train.log_every=1"])

    t._config = config
    method, out = t._run(name, Path(run_dir))
    torch.save({k: v.detach().clone() for k, v in method.state_dict().items()}, dump)


def part_methods(out: Path, seed: int) -> dict:
    import torch

    from selfsup.methods import METHODS

    rng = np.random.default_rng(seed)
    rows = []
    for name in METHODS.names():
        ref, run = out / f"method_{name}_reference", out / f"method_{name}_killed"
        base = [sys.executable, __file__, "--child-method", name]
        t0 = time.time()
        subprocess.run([*base, str(ref), str(out / f"{name}_ref.pt")], check=True,
                       capture_output=True)
        k = int(rng.integers(6, METHOD_STEPS - 1))
        p = subprocess.Popen([*base, str(run), str(out / f"{name}_killed.pt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while p.poll() is None and logged_step(run) < k:
            time.sleep(0.005)
        killed_at = logged_step(run)
        killed = p.poll() is None
        if killed:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
        subprocess.run([*base, str(run), str(out / f"{name}_killed.pt")], check=True,
                       capture_output=True)
        a = torch.load(out / f"{name}_ref.pt")
        b = torch.load(out / f"{name}_killed.pt")
        equal = a.keys() == b.keys() and all(torch.equal(a[x], b[x]) for x in a)
        diff = max((float((a[x].double() - b[x].double()).abs().max()) for x in a if x in b
                    and a[x].numel()), default=0.0)
        rows.append({"method": name, "killed": killed, "killed_after_step": killed_at,
                     "bitwise_equal": equal, "max_abs_diff": diff,
                     "seconds": round(time.time() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return {"methods": rows, "n": len(rows), "all_killed": all(r["killed"] for r in rows),
            "all_equal": all(r["bitwise_equal"] for r in rows), "steps": METHOD_STEPS,
            "checkpoint_every": 5}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child-inject":
        return child_inject(sys.argv[2], sys.argv[4:])
    if len(sys.argv) > 2 and sys.argv[1] == "--child-method":
        return child_method(*sys.argv[2:5])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--parts", default="random,writes,methods")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default="runs/kill_resume")
    ap.add_argument("--results", default="benchmarks/results/kill_resume.json")
    a = ap.parse_args()
    out = Path(a.out_dir) / f"{int(time.time())}"
    out.mkdir(parents=True, exist_ok=True)
    res = {"date": time.strftime("%Y-%m-%d"), "seed": a.seed,
           "load_before": os.getloadavg()[0]}
    path = Path(a.results)
    if path.exists():   # keep the other parts' latest results
        res = {**json.loads(path.read_text()), **res}
    parts = a.parts.split(",")
    if "random" in parts:
        res["random"] = part_random(out, a.kills, a.steps, a.seed)
    if "writes" in parts:
        res["writes"] = part_writes(out)
    if "methods" in parts:
        res["methods"] = part_methods(out, a.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    summary = {k: {kk: v[kk] for kk in ("n", "all_killed", "all_equal", "bitwise_equal",
                                          "n_kills") if kk in v}
               for k, v in res.items() if isinstance(v, dict)}
    print(json.dumps(summary, indent=1))
    bad = [k for k, v in summary.items() if v.get("all_equal") is False or
           v.get("bitwise_equal") is False]
    if bad:
        raise SystemExit(f"not equal: {bad}")


if __name__ == "__main__":
    main()
