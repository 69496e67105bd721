"""Label-free collapse diagnostics.

- ``embedding_std``: mean over dimensions of the std (over samples) of l2-normalised embeddings
  (SimSiam, Chen & He, 2021, Fig. 2): about 1/sqrt(d) when healthy, 0 when collapsed.
- ``effective_rank``: RankMe (Garrido et al., 2023), exp of the entropy of the normalised singular
  values: from 1 (collapsed to a line) up to min(N, d).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def embedding_std(z: torch.Tensor) -> float:
    z = F.normalize(torch.as_tensor(z, dtype=torch.float32), dim=1)
    return float(z.std(dim=0).mean())


def effective_rank(z: torch.Tensor, eps: float = 1e-7) -> float:
    z = torch.as_tensor(z, dtype=torch.float64)
    s = torch.linalg.svdvals(z)
    p = s / (s.sum() + eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def collapse_metrics(z) -> dict:
    d = torch.as_tensor(z).shape[1]
    return {"embed_std": embedding_std(z), "embed_std_healthy": 1.0 / d ** 0.5,
            "effective_rank": effective_rank(z)}


class CollapseDetector:
    """Flags collapse of a method's output embeddings once: std of the l2-normalised embeddings
    below ``std_ratio`` times its healthy value 1/sqrt(d) (complete collapse), or effective rank
    below max(``min_rank``, ``rank_fraction`` x d) (dimensional collapse: the embeddings span a
    few directions of a d-dimensional space, as SimSiam's without its stop-gradient do: rank 2-4
    of 512 on the CPU protocol while their std stays at half the healthy value).
    State changes only through ``check``."""

    def __init__(self, std_ratio: float = 0.1, min_rank: float = 1.5, rank_fraction: float = 0.01):
        self.std_ratio, self.min_rank, self.rank_fraction = std_ratio, min_rank, rank_fraction
        self.event: dict | None = None

    def check(self, step: int, metrics: dict) -> str | None:
        """metrics: {'z_std', 'z_std_healthy', 'z_rank'}. Returns a warning the first time."""
        if self.event is not None:
            return None
        low_std = metrics["z_std"] < self.std_ratio * metrics["z_std_healthy"]
        dim = 1.0 / metrics["z_std_healthy"] ** 2          # healthy std = 1 / sqrt(d)
        low_rank = metrics["z_rank"] < max(self.min_rank, self.rank_fraction * dim)
        if not (low_std or low_rank):
            return None
        self.event = {"step": step, "z_std": metrics["z_std"], "z_rank": metrics["z_rank"],
                      "reason": "std of normalised embeddings" if low_std else "effective rank"}
        return (f"selfsup: warning: the embeddings collapsed at step {step} "
                f"({self.event['reason']} low: std {metrics['z_std']:.4g} vs healthy "
                f"{metrics['z_std_healthy']:.4g}, effective rank {metrics['z_rank']:.3g}); "
                f"the run continues and is marked collapsed in summary.json")
