"""GEGL: Guiding Deep Molecular Optimization with Genetic Exploration (Ahn, Kim, Lee & Shin,
NeurIPS 2020).

Defining idea: a neural apprentice (a SMILES language model) proposes molecules; a genetic
expert explores around the apprentice's best ones with graph crossover and mutation; the best
molecules of both are kept in priority queues and the apprentice is trained to imitate them. The
expert finds improvements the apprentice cannot yet generate; imitation makes them generable.

Algorithm (paper, Alg. 1), until the oracle's budget is spent:
    X_A = apprentice samples (N)                          -> score -> Q_A = top-K(Q_A + X_A)
    X_E = crossover/mutation of parents drawn from Q_A    -> score -> Q_E = top-K(Q_E + X_E)
    imitation: a few MLE steps of the apprentice on Q_A + Q_E
Baselines in the same code path (``mode``): ``apprentice`` (no expert: sample, keep the top-K,
imitate them - SMILES-LSTM hill climbing), ``random`` (sample from the pretrained apprentice
only, no training). The GA alone is ``ga.graph_ga``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .apprentice import SmilesLSTM, sample_valid, train_mle
from .ga import reproduce, selection_weights
from .oracle import BudgetExhausted, Oracle

MODES = ("gegl", "apprentice", "random")


@dataclass
class GEGLConfig:
    samples: int = 512           # apprentice samples per round (paper: 8,192 on a GPU)
    offspring: int = 512         # expert offspring per round (paper: 8,192)
    queue_size: int = 1024       # K of both priority queues (paper: 1,024)
    imitation_steps: int = 8     # MLE steps per round (paper: 8)
    batch_size: int = 256
    lr: float = 1e-3
    mutation_rate: float = 0.01  # paper's expert: 0.01
    patience: int = 5            # stop after this many rounds without a new molecule


def _top(queue: dict[str, float], k: int) -> dict[str, float]:
    return dict(sorted(queue.items(), key=lambda t: -t[1])[:k])


def _score_into(oracle: Oracle, smiles: list[str], queue: dict[str, float]) -> bool:
    """Score and add to the queue; False once the budget is spent."""
    for s in smiles:
        try:
            v = oracle.score(s)
        except BudgetExhausted:
            return False
        if v is not None:
            queue[s] = v
    return True


def gegl(oracle: Oracle, apprentice: SmilesLSTM, cfg: GEGLConfig | None = None,
         mode: str = "gegl", seed: int = 0, on_round=None) -> dict:
    """Run until the oracle's budget is spent (or ``patience`` rounds find nothing new). Returns
    {'queue': the best molecules [(smiles, score)], 'rounds', 'validity': mean fraction of valid
    apprentice samples, 'stopped': 'budget' | 'patience'}."""
    if mode not in MODES:
        raise ValueError(f"unknown GEGL mode '{mode}'; choose one of: {', '.join(MODES)}")
    cfg = cfg or GEGLConfig()
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(apprentice.parameters(), lr=cfg.lr)
    q_app: dict[str, float] = {}
    q_exp: dict[str, float] = {}
    rounds, stale, validity = 0, 0, []
    while not oracle.exhausted and stale < cfg.patience:
        before = oracle.calls
        samples, valid = sample_valid(apprentice, cfg.samples, gen)
        validity.append(valid)
        alive = _score_into(oracle, samples, q_app)
        q_app = _top(q_app, cfg.queue_size)
        if alive and mode == "gegl" and q_app:
            parents = list(q_app)
            children = reproduce(parents, selection_weights(list(q_app.values())),
                                 cfg.offspring, rng, cfg.mutation_rate)
            _score_into(oracle, children, q_exp)
            q_exp = _top(q_exp, cfg.queue_size)
        if mode != "random":
            data = list({**q_app, **q_exp})
            if data:
                train_mle(apprentice, data, cfg.imitation_steps, cfg.batch_size,
                          generator=gen, optimizer=opt)
        rounds += 1
        stale = stale + 1 if oracle.calls == before else 0
        if on_round is not None:
            on_round(rounds, oracle)
    best = _top({**q_app, **q_exp}, cfg.queue_size)
    return {"queue": list(best.items()), "rounds": rounds,
            "validity": float(sum(validity) / max(1, len(validity))),
            "stopped": "budget" if oracle.exhausted else "patience"}
