"""SelfPatch (Yun et al., 2022): neighbour indices (wrap-around at the borders), top-k selection,
the patch loss, and a training step on a ViT."""

import torch
import torch.nn.functional as F

from selfsup import backbones
from selfsup.augment import ViewConfig
from selfsup.losses.clustering import selfpatch_loss
from selfsup.methods.selfpatch import (SelfPatch, SelfPatchConfig, SelfPatchHead, neighbour_index,
                                       top_k_neighbours)


def test_neighbour_indices_inside_and_at_the_borders():
    idx = neighbour_index(4)
    assert idx.shape == (16, 8)
    # patch (1, 1) = 5: its 8 neighbours, no wrap needed
    assert sorted(idx[5].tolist()) == [0, 1, 2, 4, 6, 8, 9, 10]
    # corner (0, 0): rows -1 -> 3 and columns -1 -> 3 wrap around
    assert sorted(idx[0].tolist()) == sorted([15, 12, 13, 3, 1, 7, 4, 5])
    # bottom-right corner (3, 3) = 15 wraps to row 0 and column 0
    assert sorted(idx[15].tolist()) == sorted([10, 11, 8, 14, 12, 2, 3, 0])
    # edge (0, 2) = 2: the row above is row 3
    assert sorted(idx[2].tolist()) == sorted([13, 14, 15, 1, 3, 5, 6, 7])
    # never the patch itself, always 8 distinct patches on a grid >= 3
    for g in (3, 5, 8):
        ix = neighbour_index(g)
        assert all(i not in row.tolist() and len(set(row.tolist())) == 8 for i, row in enumerate(ix))


def test_top_k_neighbours_are_the_most_similar_by_cosine():
    torch.manual_seed(0)
    tokens = torch.randn(2, 16, 6)
    got = top_k_neighbours(tokens, 4)
    idx = neighbour_index(4)
    for b in range(2):
        for i in range(16):
            sims = [F.cosine_similarity(tokens[b, i], tokens[b, j], dim=0).item() for j in idx[i]]
            best = [idx[i][j].item() for j in sorted(range(8), key=lambda j: -sims[j])[:4]]
            assert torch.allclose(got[b, i], tokens[b, best], atol=1e-6)


def test_patch_loss_matches_the_formula():
    torch.manual_seed(0)
    s, t, c = torch.randn(2, 5, 7), torch.randn(2, 5, 7), torch.randn(7)
    ref = 0.0
    for b in range(2):
        for i in range(5):
            p = F.softmax((t[b, i] - c) / 0.04, 0)
            ref += -(p * F.log_softmax(s[b, i] / 0.1, 0)).sum() / 10
    assert torch.allclose(selfpatch_loss(s, t, c, 0.1, 0.04), ref, atol=1e-5)


def test_teacher_aggregates_each_patch_from_its_neighbours():
    torch.manual_seed(0)
    head = SelfPatchHead(dim=8, heads=2, depth=2, k=4).eval()
    patches = torch.randn(1, 9, 8)
    cls, agg = head(patches, aggregate=True)
    assert cls.shape == (1, 8) and agg.shape == (1, 9, 8)
    # each patch's target is class attention of the query over its top-4 neighbours (naive loop)
    for i in (0, 4, 8):
        q = head.query
        nb = top_k_neighbours(patches, 4)[:, i]
        for blk in head.blocks:
            q = blk(nb, q)
        assert torch.allclose(head.norm(q[:, 0]), agg[:, i], atol=1e-5)
    # the image token attends over every patch
    moved = patches.clone()
    moved[0, 8] = torch.randn(8)   # (a constant shift would vanish in the LayerNorm)
    assert not torch.allclose(head(moved, aggregate=True)[0], cls)
    student_cls, student_patches = head(patches)
    assert torch.allclose(student_cls, cls) and torch.allclose(student_patches, head.norm(patches))


def test_training_step_with_local_crops_and_encoder_outputs():
    torch.manual_seed(0)
    vit = backbones.create("vit_tiny", width=0.25, image_size=16, patch_size=4, depth=2)
    cfg = SelfPatchConfig(out_dim=32, hidden_dim=16, bottleneck_dim=8, patch_out_dim=16,
                          n_local_crops=2, local_size=12)
    method = SelfPatch(vit, cfg, ViewConfig(size=16))
    views = method.views(torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8))
    assert [v.shape[-1] for v in views] == [16, 16, 12, 12]
    out = method.training_step(views, 0.5)
    assert {"loss_image", "loss_patch"} <= set(out.logs)
    assert abs(out.loss.item() - out.logs["loss_image"] - 0.1 * out.logs["loss_patch"]) < 1e-4
    out.loss.backward()
    assert method.patch_head.mlp[0].weight.grad is not None
    assert method.ca.query.grad is not None
    method.after_optimizer_step(0.5)
    assert method.patch_center.abs().sum() > 0 and method.center.abs().sum() > 0
    x = torch.randn(3, 3, 16, 16)
    assert method.encoder(x).shape == (3, vit.embed_dim)
    assert method.encoder.forward_map(x).shape == (3, vit.embed_dim, 4, 4)


def test_official_schedule_centre_and_blocks():
    """As alinlab/SelfPatch: the patch term uses the image term's warming-up teacher temperature,
    the image centre moves towards the teacher outputs of every crop (locals included), and the
    class-attention blocks have no LayerScale unless asked for."""
    torch.manual_seed(0)
    vit = backbones.create("vit_tiny", width=0.25, image_size=16, patch_size=4, depth=2)
    cfg = SelfPatchConfig(out_dim=32, hidden_dim=16, bottleneck_dim=8, patch_out_dim=16,
                          n_local_crops=2, local_size=12, head_bn=True)
    method = SelfPatch(vit, cfg, ViewConfig(size=16))
    assert all(b.gamma1 is None and b.gamma2 is None for b in method.ca.blocks)
    assert SelfPatchHead(8, 2, layer_scale=0.1).blocks[0].gamma1 is not None
    views = method.views(torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8))
    for progress in (0.0, 0.15, 0.6):
        out = method.training_step(views, progress)
        tt = method.teacher_temp(progress)
        assert out.logs["patch_teacher_temp"] == out.logs["teacher_temp"] == tt
    assert method.teacher_temp(0.0) == 0.04 and method.teacher_temp(0.6) == 0.07
    t_cls, _ = method._teacher_out
    assert len(t_cls) == 4                       # 2 global + 2 local crops
    expected = 0.1 * torch.cat(t_cls).mean(0)    # centre starts at 0, momentum 0.9
    method.after_optimizer_step(0.6)
    assert torch.allclose(method.center, expected, atol=1e-6)
    # a fixed patch temperature stays available (the earlier behaviour)
    fixed = SelfPatch(vit, SelfPatchConfig(out_dim=32, hidden_dim=16, bottleneck_dim=8,
                                           patch_out_dim=16, n_local_crops=2, local_size=12,
                                           patch_teacher_temp=0.04), ViewConfig(size=16))
    assert fixed.training_step(views, 0.6).logs["patch_teacher_temp"] == 0.04


def test_head_batchnorm_takes_tokens():
    """The patch head runs on [B, n, D] tokens: with BatchNorm they pass as B * n rows."""
    from selfsup.methods.dino import DINOHead
    torch.manual_seed(0)
    head = DINOHead(8, 16, 12, 4, bn=True)
    x = torch.randn(2, 5, 8)
    assert torch.allclose(head(x), head(x.reshape(10, 8)).reshape(2, 5, 16), atol=1e-6)
