"""The procedural renderer (data/render.py) against analytic geometry, and the losses of the
synthetic-imagery multitask pretext against hand-computed values."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.data.render import NO_HIT, Scenes, camera_rays, random_scenes, render
from selfsup.losses.geometry import contour_loss, depth_loss, gan_bce, normal_loss

INF = float("inf")


def _scene(ground=INF, wall=INF, spheres=(), boxes=()):
    """One scene from explicit primitives: spheres (cx, cy, cz, r), boxes (cx, cy, cz, hx, hy,
    hz, yaw)."""
    s, k = max(1, len(spheres)), max(1, len(boxes))
    sc = torch.zeros(1, s, 3)
    sr = torch.ones(1, s)
    for i, (x, y, z, r) in enumerate(spheres):
        sc[0, i] = torch.tensor([x, y, z])
        sr[0, i] = r
    bc, bh, by = torch.zeros(1, k, 3), torch.ones(1, k, 3), torch.zeros(1, k)
    for i, (x, y, z, hx, hy, hz, yaw) in enumerate(boxes):
        bc[0, i], bh[0, i], by[0, i] = torch.tensor([x, y, z]), torch.tensor([hx, hy, hz]), yaw
    n = 2 + s + k
    return Scenes(ground=torch.tensor([ground]), wall=torch.tensor([wall]), sphere_c=sc,
                  sphere_r=sr, sphere_on=torch.arange(s)[None] < len(spheres), box_c=bc,
                  box_h=bh, box_yaw=by, box_on=torch.arange(k)[None] < len(boxes),
                  albedo=torch.full((1, n, 3), 0.5), pattern=torch.zeros(1, n, dtype=torch.long),
                  scale=torch.full((1, n), 0.5), light=torch.tensor([[0.0, 1.0, 0.0]]),
                  ambient=torch.tensor([0.3]))


def _pixel_dirs(size, fov=60.0):
    """Unnormalised ray directions (x, y, 1) through the pixel centres, float64, [size, size, 3]."""
    f = (size / 2) / math.tan(math.radians(fov) / 2)
    c = (np.arange(size) + 0.5 - size / 2) / f
    y, x = np.meshgrid(-c, c, indexing="ij")
    return np.stack([x, y, np.ones_like(x)], -1)


def test_the_depth_of_a_sphere_is_the_analytic_one_and_misses_are_marked():
    size, (cx, cy, cz, r) = 32, (0.3, -0.2, 5.0, 1.2)
    out = render(_scene(spheres=[(cx, cy, cz, r)]), size, supersample=1)
    v = _pixel_dirs(size)
    d = v / np.linalg.norm(v, axis=-1, keepdims=True)
    c = np.array([cx, cy, cz])
    b = d @ c
    disc = b ** 2 - (c @ c - r ** 2)
    hit = disc >= 0
    t = b - np.sqrt(np.clip(disc, 0, None))
    want = np.where(hit, t * d[..., 2], NO_HIT)
    got = out["depth"][0, 0].double().numpy()
    assert hit.sum() > 100 and (~hit).sum() > 100
    assert np.array_equal(out["ids"][0].numpy() == 2, hit)    # id 2: the first sphere
    assert np.abs(got[hit] - want[hit]).max() < 1e-4
    assert (got[~hit] == NO_HIT).all()
    # the sphere's normal at each hit is (p - c) / r, facing the camera
    p = d * t[..., None]
    n_want = (p - c) / r
    n_got = out["normals"][0].permute(1, 2, 0).double().numpy()
    assert np.abs(n_got[hit] - n_want[hit]).max() < 1e-3


def test_the_depth_of_the_ground_and_the_wall_are_analytic():
    size, g, w = 32, 1.3, 8.0
    out = render(_scene(ground=g, wall=w), size, supersample=1)
    y = _pixel_dirs(size)[..., 1]
    # a ray (x, y, 1) meets y = -g at z = g / -y (below the horizon) and z = w at the wall
    z_ground = np.where(y < 0, g / np.maximum(-y, 1e-12), np.inf)
    want = np.minimum(z_ground, w)
    got = out["depth"][0, 0].double().numpy()
    assert np.abs(got - want).max() < 1e-3 * w
    ids = out["ids"][0].numpy()
    assert ((ids == 0) == (z_ground < w)).all() and ((ids == 1) == (z_ground >= w)).all()
    n = out["normals"][0].permute(1, 2, 0).numpy()
    assert np.allclose(n[ids == 0], [0, 1, 0], atol=1e-6)
    assert np.allclose(n[ids == 1], [0, 0, -1], atol=1e-6)


def test_a_box_seen_face_on_has_the_depth_of_its_front_face():
    out = render(_scene(boxes=[(0.0, 0.0, 5.0, 1.0, 1.0, 0.5, 0.0)]), 32, supersample=1)
    ids = out["ids"][0]
    front = ids == 3             # ground, wall, one (absent) sphere slot, then the box
    assert front.sum() > 50
    assert torch.allclose(out["depth"][0, 0][front], torch.tensor(4.5), atol=1e-4)
    assert torch.allclose(out["normals"][0].permute(1, 2, 0)[front], torch.tensor([0.0, 0, -1]),
                          atol=1e-5)


def test_normals_are_unit_and_agree_with_the_depth_map():
    """Random scenes (tilted cameras included): the normals are unit vectors, and away from
    contours they match the normal of the surface that the back-projected depth map draws."""
    size = 64
    out = render(random_scenes(6, generator=torch.Generator().manual_seed(3)), size, supersample=1)
    n = out["normals"].permute(0, 2, 3, 1).double().numpy()
    assert np.abs(np.linalg.norm(n, axis=-1) - 1).max() < 1e-4
    pts = out["depth"][:, 0].double().numpy()[..., None] * _pixel_dirs(size)[None]
    dx = pts[:, 1:-1, 2:] - pts[:, 1:-1, :-2]
    dy = pts[:, 2:, 1:-1] - pts[:, :-2, 1:-1]
    est = np.cross(dx, dy)
    est /= np.linalg.norm(est, axis=-1, keepdims=True)
    ids = out["ids"].numpy()
    same = np.ones_like(ids[:, 1:-1, 1:-1], dtype=bool)
    for sy, sx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        same &= ids[:, sy:sy + size - 2, sx:sx + size - 2] == ids[:, 1:-1, 1:-1]
    cos = np.abs((est * n[:, 1:-1, 1:-1]).sum(-1))[same]
    assert same.sum() > 10000
    assert np.median(cos) > 0.9999 and np.quantile(cos, 0.02) > 0.99


def test_contours_mark_every_occlusion_and_nothing_inside_a_surface():
    """A sphere before a wall: each neighbour pair across the silhouette (a depth jump of
    metres) has its nearer pixel marked; no pixel whose 4 neighbours see its own surface is."""
    out = render(_scene(wall=9.0, spheres=[(0.2, 0.1, 4.0, 1.0)]), 32, supersample=1)
    depth, ids, c = out["depth"][0, 0], out["ids"][0], out["contours"][0, 0].bool()
    jumps = 0
    for a, b in (((slice(None), slice(0, -1)), (slice(None), slice(1, None))),
                 ((slice(0, -1), slice(None)), (slice(1, None), slice(None)))):
        da, db = depth[a], depth[b]
        jump = (da - db).abs() > 1.0
        jumps += int(jump.sum())
        near_a = jump & (da < db)
        near_b = jump & (db < da)
        assert c[a][near_a].all() and c[b][near_b].all()
        assert not c[a][jump & (da > db)].any() and not c[b][jump & (db > da)].any()
    assert jumps > 10
    pad = F.pad(ids[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
    interior = ((pad[:-2, 1:-1] == ids) & (pad[2:, 1:-1] == ids) & (pad[1:-1, :-2] == ids)
                & (pad[1:-1, 2:] == ids))
    assert not c[interior].any()


def test_random_scenes_are_reproducible_and_in_range():
    a = render(random_scenes(4, generator=torch.Generator().manual_seed(0)), 16)
    b = render(random_scenes(4, generator=torch.Generator().manual_seed(0)), 16)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert a["image"].min() >= 0 and a["image"].max() <= 1 and a["image"].std() > 0.05
    assert (a["depth"] > 0).all() and (a["depth"] < NO_HIT).all()   # the wall stops every ray
    assert 0.005 < a["contours"].mean() < 0.3
    assert camera_rays(8).shape == (64, 3)


def test_geometry_losses_against_hand_computed_values():
    pred = torch.tensor([1.0, 2.0, 4.0, 0.0]).view(1, 1, 2, 2)
    tgt = torch.tensor([0.0, 2.0, 2.0, 1.0]).view(1, 1, 2, 2)
    # diffs 1, 0, 2, -1: MSE (1 + 0 + 4 + 1) / 4 = 1.5; mean 0.5 -> 0.5 (1.5 + 0.5 x 0.25)
    assert torch.isclose(depth_loss(pred, tgt), torch.tensor(0.5 * (1.5 + 0.125)))
    assert depth_loss(tgt, tgt) == 0
    n = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).T.reshape(1, 3, 1, 2)
    p = torch.tensor([[0.0, 0.0, 2.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2)
    assert torch.isclose(normal_loss(p, n), torch.tensor(0.5))       # cos 1 and cos 0
    logits = torch.tensor([2.0, -1.0, 0.0, 3.0]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 2, 2)
    bce = [math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0)), math.log(2.0),
           math.log1p(math.exp(3.0))]
    want = 3.0 * sum(bce) / 4                     # 1 contour pixel of 4: weight (4 - 1) / 1
    assert abs(contour_loss(logits, target).item() - want) < 1e-6
    assert torch.isclose(gan_bce(torch.tensor([0.0]), True), torch.tensor(math.log(2.0)))
