"""A FIFO memory queue of embeddings (MoCo, He et al., 2020). State changes only via ``push``."""

from __future__ import annotations

import torch
from torch import nn


class MemoryQueue(nn.Module):
    def __init__(self, size: int, dim: int, normalize: bool = True):
        super().__init__()
        init = torch.randn(size, dim)
        if normalize:
            init = nn.functional.normalize(init, dim=1)
        self.register_buffer("items", init)                 # [size, dim]
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Enqueue ``keys`` [n, dim] (n <= size), overwriting the oldest entries."""
        n, size = keys.shape[0], self.items.shape[0]
        if n > size:
            raise ValueError(f"cannot push {n} keys into a queue of {size}")
        idx = (self.ptr + torch.arange(n, device=keys.device)) % size
        self.items[idx] = keys.detach().to(self.items.dtype)
        self.ptr.copy_((self.ptr + n) % size)
