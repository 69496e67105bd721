"""Context prediction: Unsupervised Visual Representation Learning by Context Prediction
(Doersch, Gupta & Efros, ICCV 2015).

Defining idea: given the centre patch of a 3x3 grid and one of its 8 neighbours, predict where the
neighbour was; knowing that a wheel goes under a car needs object understanding.

Algorithm (paper Sec. 3; mmselfsup ``RandomPatchWithLabels``): patches are cropped inside their
grid cells with a gap and random jitter (no continuing edges across patches); "colour dropping"
replaces 2 of the 3 channels of each patch with Gaussian noise (chromatic aberration would
otherwise tell where a patch sits in the lens); each patch is normalised by its own mean; a
late-fusion pair network: the same backbone embeds both patches, their features are
concatenated and classified into 8 positions (labels 0-7 = neighbours in raster order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment.views import ViewConfig, to_unit_float
from . import METHODS
from .base import BatchInfo, Method, StepOutput
from .jigsaw import grid_cells, upsample_tiles

NEIGHBOURS = [0, 1, 2, 3, 5, 6, 7, 8]  # raster positions of the 8 neighbours of cell 4


def centre_and_neighbour(cells: torch.Tensor, generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cells [B, 9, C, t, t] -> (centre patches, neighbour patches, labels [B] in 0..7)."""
    b = cells.shape[0]
    labels = torch.randint(0, 8, (b,), generator=generator).to(cells.device)
    pos = torch.tensor(NEIGHBOURS, device=cells.device)[labels]
    return cells[:, 4], cells[torch.arange(b, device=cells.device), pos], labels


def colour_drop(p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep one random channel of each patch [N, 3, h, w]; the other two become Gaussian noise
    with 1/100 of the kept channel's std (Doersch et al., Sec. 4)."""
    n = p.shape[0]
    keep = torch.randint(0, 3, (n,), generator=generator).to(p.device)
    kept = p[torch.arange(n, device=p.device), keep]                      # [N, h, w]
    sd = kept.flatten(1).std(dim=1).view(n, 1, 1, 1) / 100
    out = torch.randn(p.shape, generator=generator).to(p) * sd
    out[torch.arange(n, device=p.device), keep] = kept
    return out


@dataclass
class RelativePositionConfig:
    grid: int = 3
    patch_fraction: float = 0.75   # patch side / cell side (gap + jitter: 64 of 85 px)
    colour: str = "drop"           # drop (colour dropping) | gray | keep
    hidden_dim: int = 512


@METHODS.register("relative_position")
class RelativePosition(Method):
    Config = RelativePositionConfig

    def __init__(self, backbone: nn.Module, cfg: RelativePositionConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or RelativePositionConfig()
        if cfg.colour not in ("drop", "gray", "keep"):
            raise ValueError(f"method.colour must be drop, gray or keep; got {cfg.colour!r}")
        self.backbone = backbone
        d = backbone.embed_dim
        self.classifier = nn.Sequential(nn.Linear(2 * d, cfg.hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(cfg.hidden_dim, 8))
        view_cfg = view_cfg or ViewConfig()
        self.size = view_cfg.size
        self.patch = max(4, int(cfg.patch_fraction * (self.size // cfg.grid)))

    def _colour(self, p: torch.Tensor) -> torch.Tensor:
        if self.cfg.colour == "drop":
            return colour_drop(p)
        if self.cfg.colour == "gray":
            return (0.299 * p[:, 0:1] + 0.587 * p[:, 1:2] + 0.114 * p[:, 2:3]).expand_as(p)
        return p

    @torch.no_grad()
    def views(self, images):
        x = to_unit_float(images, self.size)
        return [upsample_tiles(grid_cells(x, self.cfg.grid, self.patch))]  # [B, 9, C, p, p]

    def pair(self, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A random neighbour per image; colour handling and per-patch mean subtraction."""
        centre, neigh, labels = centre_and_neighbour(cells)
        centre, neigh = self._colour(centre), self._colour(neigh)
        centre = centre - centre.mean(dim=(1, 2, 3), keepdim=True)
        neigh = neigh - neigh.mean(dim=(1, 2, 3), keepdim=True)
        return centre, neigh, labels

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        centre, neigh, labels = self.pair(views[0])
        n = centre.shape[0]
        f = self.backbone(torch.cat([centre, neigh]))                     # one pass, shared
        logits = self.classifier(torch.cat([f[:n], f[n:]], dim=1))
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean().item()
        return StepOutput(loss, {"loss": loss.item(), "position_acc": acc})

    @property
    def encoder(self) -> nn.Module:
        return self.backbone
