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
As the official code (sungsoo-ahn/genetic-expert-guided-learning, ``runner/gegl_trainer.py``,
``model/genetic_expert.py``): the expert's mating pool is N draws from Q_A uniformly with
replacement, each child is a crossover of two uniform draws from the pool followed by a mutation
with probability 0.01, with Jensen's GB-GA operators (``gbga``: size and ring rules, the child
differs from its parents); imitation batches are drawn uniformly with replacement from the union
of the two queues. ``parents="score"`` / ``operators="first"`` keep this project's first variant
(score-weighted parents, the first GA's operators; BENCHMARKS 9.1). ``GEGLConfig.scaled`` keeps
the paper's proportions at a smaller budget.
Baselines in the same code path (``mode``): ``apprentice`` (no expert: sample, keep the top-K,
imitate them - SMILES-LSTM hill climbing), ``random`` (sample from the pretrained apprentice
only, no training). The GA alone is ``ga.graph_ga``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from . import gbga
from .apprentice import SmilesLSTM, sample_valid, train_mle
from .ga import reproduce, selection_weights
from .molecules import mol_to_smiles, to_mol
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
    parents: str = "uniform"     # mating pool from Q_A: "uniform" (official) or "score"-weighted
    operators: str = "gbga"      # expert operators: "gbga" (official: GB-GA's) or "first" (ga.py)

    @classmethod
    def scaled(cls, budget: int, rounds: int = 10, **kw) -> "GEGLConfig":
        """The paper's proportions at ``budget`` oracle calls spread over about ``rounds``
        rounds: N apprentice samples = N expert offspring = budget / (2 rounds); queues of
        K = N / 8 (paper 8,192 : 1,024); 8 imitation steps whose batches add up to one pass
        over the two queues, 2K samples (paper 8 x 256 = 2 x 1,024)."""
        n = max(8, budget // (2 * rounds))
        k = max(1, n // 8)
        return cls(**{"samples": n, "offspring": n, "queue_size": k, "imitation_steps": 8,
                      "batch_size": max(1, 2 * k // 8), **kw})


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


def expert_offspring(queue: dict[str, float], cfg: GEGLConfig, rng: random.Random) -> list[str]:
    """The genetic expert's children of the apprentice's queue (up to ``cfg.offspring``)."""
    if cfg.parents not in ("uniform", "score"):
        raise ValueError(f"GEGL parents must be 'uniform' or 'score', not {cfg.parents!r}")
    smiles = list(queue)
    weights = None if cfg.parents == "uniform" else selection_weights(list(queue.values()))
    if cfg.operators == "first":
        return reproduce(smiles, weights or [1.0] * len(smiles), cfg.offspring, rng,
                         cfg.mutation_rate)
    if cfg.operators != "gbga":
        raise ValueError(f"GEGL operators must be 'gbga' or 'first', not {cfg.operators!r}")
    pool = [to_mol(s) for s in rng.choices(smiles, weights=weights, k=cfg.offspring)]
    children = (gbga.reproduce(pool, cfg.mutation_rate, rng) for _ in range(cfg.offspring))
    return [s for s in (mol_to_smiles(c) for c in children if c is not None) if s]


def gegl(oracle: Oracle, apprentice: SmilesLSTM, cfg: GEGLConfig | None = None,
         mode: str = "gegl", seed: int = 0, on_round=None,
         start: list[str] | None = None) -> dict:
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
    rounds, stale, validity, means = 0, 0, [], []
    if start:   # the official ``init``: scored, then in both queues (PMO: the same start for all)
        _score_into(oracle, start, q_app)
        q_app = _top(q_app, cfg.queue_size)
        q_exp = dict(q_app)
    while not oracle.exhausted and stale < cfg.patience:
        before = oracle.calls
        samples, valid = sample_valid(apprentice, cfg.samples, gen)
        validity.append(valid)
        alive = _score_into(oracle, samples, q_app)
        q_app = _top(q_app, cfg.queue_size)
        if alive and mode == "gegl" and q_app:
            children = expert_offspring(q_app, cfg, rng)
            _score_into(oracle, children, q_exp)
            q_exp = _top(q_exp, cfg.queue_size)
        if mode != "random":
            data = list({**q_app, **q_exp})
            if data:
                train_mle(apprentice, data, cfg.imitation_steps, cfg.batch_size,
                          generator=gen, optimizer=opt)
        rounds += 1
        means.append([round(sum(q.values()) / len(q), 4) if q else None for q in (q_app, q_exp)])
        stale = stale + 1 if oracle.calls == before else 0
        if on_round is not None:
            on_round(rounds, oracle)
    best = _top({**q_app, **q_exp}, cfg.queue_size)
    return {"queue": list(best.items()), "rounds": rounds,
            "validity": float(sum(validity) / max(1, len(validity))),
            "validity_per_round": [round(v, 3) for v in validity],
            # diagnostics: mean score of the apprentice's and the expert's queue after each
            # round, and how many of the final top 10 only the expert found
            "queue_means_per_round": means,
            "top10_from_expert": sum(1 for s, _ in list(best.items())[:10] if s not in q_app),
            "stopped": "budget" if oracle.exhausted else "patience"}
