"""A small procedural renderer: random 3D scenes ray-cast in torch, batched, with exact depth,
surface normals and occlusion contours for every pixel (Ren & Lee, CVPR 2018 learn these three
from a game engine's renders; this stands in for the engine).

Scene: a pinhole camera at the origin looking down +z (y up, ``fov`` degrees across; random
scenes tilt and roll it a little), a ground
plane ``y = -ground``, a back wall ``z = wall``, up to ``max_spheres`` spheres and ``max_boxes``
boxes (each rotated about the vertical axis), one directional light with hard shadows, ambient
light, and a procedural texture per surface (plain, stripes or checks in world coordinates).

Outputs per pixel (``render``): ``image`` [B, 3, H, W] in [0, 1] (Lambert shading, supersampled
``supersample`` x ``supersample`` for anti-aliasing), ``depth`` [B, 1, H, W] (z of the first hit,
camera units), ``normals`` [B, 3, H, W] (unit, camera frame, facing the camera), ``ids`` [B, H, W]
(which surface: 0 ground, 1 wall, 2.. spheres then boxes; -1 nothing) and ``contours``
[B, 1, H, W] (1 on the nearer pixel of every pair of 4-neighbours that see different surfaces:
occlusion boundaries and creases). Geometry is computed from the pixel centres; only the image
is supersampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NO_HIT = 1e4     # depth where a ray hits nothing (never with the ground and the wall present)


@dataclass
class Scenes:
    """A batch of scenes; every tensor's first dimension is the batch. Absent objects have
    ``*_on`` False (their other values are ignored)."""
    ground: torch.Tensor        # [B]     ground plane height below the camera (> 0), or inf: none
    wall: torch.Tensor          # [B]     back wall distance (> 0), or inf: none
    sphere_c: torch.Tensor      # [B, S, 3]
    sphere_r: torch.Tensor      # [B, S]
    sphere_on: torch.Tensor     # [B, S] bool
    box_c: torch.Tensor         # [B, K, 3]
    box_h: torch.Tensor         # [B, K, 3] half sizes
    box_yaw: torch.Tensor       # [B, K]  rotation about the y axis (radians)
    box_on: torch.Tensor        # [B, K] bool
    albedo: torch.Tensor        # [B, 2 + S + K, 3] colours in [0, 1]
    pattern: torch.Tensor       # [B, 2 + S + K] 0 plain, 1 stripes, 2 checks
    scale: torch.Tensor         # [B, 2 + S + K] pattern period (world units)
    light: torch.Tensor         # [B, 3] unit direction towards the light
    ambient: torch.Tensor       # [B]
    cam: torch.Tensor | None = None   # [B, 3, 3] camera -> world rotation (None: identity)


APPEARANCES = ("default", "shifted")
SEG_CLASSES = ["ground", "wall", "sphere", "box"]


def random_scenes(b: int, max_spheres: int = 3, max_boxes: int = 2,
                  generator: torch.Generator | None = None, appearance: str = "default") -> Scenes:
    """``b`` random scenes: 1..max_spheres spheres and 0..max_boxes boxes standing on (or
    floating above) the ground in front of the wall.

    ``appearance="shifted"`` draws the same geometry (every random number of the geometry is
    drawn first, in the same order, so one generator state gives the same shapes in both
    appearances) with another look: pale colours (albedo 0.55-1), fine checks on every surface
    (period 0.1-0.25), flat lighting (ambient 0.55-0.75) from the left. A domain shift of
    appearance only, for out-of-domain tests."""
    if appearance not in APPEARANCES:
        raise ValueError(f"appearance must be one of {APPEARANCES}, got {appearance!r}")
    g = generator

    def u(*shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    s, k = max_spheres, max_boxes
    ground = u(b, lo=0.6, hi=1.6)
    wall = u(b, lo=7.0, hi=12.0)
    r = u(b, s, lo=0.3, hi=1.0)
    lift = torch.where(torch.rand(b, s, generator=g) < 0.7, torch.zeros(b, s), u(b, s, hi=1.5))
    sc = torch.stack([u(b, s, lo=-2.5, hi=2.5), -ground[:, None] + r + lift,
                      u(b, s, lo=3.0, hi=7.0)], -1)
    n_s = torch.randint(1, s + 1, (b, 1), generator=g)
    h = u(b, k, 3, lo=0.25, hi=0.9)
    bc = torch.stack([u(b, k, lo=-2.5, hi=2.5), -ground[:, None] + h[..., 1],
                      u(b, k, lo=3.5, hi=7.5)], -1)
    n_k = torch.randint(0, k + 1, (b, 1), generator=g)
    n = 2 + s + k
    # the draw order is the first version's (seeded scenes unchanged); the light takes three
    # draws in both appearances, so the camera and the boxes' yaw stay the same too
    if appearance == "shifted":
        light = torch.stack([u(b, lo=-1.0, hi=-0.6), u(b, lo=0.3, hi=0.8), u(b, lo=-0.5, hi=0.0)],
                            -1)
    else:
        light = torch.stack([u(b, lo=-1.0, hi=1.0), u(b, lo=0.5, hi=1.5), u(b, lo=-1.0, hi=0.3)],
                            -1)
    cam = camera_rotation(u(b, lo=-0.35, hi=0.1), u(b, lo=-0.15, hi=0.15))
    yaw = u(b, k, hi=math.pi)
    if appearance == "shifted":
        albedo, pattern = u(b, n, 3, lo=0.55, hi=1.0), torch.full((b, n), 2)
        scale, ambient = u(b, n, lo=0.1, hi=0.25), u(b, lo=0.55, hi=0.75)
    else:
        albedo, pattern = u(b, n, 3, lo=0.1, hi=1.0), torch.randint(0, 3, (b, n), generator=g)
        scale, ambient = u(b, n, lo=0.2, hi=0.8), u(b, lo=0.15, hi=0.4)
    return Scenes(cam=cam, ground=ground, wall=wall, sphere_c=sc, sphere_r=r,
                  sphere_on=torch.arange(s)[None] < n_s, box_c=bc, box_h=h, box_yaw=yaw,
                  box_on=torch.arange(k)[None] < n_k, albedo=albedo, pattern=pattern,
                  scale=scale, light=F.normalize(light, dim=-1), ambient=ambient)


def segmentation_classes(ids: torch.Tensor, n_spheres: int) -> torch.Tensor:
    """Surface ids [B, H, W] (see ``render``) of scenes with ``n_spheres`` sphere slots ->
    semantic classes (``SEG_CLASSES``: 0 ground, 1 wall, 2 sphere, 3 box; -1 where nothing
    was hit)."""
    cls = torch.where(ids >= 2 + n_spheres, torch.full_like(ids, 3),
                      torch.where(ids >= 2, torch.full_like(ids, 2), ids))
    return torch.where(ids < 0, torch.full_like(ids, -1), cls)


def camera_rotation(pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] camera -> world rotations: ``roll`` about the viewing axis, then ``pitch``
    about the horizontal axis (negative: looking down)."""
    cp, sp, cr, sr = torch.cos(pitch), torch.sin(pitch), torch.cos(roll), torch.sin(roll)
    z, o = torch.zeros_like(pitch), torch.ones_like(pitch)
    rx = torch.stack([torch.stack([o, z, z], -1), torch.stack([z, cp, -sp], -1),
                      torch.stack([z, sp, cp], -1)], -2)
    rz = torch.stack([torch.stack([cr, -sr, z], -1), torch.stack([sr, cr, z], -1),
                      torch.stack([z, z, o], -1)], -2)
    return rx @ rz


def camera_rays(size: int, fov: float = 60.0, device=None) -> torch.Tensor:
    """[size * size, 3] unit ray directions through the pixel centres, row-major from the top
    left (x right, y up, z forward)."""
    f = (size / 2) / math.tan(math.radians(fov) / 2)
    c = (torch.arange(size, device=device, dtype=torch.float32) + 0.5 - size / 2) / f
    y, x = torch.meshgrid(-c, c, indexing="ij")
    return F.normalize(torch.stack([x, y, torch.ones_like(x)], -1).reshape(-1, 3), dim=-1)


def _rot_y(yaw: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] rotations about the y axis (local -> world)."""
    c, s = torch.cos(yaw), torch.sin(yaw)
    z, o = torch.zeros_like(yaw), torch.ones_like(yaw)
    return torch.stack([torch.stack([c, z, s], -1), torch.stack([z, o, z], -1),
                        torch.stack([-s, z, c], -1)], -2)


def intersect(sc: Scenes, o: torch.Tensor, d: torch.Tensor):
    """Rays from ``o`` [B, N, 3] along unit ``d`` [B, N, 3] -> (t [B, P, N] distance to each
    surface, inf where missed; normals [B, P, N, 3] outward at the hit)."""
    b, n, _ = d.shape
    inf = torch.tensor(float("inf"), device=d.device)
    eps = 1e-4
    ts, ns = [], []
    # ground y = -ground, normal +y
    dy = d[..., 1]
    t = (-sc.ground[:, None] - o[..., 1]) / torch.where(dy.abs() > 1e-9, dy, torch.full_like(dy, -1e-9))
    ts.append(torch.where((t > eps) & torch.isfinite(sc.ground)[:, None], t, inf))
    ns.append(torch.tensor([0.0, 1.0, 0.0], device=d.device).expand(b, n, 3))
    # wall z = wall, normal -z
    dz = d[..., 2]
    t = (sc.wall[:, None] - o[..., 2]) / torch.where(dz.abs() > 1e-9, dz, torch.full_like(dz, 1e-9))
    ts.append(torch.where((t > eps) & torch.isfinite(sc.wall)[:, None], t, inf))
    ns.append(torch.tensor([0.0, 0.0, -1.0], device=d.device).expand(b, n, 3))
    # spheres: |o + t d - c|^2 = r^2
    oc = o[:, None] - sc.sphere_c[:, :, None]                     # [B, S, N, 3]
    bq = (oc * d[:, None]).sum(-1)
    cq = (oc * oc).sum(-1) - sc.sphere_r[..., None] ** 2
    disc = bq * bq - cq
    sq = disc.clamp_min(0).sqrt()
    t0, t1 = -bq - sq, -bq + sq
    t = torch.where(t0 > eps, t0, t1)
    ok = (disc >= 0) & (t > eps) & sc.sphere_on[..., None]
    t = torch.where(ok, t, inf)
    p = o[:, None] + t.clamp(max=1e6)[..., None] * d[:, None]
    ts += list(t.unbind(1))
    ns += list(((p - sc.sphere_c[:, :, None]) / sc.sphere_r[..., None, None]).unbind(1))
    # boxes: slabs in each box's own frame
    if sc.box_c.shape[1]:
        rot = _rot_y(sc.box_yaw)                                  # [B, K, 3, 3] local -> world
        ol = torch.einsum("bkji,bknj->bkni", rot, o[:, None] - sc.box_c[:, :, None])
        dl = torch.einsum("bkji,bnj->bkni", rot, d)
        dl = torch.where(dl.abs() < 1e-9, torch.full_like(dl, 1e-9), dl)
        h = sc.box_h[:, :, None]
        ta, tb = (-h - ol) / dl, (h - ol) / dl
        tmin, tmax = torch.minimum(ta, tb), torch.maximum(ta, tb)
        tnear, axis = tmin.max(-1)
        tfar = tmax.min(-1).values
        inside = tnear <= eps
        t = torch.where(inside, tfar, tnear)
        ok = (tnear < tfar) & (t > eps) & sc.box_on[..., None]
        t = torch.where(ok, t, inf)
        sign = -torch.sign(torch.gather(dl, -1, axis[..., None]))
        nl = F.one_hot(axis, 3).to(d.dtype) * sign
        nw = torch.einsum("bkij,bknj->bkni", rot, nl)
        ts += list(t.unbind(1))
        ns += list(nw.unbind(1))
    return torch.stack(ts, 1), torch.stack(ns, 1)


def _texture(sc: Scenes, ids: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Albedo [B, N, 3] of the surfaces ``ids`` [B, N] at world points ``p`` [B, N, 3]."""
    idc = ids.clamp_min(0)
    alb = torch.gather(sc.albedo, 1, idc[..., None].expand(-1, -1, 3))
    pat = torch.gather(sc.pattern, 1, idc)
    per = torch.gather(sc.scale, 1, idc)
    q = torch.floor(p / per[..., None])
    stripes = torch.remainder(q[..., 0] + q[..., 2], 2)
    checks = torch.remainder(q.sum(-1), 2)
    m = torch.where(pat == 1, stripes, torch.where(pat == 2, checks, torch.zeros_like(checks)))
    return alb * (1 - 0.55 * m[..., None])


def _shade(sc: Scenes, d: torch.Tensor, shade: bool = True):
    """Cast rays ``d`` [N, 3] (camera frame) from the camera: (first-hit distance, surface id,
    unit normal facing the ray in the camera frame, colour or None unless ``shade``) per ray,
    each [B, N, ...]."""
    b = sc.ground.shape[0]
    dd = d[None].expand(b, -1, -1) if sc.cam is None else d[None] @ sc.cam.transpose(1, 2)
    o = torch.zeros_like(dd)
    t, n = intersect(sc, o, dd)
    tmin, ids = t.min(1)
    hit = torch.isfinite(tmin)
    ids = torch.where(hit, ids, torch.full_like(ids, -1))
    nrm = torch.gather(n, 1, ids.clamp_min(0)[:, None, :, None].expand(-1, 1, -1, 3)).squeeze(1)
    nrm = F.normalize(nrm, dim=-1)
    nrm = torch.where(((nrm * dd).sum(-1, keepdim=True) > 0), -nrm, nrm)   # face the camera
    tmin = torch.where(hit, tmin, torch.full_like(tmin, NO_HIT))
    if not shade:
        return tmin, ids, nrm if sc.cam is None else nrm @ sc.cam, None
    p = dd * tmin[..., None]
    # hard shadows: anything between the point and the light
    ls = sc.light[:, None].expand_as(dd)
    ts, _ = intersect(sc, p + 1e-3 * nrm, ls)
    lit = ~torch.isfinite(ts.min(1).values)
    lam = (nrm * ls).sum(-1).clamp_min(0) * lit
    col = _texture(sc, ids, p) * (sc.ambient[:, None, None] + (1 - sc.ambient[:, None, None])
                                  * lam[..., None])
    col = torch.where(hit[..., None], col, torch.zeros_like(col))
    if sc.cam is not None:
        nrm = nrm @ sc.cam            # world -> camera frame (rows times R = R^T n)
    return tmin, ids, nrm, col


def contours_from_ids(ids: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """[B, H, W] surface ids and [B, H, W] depths -> [B, 1, H, W] contour map: 1 on the nearer
    pixel of every horizontally or vertically adjacent pair that sees different surfaces."""
    c = torch.zeros_like(depth, dtype=torch.bool)
    for dim in (1, 2):
        a, b = ids.narrow(dim, 0, ids.shape[dim] - 1), ids.narrow(dim, 1, ids.shape[dim] - 1)
        da, db = (depth.narrow(dim, 0, depth.shape[dim] - 1),
                  depth.narrow(dim, 1, depth.shape[dim] - 1))
        diff = a != b
        first = diff & (da <= db)
        second = diff & (db < da)
        pad = [0, 0, 0, 0]
        pad[(2 - dim) * 2 + 1] = 1        # F.pad counts from the last dimension
        c |= F.pad(first.float(), pad) > 0
        pad2 = [0, 0, 0, 0]
        pad2[(2 - dim) * 2] = 1
        c |= F.pad(second.float(), pad2) > 0
    return c[:, None].float()


@torch.no_grad()
def render(sc: Scenes, size: int, supersample: int = 2, fov: float = 60.0) -> dict:
    """The scenes at ``size`` x ``size`` pixels: image, depth, normals, ids, contours (see the
    module docstring)."""
    b = sc.ground.shape[0]
    ss = max(1, int(supersample))
    d = camera_rays(size, fov)
    t, ids, nrm, col = _shade(sc, d, shade=ss == 1)
    depth = torch.where(ids >= 0, t * d[None, :, 2], torch.full_like(t, NO_HIT))
    depth, ids = depth.reshape(b, size, size), ids.reshape(b, size, size)
    if ss > 1:
        *_, col = _shade(sc, camera_rays(size * ss, fov))
        img = F.avg_pool2d(col.reshape(b, size * ss, size * ss, 3).permute(0, 3, 1, 2), ss)
    else:
        img = col.reshape(b, size, size, 3).permute(0, 3, 1, 2)
    return {"image": img.clamp(0, 1).contiguous(), "depth": depth[:, None],
            "normals": nrm.reshape(b, size, size, 3).permute(0, 3, 1, 2).contiguous(),
            "ids": ids, "contours": contours_from_ids(ids, depth)}
