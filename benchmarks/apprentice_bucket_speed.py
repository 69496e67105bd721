"""Seconds per apprentice training step with uniform batches vs length-bucketed ones, measured
in one process, the two alternated (BENCHMARKS 9.1.3). Same-window ratios only.

    python benchmarks/apprentice_bucket_speed.py --chem ../shared/datasets/chem
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from selfsup.chem.apprentice import ApprenticeConfig, SmilesLSTM, Vocab, draw_batch, length_order
from selfsup.chem.molecules import read_smiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--chem", required=True, help="the chem data folder (zinc250k.txt.gz)")
    ap.add_argument("--steps", type=int, default=8, help="steps per timing")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    corpus = read_smiles(Path(a.chem) / "zinc250k.txt.gz")
    vocab, order = Vocab.from_smiles(corpus), length_order(corpus)
    gen = torch.Generator().manual_seed(0)
    for hidden, layers in [(256, 2), (512, 2), (512, 3)]:
        torch.manual_seed(0)
        model = SmilesLSTM(vocab, ApprenticeConfig(hidden_dim=hidden, layers=layers))
        opt = torch.optim.Adam(model.parameters())
        for r in range(a.rounds):
            times = {}
            for bucket in (False, True):
                t0 = time.time()
                for _ in range(a.steps):
                    idx = draw_batch(len(corpus), a.batch_size, gen, order if bucket else None)
                    loss = model.nll(model.batch([corpus[i] for i in idx]))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                times[bucket] = (time.time() - t0) / a.steps
            print(f"{layers}x{hidden} round {r}: uniform {times[False]:.3f} s/step, bucketed "
                  f"{times[True]:.3f} s/step, ratio {times[False] / times[True]:.2f}", flush=True)


if __name__ == "__main__":
    main()
