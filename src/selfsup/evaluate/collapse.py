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
