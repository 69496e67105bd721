"""Crash safety: SIGKILL a training run at random steps, resume it each time with the same
command, and compare its final weights with an uninterrupted run's, bit for bit.

    python benchmarks/kill_resume.py [--kills 10] [--steps 60] [--seed 0] [--out-dir runs/kill]

The run is `selfsup pretrain -p simclr_digits` (real images, bundled) with a checkpoint every 5
steps; each kill lands at a random step (the process is killed as soon as its metrics show that
step), so most kills fall between checkpoints and the resumed run redoes some steps.
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


def command(run_dir: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "selfsup", "pretrain", "-p", "simclr_digits", "-o", str(run_dir),
            f"train.steps={steps}", "train.checkpoint_every=5", "train.log_every=1",
            "train.progress=false", "eval.monitor=false", "train.threads=1"]


def logged_step(run_dir: Path) -> int:
    m = run_dir / "metrics.jsonl"
    if not m.exists():
        return 0
    steps = [json.loads(x).get("step", 0) for x in m.read_text().splitlines()
             if x.strip().endswith("}")]
    return max(steps, default=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default="runs/kill_resume")
    ap.add_argument("--results", default="benchmarks/results/kill_resume.json")
    a = ap.parse_args()
    from safetensors.numpy import load_file

    out = Path(a.out_dir) / f"{int(time.time())}"
    ref, killed = out / "reference", out / "killed"
    t0 = time.time()
    subprocess.run(command(ref, a.steps), check=True, capture_output=True)
    t_ref = time.time() - t0
    points = sorted(np.random.default_rng(a.seed).choice(np.arange(1, a.steps), a.kills,
                                                         replace=False).tolist())
    done_kills, restarts = [], 0
    for k in points:
        if logged_step(killed) >= k:   # already past this point after an earlier resume
            continue
        p = subprocess.Popen(command(killed, a.steps), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        restarts += 1
        while p.poll() is None and logged_step(killed) < k:
            time.sleep(0.02)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            done_kills.append({"target_step": k, "killed_after_step": logged_step(killed)})
    final = subprocess.run(command(killed, a.steps), capture_output=True, text=True)
    restarts += 1
    if final.returncode != 0:
        raise SystemExit(f"the resumed run failed: {final.stderr[-2000:]}")
    wa, wb = load_file(str(ref / "encoder.safetensors")), load_file(str(killed / "encoder.safetensors"))
    equal = set(wa) == set(wb) and all(np.array_equal(wa[k], wb[k]) for k in wa)
    max_diff = max(float(np.abs(wa[k].astype(np.float64) - wb[k]).max()) for k in wa)
    res = {"kills": done_kills, "n_kills": len(done_kills), "restarts": restarts,
           "steps": a.steps, "checkpoint_every": 5, "bitwise_equal": equal,
           "max_abs_diff": max_diff, "tensors": len(wa), "reference_seconds": round(t_ref, 1),
           "total_seconds": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d"),
           "command": " ".join(command(Path("RUN"), a.steps)[1:])}
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    if not equal:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
