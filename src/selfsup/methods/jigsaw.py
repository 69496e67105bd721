"""Jigsaw puzzles: Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles
(Noroozi & Favaro, ECCV 2016).

Defining idea: cut an image into a 3x3 grid of tiles, shuffle them by one of a fixed set of
permutations, and make a network recognise which permutation it was: it must know what object
parts look like and where they go.

Algorithm (paper Sec. 3; bbrattoli/JigsawPuzzlePytorch): a random crop of 3 x cell pixels is cut
into 3x3 cells; a smaller tile is cropped at a random place inside each cell (gaps + jitter: edges
and lines cannot be continued across tiles); each tile is normalised by its own mean and std per
channel (no low-level statistics shortcut); images are sometimes made grey (against chromatic
aberration); the permutation set is chosen greedily to maximise the minimum Hamming distance
(too-similar permutations make the task ambiguous). A "context-free network": the same backbone
embeds each tile, a shared fc per tile, then the 9 embeddings are concatenated and classified.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..augment.views import ViewConfig, to_unit_float
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@lru_cache(maxsize=8)
def permutation_set(n: int, tiles: int = 9, seed: int = 0) -> tuple[np.ndarray, int]:
    """(n permutations of ``tiles`` [n, tiles], their minimum pairwise Hamming distance), picked
    greedily from all tiles! permutations: each new one maximises its distance to the closest
    already chosen (max-min). 100 of 9 tiles: minimum distance 6; 1000: 5."""
    allp = np.array(list(itertools.permutations(range(tiles))), dtype=np.int8)
    if n > len(allp):
        raise ValueError(f"only {len(allp)} permutations of {tiles} tiles exist, asked for {n}")
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(allp)))]
    mind = (allp != allp[chosen[0]]).sum(1)
    for _ in range(n - 1):
        i = int(np.argmax(mind))
        chosen.append(i)
        mind = np.minimum(mind, (allp != allp[i]).sum(1))
    perms = allp[chosen].astype(np.int64)
    d = (perms[:, None] != perms[None]).sum(2)
    np.fill_diagonal(d, tiles + 1)
    return perms, int(d.min())


def grid_cells(x: torch.Tensor, grid: int, tile: int, generator: torch.Generator | None = None,
               jitter: bool = True) -> torch.Tensor:
    """[B, C, H, W] -> [B, grid*grid, C, tile, tile]: a random (grid * cell)-pixel crop, cut into
    cells of side H // grid, and a tile x tile crop at a random place inside each cell (the
    top-left corner when ``jitter`` is off). Cells in raster order."""
    b, c, h, w = x.shape
    cell = min(h, w) // grid
    if tile > cell:
        raise ValueError(f"tile {tile} px is larger than the cell ({cell} px)")
    oy = torch.randint(0, h - grid * cell + 1, (b,), generator=generator) if jitter else \
        torch.zeros(b, dtype=torch.long)
    ox = torch.randint(0, w - grid * cell + 1, (b,), generator=generator) if jitter else \
        torch.zeros(b, dtype=torch.long)
    n = grid * grid
    jy = torch.randint(0, cell - tile + 1, (b, n), generator=generator) if jitter else \
        torch.zeros(b, n, dtype=torch.long)
    jx = torch.randint(0, cell - tile + 1, (b, n), generator=generator) if jitter else \
        torch.zeros(b, n, dtype=torch.long)
    k = torch.arange(n)
    y0 = oy[:, None] + (k // grid)[None] * cell + jy                   # [B, n]
    x0 = ox[:, None] + (k % grid)[None] * cell + jx
    rows = (y0[..., None] + torch.arange(tile)).to(x.device)            # [B, n, tile]
    cols = (x0[..., None] + torch.arange(tile)).to(x.device)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    xp = x.permute(0, 2, 3, 1)                                          # [B, H, W, C]
    out = xp[bi, rows[:, :, :, None], cols[:, :, None, :]]              # [B, n, t, t, C]
    return out.permute(0, 1, 4, 2, 3).contiguous()


def upsample_tiles(t: torch.Tensor, min_side: int = 8) -> torch.Tensor:
    """Tiles [B, n, C, t, t] smaller than ``min_side`` are resized up to it (small backbones
    downsample 8x and need at least 8 px)."""
    if t.shape[-1] >= min_side:
        return t
    b, n = t.shape[:2]
    r = F.interpolate(t.flatten(0, 1), size=(min_side, min_side), mode="bilinear",
                      align_corners=False)
    return r.view(b, n, *r.shape[1:])


def normalize_tiles(t: torch.Tensor) -> torch.Tensor:
    """Each tile [.., C, h, w] standardised per channel by its own mean and std."""
    mean = t.mean(dim=(-2, -1), keepdim=True)
    std = t.std(dim=(-2, -1), keepdim=True)
    return (t - mean) / (std + 1e-5)


def shuffle_tiles(tiles: torch.Tensor, perms: torch.Tensor, generator=None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """tiles [B, n, ...] in raster order -> (shuffled tiles, labels [B]): with label l the tile
    at position j is the original tile perms[l, j]."""
    b = tiles.shape[0]
    labels = torch.randint(0, perms.shape[0], (b,), generator=generator).to(tiles.device)
    order = perms.to(tiles.device)[labels]                              # [B, n]
    idx = order.view(b, -1, *([1] * (tiles.dim() - 2))).expand_as(tiles)
    return torch.gather(tiles, 1, idx), labels


@dataclass
class JigsawConfig:
    n_permutations: int = 1000
    grid: int = 3
    tile_fraction: float = 0.85    # tile side / cell side (64 of 75 px in the paper)
    gray_p: float = 0.3            # grayscale images (against chromatic aberration)
    tile_dim: int = 256            # the shared per-tile fc ("fc6")
    hidden_dim: int = 1024         # fc7 on the concatenation


@METHODS.register("jigsaw")
class Jigsaw(Method):
    Config = JigsawConfig

    def __init__(self, backbone: nn.Module, cfg: JigsawConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or JigsawConfig()
        perms, self.min_hamming = permutation_set(cfg.n_permutations, cfg.grid ** 2)
        self.register_buffer("perms", torch.from_numpy(perms), persistent=False)
        self.backbone = backbone
        n = cfg.grid ** 2
        self.tile_fc = nn.Sequential(nn.Linear(backbone.embed_dim, cfg.tile_dim),
                                     nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(n * cfg.tile_dim, cfg.hidden_dim),
                                        nn.ReLU(inplace=True),
                                        nn.Linear(cfg.hidden_dim, cfg.n_permutations))
        view_cfg = view_cfg or ViewConfig()
        self.size = view_cfg.size
        self.tile = max(4, int(cfg.tile_fraction * (self.size // cfg.grid)))

    @torch.no_grad()
    def views(self, images):
        x = to_unit_float(images, self.size)
        gray = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.cfg.gray_p).to(x)
        lum = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
        x = gray * lum + (1 - gray) * x
        tiles = grid_cells(x, self.cfg.grid, self.tile)                   # [B, 9, C, t, t]
        tiles = normalize_tiles(upsample_tiles(tiles))
        return [tiles]

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        tiles, labels = shuffle_tiles(views[0], self.perms)
        b, n = tiles.shape[:2]
        f = self.tile_fc(self.backbone(tiles.flatten(0, 1)))             # [B * 9, tile_dim]
        logits = self.classifier(f.view(b, n * f.shape[1]))
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean().item()
        return StepOutput(loss, {"loss": loss.item(), "permutation_acc": acc})

    @property
    def encoder(self) -> nn.Module:
        return self.backbone
