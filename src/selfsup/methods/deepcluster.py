"""DeepCluster-v2 (Caron et al., 2020, SwAV paper App. D; after DeepCluster, Caron et al., 2018).

Defining idea: alternate between clustering the features of the whole dataset with k-means and
training the network to predict each image's cluster (pseudo-class) from its augmented views.

Algorithm (facebookresearch/swav main_deepclusterv2.py), for each of ``n_heads`` clusterings of
K clusters:
    before training: memory[c, i] = normalize(h(f(view_c(x_i)))) for both global crops of every
        image, by a forward pass without gradients over one epoch (``init_memory``)
    at the start of every epoch:
        centroids, a = spherical k-means(memory of head h's crop, K)   # an empty cluster keeps
        prototypes <- centroids                                         # its previous centroid
        images not refreshed during the last epoch get no pseudo-class (ignored)
    loss = mean over crops and heads of CE(normalize(z) @ prototypes^T / 0.1, a[i])
    after each step: memory[:, batch] = this step's embeddings
The prototypes are never trained (the official ``freeze_prototypes_niters`` default, 1e10).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import ViewAugment, ViewConfig
from ..heads.mlp import projection_head
from ..nn.distributed import all_reduce_sum, gather, world_size
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@dataclass
class DeepClusterV2Config:
    hidden_dim: int = 2048
    out_dim: int = 128
    n_prototypes: int = 3000
    n_heads: int = 3
    temperature: float = 0.1
    kmeans_iterations: int = 10


@torch.no_grad()
def spherical_kmeans(x: torch.Tensor, k: int, iterations: int, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [N, D] l2-normalised. Returns (centroids [k, D] normalised, assignments [N]).
    Initialised with k random points; an empty cluster keeps its previous centroid (as the
    official cluster_memory does), so no centroid is ever NaN."""
    n = x.shape[0]
    centroids = x[torch.randperm(n, generator=generator)[:k]].clone()
    assign = torch.zeros(n, dtype=torch.long, device=x.device)
    for it in range(iterations + 1):
        assign = (x @ centroids.t()).argmax(1)                      # E step
        if it == iterations:
            break
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)  # M step
        filled = torch.bincount(assign, minlength=k) > 0
        centroids[filled] = F.normalize(sums[filled], dim=1)
    return centroids, assign


@METHODS.register("deepcluster_v2")
class DeepClusterV2(Method):
    Config = DeepClusterV2Config

    def __init__(self, backbone: nn.Module, cfg: DeepClusterV2Config | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DeepClusterV2Config()
        self.backbone = backbone
        self.projector = projection_head(backbone.embed_dim, cfg.hidden_dim, cfg.out_dim)
        self.prototypes = nn.ModuleList(nn.Linear(cfg.out_dim, cfg.n_prototypes, bias=False)
                                        for _ in range(cfg.n_heads))
        for p in self.prototypes:
            p.weight.requires_grad_(False)   # set from the centroids, never trained
        self.augment = ViewAugment(view_cfg or ViewConfig())
        self.setup(0)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def setup(self, num_samples: int) -> None:
        """Allocate the per-image memory (called by the loop with the dataset size)."""
        c = self.cfg
        self.register_buffer("memory", torch.zeros(2, num_samples, c.out_dim))
        self.register_buffer("assignments", torch.full((c.n_heads, num_samples), -1,
                                                       dtype=torch.long))
        self.register_buffer("refreshed", torch.zeros(num_samples, dtype=torch.bool))
        self.register_buffer("clusterings", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps_per_epoch", torch.zeros((), dtype=torch.long))
        self.register_buffer("clusters_used", torch.zeros((), dtype=torch.long))

    def views(self, images):
        return [self.augment(images), self.augment(images)]

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        if batch is None or self.memory.shape[1] == 0:
            raise ValueError("deepcluster_v2 needs setup(num_samples) and batch indices")
        n = views[0].shape[0]
        z = F.normalize(self.projector(self.backbone(torch.cat(views))), dim=1)   # [2N, D]
        targets = self.assignments[:, batch.index]                               # [H, N]
        losses = []
        for h, proto in enumerate(self.prototypes):
            scores = z @ proto.weight.t() / self.cfg.temperature                # [2N, K]
            losses.append(F.cross_entropy(scores, targets[h].repeat(2), ignore_index=-1,
                                          reduction="sum"))
        # normalised by the number of assigned crops in the *global* batch (divided by the world
        # size, since DDP averages the ranks' gradients): exact under torch.distributed
        labeled = all_reduce_sum((targets[0] >= 0).sum() * 2).float() / world_size()
        loss = torch.stack(losses).sum() / (labeled.clamp(min=1) * len(self.prototypes))
        self._pending = (batch.index, z.detach().view(2, n, -1))
        logs = {"loss": loss.item(), "clusterings": float(self.clusterings),
                "assigned": float((targets[0] >= 0).float().mean()),
                "clusters_used": float(self.clusters_used)}
        return StepOutput(loss, logs, embeddings=z[:n].detach())

    @torch.no_grad()
    def _remember(self, index: torch.Tensor, z: torch.Tensor) -> None:
        """memory[:, index] = z ([2, N, D]); every rank writes every rank's crops, so all hold
        the same memory (and clusterings)."""
        index = gather(index)
        z = gather(z.transpose(0, 1).contiguous()).transpose(0, 1)       # [2, global N, D]
        self.memory[:, index] = z
        self.refreshed[index] = True

    @torch.no_grad()
    def init_memory(self, batches, steps_per_epoch: int) -> None:
        """Fill the memory before training (swav's init_memory): ``batches`` yields (dataset
        indices, uint8 images) over one epoch; then the first clustering, so that the first
        training step already has pseudo-classes. ``steps_per_epoch``: when to re-cluster."""
        for index, images in batches:
            v = self.views(images)
            z = F.normalize(self.projector(self.backbone(torch.cat(v))), dim=1)
            self._remember(index, z.view(2, len(index), -1))
        self.steps_per_epoch.fill_(steps_per_epoch)
        self.cluster()

    @torch.no_grad()
    def after_optimizer_step(self, progress: float) -> None:
        if self._pending is None:
            return
        index, z = self._pending
        self._pending = None
        self._remember(index, z)
        self.steps_done += 1
        spe = int(self.steps_per_epoch)
        # the start of every epoch; without init_memory (a loop of one's own) the only signal
        # is a memory refreshed in full
        if (spe and int(self.steps_done) % spe == 0) or (not spe and bool(self.refreshed.all())):
            self.cluster()

    @torch.no_grad()
    def cluster(self) -> None:
        """k-means on the memory rows refreshed since the last clustering, one clustering per
        head (alternating the crop used); the other images get no pseudo-class (-1)."""
        rows = self.refreshed.nonzero().squeeze(1)
        if len(rows) == 0:
            return
        g = torch.Generator(device="cpu").manual_seed(int(self.clusterings) + 1)
        k = min(self.cfg.n_prototypes, len(rows))
        for h, proto in enumerate(self.prototypes):
            feats = self.memory[h % 2, rows].cpu()
            centroids, assign = spherical_kmeans(feats, k, self.cfg.kmeans_iterations, g)
            proto.weight.zero_()
            proto.weight[:k] = centroids.to(proto.weight)
            self.assignments[h].fill_(-1)
            self.assignments[h, rows] = assign.to(self.assignments)
            if h == 0:
                self.clusters_used.fill_(len(torch.unique(assign)))
        self.refreshed.zero_()
        self.clusterings += 1

    @property
    def encoder(self):
        return self.backbone
