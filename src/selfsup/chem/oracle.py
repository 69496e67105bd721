"""The scoring oracle: every call of the objective is counted, cached and budgeted.

Molecule-design methods are compared at equal numbers of *oracle calls* (the expensive part in
practice: a docking run, an assay). ``Oracle(objective, budget)`` canonicalises each SMILES, answers
repeats from its cache without counting them, scores invalid molecules (and, with
``max_smiles_length``, molecules whose canonical SMILES is longer) ``None`` without counting them, and refuses new molecules once ``budget`` distinct ones have been scored (``BudgetExhausted``).
It keeps the order of first scoring, from which the PMO-style metrics are computed: top-1, top-10
mean and the area under the top-10-mean-vs-calls curve (normalised by the budget).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from .molecules import mol_to_smiles, to_mol


class BudgetExhausted(RuntimeError):
    """Raised when a new molecule is asked for after the oracle's budget is spent."""


class Oracle:
    def __init__(self, objective: Callable, budget: int, alert_filter=None,
                 max_smiles_length: int | None = None):
        if budget <= 0:
            raise ValueError(f"the oracle budget must be positive, got {budget}")
        self.objective, self.budget, self.alert_filter = objective, int(budget), alert_filter
        self.max_smiles_length = max_smiles_length   # longer canonical SMILES: not scored
        self.cache: dict[str, float] = {}
        self.history: list[tuple[str, float]] = []   # (canonical SMILES, score), first scoring

    @property
    def calls(self) -> int:
        return len(self.history)

    @property
    def remaining(self) -> int:
        return self.budget - self.calls

    @property
    def exhausted(self) -> bool:
        return self.calls >= self.budget

    def score(self, smiles: str) -> float | None:
        """The objective's value for one molecule (cached); None when it is invalid. Molecules
        that break a structural alert (when a filter is set) score 0 and count as a call."""
        mol = to_mol(smiles)
        if mol is None:
            return None
        key = mol_to_smiles(mol)
        if key is None or (self.max_smiles_length and len(key) > self.max_smiles_length):
            return None
        if key in self.cache:
            return self.cache[key]
        if self.exhausted:
            raise BudgetExhausted(f"the oracle budget of {self.budget} calls is spent")
        if self.alert_filter is not None and not self.alert_filter.passes(mol):
            value = 0.0
        else:
            value = float(self.objective(mol))
        self.cache[key] = value
        self.history.append((key, value))
        return value

    def score_many(self, smiles: Iterable[str]) -> list[float | None]:
        """Scores in order, stopping silently when the budget runs out (the rest get None)."""
        out: list[float | None] = []
        for s in smiles:
            try:
                out.append(self.score(s))
            except BudgetExhausted:
                out.append(None)
        return out

    def best(self, k: int = 10) -> list[tuple[str, float]]:
        return sorted(self.history, key=lambda t: -t[1])[:k]

    def metrics(self) -> dict:
        """top-1, top-10 mean, and AUC of the top-10 mean vs calls over the whole budget (a
        run that stops early keeps its last value to the end, as PMO does), in [0, max score]."""
        return budget_metrics([s for _, s in self.history], self.budget)


def budget_metrics(scores, budget: int) -> dict:
    """The metrics of the first ``budget`` scores of a run (one run read at several budgets)."""
    scores = np.asarray(list(scores)[:budget], dtype=float)
    if len(scores) == 0:
        return {"calls": 0, "top1": float("nan"), "top10_mean": float("nan"),
                "auc_top10": float("nan")}
    curve = top_k_curve(scores, 10)
    filled = np.concatenate([curve, np.full(budget - len(curve), curve[-1])])
    return {"calls": int(len(scores)), "top1": float(scores.max()),
            "top10_mean": float(curve[-1]), "auc_top10": float(filled.mean())}


def top_k_curve(scores: np.ndarray, k: int = 10) -> np.ndarray:
    """[n] scores in calling order -> [n] mean of the k best seen so far (of all seen while fewer
    than k)."""
    out = np.empty(len(scores))
    best: list[float] = []
    for i, s in enumerate(scores):
        best.append(float(s))
        best.sort(reverse=True)
        del best[k:]
        out[i] = np.mean(best)
    return out
