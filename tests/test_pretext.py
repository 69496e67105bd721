import pytest
import torch

from selfsup.methods.rotnet import rotate_batch


def test_rotation_labels_are_exactly_recoverable():
    x = torch.rand(5, 3, 8, 8)
    x4, labels = rotate_batch(x)
    assert x4.shape == (20, 3, 8, 8) and labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    for img, k, i in zip(x4, labels, list(range(5)) * 4):
        # undoing k quarter turns gives the original pixels exactly (no interpolation)
        assert torch.equal(torch.rot90(img, -int(k), dims=(1, 2)), x[i])
        # and no other number of turns does (the images are not rotation-symmetric)
        for j in range(4):
            if j != int(k):
                assert not torch.equal(torch.rot90(img, -j, dims=(1, 2)), x[i])


def test_rotation_90_is_counter_clockwise():
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 2] = 1  # top-right corner
    x4, _ = rotate_batch(x)
    assert x4[1, 0, 0, 0] == 1  # a quarter turn counter-clockwise moves it to the top-left


def test_rotation_needs_square_images():
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.rand(1, 3, 8, 6))


from selfsup.losses.reconstruction import (gaussian_kl, masked_patch_mse, patchify,  # noqa: E402
                                           random_masking, unpatchify)


def test_mae_masking_keeps_the_ratio_per_sample_and_differs_between_samples():
    keep, mask, restore = random_masking(6, 64, 0.75, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (6, 16)
    assert (mask.sum(1) == 48).all()                     # exactly 75% masked in every image
    for i in range(6):                                   # kept indices are the unmasked ones
        assert set(keep[i].tolist()) == set(torch.nonzero(mask[i] == 0).flatten().tolist())
    assert not torch.equal(mask[0], mask[1])
    shuffled = torch.argsort(restore, dim=1)             # restore undoes the shuffle
    assert torch.equal(torch.gather(shuffled, 1, restore), torch.arange(64).expand(6, 64))


def test_patchify_round_trip_and_layout():
    x = torch.rand(2, 3, 8, 8)
    t = patchify(x, 4)
    assert t.shape == (2, 4, 48)
    assert torch.equal(unpatchify(t, 4), x)
    # patch 1 is the top-right 4x4 block; its first entry is pixel (0, 4), channel 0
    assert t[0, 1, 0] == x[0, 0, 0, 4] and t[0, 1, 1] == x[0, 1, 0, 4]


def test_masked_patch_mse_covers_only_masked_patches():
    g = torch.Generator().manual_seed(0)
    target, pred = torch.randn(2, 4, 12, generator=g), torch.randn(2, 4, 12, generator=g)
    mask = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    loss = masked_patch_mse(pred, target, mask, norm_pix=False)
    expected = sum(((pred[b, i] - target[b, i]) ** 2).mean() for b, i in [(0, 0), (0, 3), (1, 1)]) / 3
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    pred2 = pred.clone()
    pred2[mask == 0] += 100                              # visible patches do not count
    assert masked_patch_mse(pred2, target, mask, norm_pix=False).item() == pytest.approx(loss.item())
    # norm_pix: each target patch is standardised by its own mean and (unbiased) variance
    t = target[0, 0]
    z = (t - t.mean()) / (t.var() + 1e-6) ** 0.5
    one = torch.tensor([[1.0, 0, 0, 0]])
    assert masked_patch_mse(z[None, None].expand(1, 4, 12), target[:1], one).item() == \
        pytest.approx(0.0, abs=1e-10)


def test_vae_kl_matches_closed_form_and_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    ref = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(gaussian_kl(mu, logvar), ref, atol=1e-6)
    assert gaussian_kl(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0


def test_mae_encoder_sees_only_visible_patches():
    from selfsup import backbones
    from selfsup.methods import METHODS

    vit = backbones.create("vit_tiny", width=0.25, image_size=16, patch_size=4, depth=1)
    seen = []
    vit.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    mae = METHODS.get("mae")(vit, METHODS.get("mae").Config(decoder_dim=16, decoder_depth=1,
                                                            decoder_heads=2))
    pred, mask = mae.reconstruct(torch.randn(3, 3, 16, 16))
    assert seen == [(3, 1 + 4, vit.embed_dim)]            # class token + 25% of 16 patches
    assert pred.shape == (3, 16, 48) and (mask.sum(1) == 12).all()
    pics = mae.pictures(torch.randn(2, 3, 16, 16))
    assert set(pics) == {"input", "masked", "reconstruction"}
    assert all(v.shape == (2, 3, 16, 16) and v.min() >= 0 and v.max() <= 1 for v in pics.values())


def test_noises_change_what_their_mask_says():
    from selfsup.augment.noise import gaussian_noise, masking_noise, salt_and_pepper

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 0.8 + 0.1              # no pixel is already 0 or 1
    y, m = masking_noise(x, 0.3, g)
    assert abs(m.mean().item() - 0.3) < 0.03
    assert torch.equal(y * m, torch.zeros_like(y)) and torch.equal(y * (1 - m), x * (1 - m))
    y, m = salt_and_pepper(x, 0.2, g)
    changed = y[(m.expand_as(y)) > 0]
    assert set(changed.unique().tolist()) <= {0.0, 1.0} and torch.equal(y * (1 - m), x * (1 - m))
    y, m = gaussian_noise(x, 0.1, g)
    assert m.mean() == 1 and 0.05 < (y - x).std() < 0.15


@pytest.mark.parametrize("name", ["denoising_ae", "vae"])
def test_generative_pretraining_saves_pictures(name, tmp_path):
    from PIL import Image

    from selfsup.config import load_config
    from selfsup.pretrain import pretrain

    cfg = load_config("simclr_digits", [f"method.name={name}", "train.steps=2",
                                        "train.progress=false", "eval.monitor=false",
                                        "train.batch_size=16"])
    run, summary = pretrain(cfg, tmp_path / name)
    png = Image.open(run / "pictures.png")
    rows = (run / "pictures.txt").read_text()
    assert png.size[0] > 8 * 16 and "reconstruction" in rows
    assert summary["pictures"].endswith("pictures.png")


def test_inpainting_masks_and_border_weights():
    from selfsup.methods.inpainting import loss_weights, region_masks

    m = region_masks(2, 8, "center", 0.5)
    assert m[0, 0].sum() == 16 and m[0, 0, 2:6, 2:6].all()
    w = loss_weights(m, overlap=1, overlap_weight=10.0)
    assert w[0, 0, 3, 3] == 1 and w[0, 0, 1, 1] == 10 and w[0, 0, 1, 4] == 10
    assert w[0, 0, 0, 0] == 0 and w[0, 0, 7, 7] == 0        # outside the grown region
    rb = region_masks(3, 16, "random_blocks", 0.5, 2, torch.Generator().manual_seed(0))
    assert rb.shape == (3, 1, 16, 16) and (rb.sum((1, 2, 3)) >= 16).all()  # >= one 4x4 block


def test_inpainting_adversarial_terms_reach_only_their_own_networks():
    """The discriminator's gradient is exactly that of its own loss: the generator's
    adversarial term does not leak into it."""
    import torch.nn.functional as F

    from selfsup import backbones
    from selfsup.methods import METHODS
    from selfsup.methods.inpainting import loss_weights

    torch.manual_seed(0)
    cls = METHODS.get("inpainting")
    m = cls(backbones.create("convnet", width=0.25), cls.Config(mask="center", adv_weight=0.5))
    x = torch.randn(4, 3, 32, 32)
    m.training_step([x], 0.0).loss.backward()
    got = [p.grad.clone() for p in m.discriminator.parameters()]
    m.zero_grad()
    mask, _, pred = m.inpaint(x)
    grown = (loss_weights(mask, 1, 10.0) > 0).float()
    fake = (x * (1 - grown) + pred * grown).detach()
    d_real, d_fake = m.discriminator(x), m.discriminator(fake)
    d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
              + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    want = torch.autograd.grad(d_loss, list(m.discriminator.parameters()))
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-6)


def test_lab_round_trip_and_ab_bins():
    import kornia.color

    from selfsup.methods.colorization import ab_bins

    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(kornia.color.lab_to_rgb(kornia.color.rgb_to_lab(x)), x, atol=1e-4)
    c = ab_bins(10)
    assert 250 <= len(c) <= 313 and (c % 10 == 0).all()
    assert (c[:, 0].abs() <= 110).all() and (c[:, 1].abs() <= 120).all()


def test_soft_encoding_rebalancing_and_annealed_mean():
    from selfsup.methods.colorization import annealed_mean, rebalance_weights, soft_encode

    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [50.0, 50.0],
                            [-10.0, 0.0]])
    t = soft_encode(torch.tensor([[1.0, 1.0]]), centers, k=5, sigma=5.0)
    assert t.sum().item() == pytest.approx(1.0) and (t > 0).sum() == 5 and t[0, 4] == 0
    d2 = torch.tensor([2.0, 82.0, 82.0, 162.0, 0, 122.0])
    w = torch.exp(-d2 / 50)
    w[4] = 0
    assert torch.allclose(t[0], w / w.sum(), atol=1e-6)
    prior = torch.tensor([0.7, 0.2, 0.1])
    rw = rebalance_weights(prior, 0.5)
    assert (prior * rw).sum().item() == pytest.approx(1.0)
    assert rw[2] > rw[1] > rw[0]                       # rare colours weigh more
    logits = torch.tensor([2.0, 1.0, 0.0, 0.0, 0.0, 0.0]).view(1, 6, 1, 1)
    mode = annealed_mean(logits, centers, 0.01)[0, :, 0, 0]
    assert torch.allclose(mode, centers[0], atol=1e-3)
    p = torch.softmax(logits.flatten(), 0)
    assert torch.allclose(annealed_mean(logits, centers, 1.0)[0, :, 0, 0], p @ centers, atol=1e-5)


def test_permutation_set_has_its_stated_minimum_hamming_distance():
    from selfsup.methods.jigsaw import permutation_set

    perms, dmin = permutation_set(100)
    assert perms.shape == (100, 9) and len({tuple(p) for p in perms}) == 100
    assert all(sorted(p) == list(range(9)) for p in perms)
    d = (perms[:, None] != perms[None]).sum(2)
    assert d[~torch.eye(100, dtype=torch.bool).numpy()].min() == dmin >= 6


def test_jigsaw_labels_are_exactly_recoverable():
    from selfsup.methods.jigsaw import grid_cells, permutation_set, shuffle_tiles

    x = torch.rand(4, 3, 12, 12)
    cells = grid_cells(x, 3, 4, jitter=False)               # exact 4x4 cells, raster order
    assert torch.equal(cells[0, 5], x[0, :, 4:8, 8:12])
    perms = torch.from_numpy(permutation_set(10)[0])
    shuffled, labels = shuffle_tiles(cells, perms, torch.Generator().manual_seed(0))
    for b in range(4):
        order = perms[labels[b]]
        for j in range(9):                                   # position j holds tile order[j]
            assert torch.equal(shuffled[b, j], cells[b, order[j]])
        unshuffled = torch.empty_like(shuffled[b])
        unshuffled[order] = shuffled[b]
        assert torch.equal(unshuffled, cells[b])


def test_jigsaw_tiles_jitter_inside_their_cells():
    from selfsup.methods.jigsaw import grid_cells

    x = torch.arange(32 * 32, dtype=torch.float).view(1, 1, 32, 32).expand(2, 3, 32, 32)
    tiles = grid_cells(x, 3, 8, torch.Generator().manual_seed(1))
    for k in range(9):
        y, xx = divmod(int(tiles[0, k, 0, 0, 0]), 32)       # top-left pixel's coordinates
        assert (k // 3) * 10 <= y <= (k // 3) * 10 + 2 + 2   # crop offset (<= 2) + jitter (<= 2)
        assert (k % 3) * 10 <= xx <= (k % 3) * 10 + 2 + 2


def test_relative_position_labels_are_recoverable_and_colour_drop():
    from selfsup.methods.jigsaw import grid_cells
    from selfsup.methods.relative_position import NEIGHBOURS, centre_and_neighbour, colour_drop

    x = torch.rand(6, 3, 12, 12)
    cells = grid_cells(x, 3, 4, jitter=False)
    centre, neigh, labels = centre_and_neighbour(cells, torch.Generator().manual_seed(0))
    for b in range(6):
        assert torch.equal(centre[b], x[b, :, 4:8, 4:8])
        r, c = divmod(NEIGHBOURS[int(labels[b])], 3)
        assert torch.equal(neigh[b], x[b, :, r * 4:r * 4 + 4, c * 4:c * 4 + 4])
    p = torch.rand(5, 3, 8, 8)
    d = colour_drop(p, torch.Generator().manual_seed(0))
    kept = [(d[i] == p[i]).flatten(1).all(1) for i in range(5)]
    assert all(k.sum() == 1 for k in kept)                   # exactly one channel survives
    assert all(d[i][~kept[i]].std() < p[i].std() / 20 for i in range(5))


def test_igpt_palette_and_quantisation():
    from selfsup.methods.igpt import fit_palette, quantize

    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    idx = torch.randint(0, 4, (2, 6, 6), generator=torch.Generator().manual_seed(0))
    img = colours[idx].permute(0, 3, 1, 2)                      # [2, 3, 6, 6]
    pal = fit_palette(img.permute(0, 2, 3, 1).reshape(-1, 3), 4)
    assert torch.cdist(pal, colours).min(dim=0).values.max() < 1e-5   # k-means finds the 4
    ids = quantize(img, pal)
    assert torch.allclose(pal[ids].view(2, 6, 6, 3).permute(0, 3, 1, 2), img, atol=1e-5)


def test_igpt_pretraining_on_digits_fits_a_palette_and_draws(tmp_path):
    from selfsup.config import load_config
    from selfsup.pretrain import pretrain

    cfg = load_config("simclr_digits", ["method.name=igpt", "method.resolution=8",
                                        "method.n_colors=8", "method.dim=16", "method.depth=2",
                                        "method.heads=2", "train.steps=2", "train.batch_size=16",
                                        "train.progress=false", "eval.monitor=false"])
    run, summary = pretrain(cfg, tmp_path / "igpt")
    assert "predicted" in (run / "pictures.txt").read_text()
    assert summary["eval"]["knn20_acc"] > 0.1                # features exist and are usable


@pytest.mark.parametrize("name", ["convnet", "resnet18", "wrn28_2"])
def test_stage_encoder_last_stage_equals_the_backbone(name):
    from selfsup import backbones
    from selfsup.backbones.stages import StageEncoder, stage_modules

    torch.manual_seed(0)
    b = backbones.create(name, width=0.25).eval()
    n = len(stage_modules(b))
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(StageEncoder(b, n)(x), b(x), atol=1e-5)
    mid = StageEncoder(b, 2)
    assert mid(x).shape == (2, mid.embed_dim) and mid.embed_dim < b.embed_dim


@pytest.mark.parametrize("name,extra", [
    ("colorization", []),
    ("igpt", ["method.resolution=8", "method.n_colors=8", "method.dim=16", "method.depth=2",
              "method.heads=2"])])
def test_wrapped_encoders_reload_complete(name, extra, tmp_path):
    """Encoders that are not a bare backbone (L-channel input, colour palette + transformer) are
    saved and reloaded whole, and give the same features."""
    from selfsup.config import load_config
    from selfsup.pretrain import load_encoder, probe_encoder, pretrain
    from selfsup.train.checkpoint import load_checkpoint

    cfg = load_config("simclr_digits", [f"method.name={name}", *extra, "train.steps=2",
                                        "train.batch_size=16", "train.progress=false",
                                        "eval.monitor=false"])
    run, _ = pretrain(cfg, tmp_path / name)
    enc, _ = load_encoder(run)
    from selfsup.pretrain import build_method

    m = build_method(cfg)
    m.load_state_dict(load_checkpoint(run / "checkpoints" / "last.pt")["model"])
    x = torch.randn(4, 3, 16, 16)
    enc.eval(), m.eval()
    assert torch.allclose(enc(x), m.encoder(x), atol=1e-5)
    if name == "colorization":
        assert probe_encoder(enc, 2)(x).shape == (4, 64)   # L input, stage 2 of the convnet
