"""The training loop: one function, visible order (GUIDE section 3).

set lr -> views (data path) -> training_step (autocast) -> NaN check -> backward -> clip ->
optimizer.step -> zero_grad -> after_optimizer_step -> log -> periodic eval / checkpoint.

Step-based. Data order is a pure function of (seed, step), and checkpoints hold weights, optimizer,
step and every RNG state, so a run killed and resumed ends with the same weights as one that was
never interrupted.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..config import ConfigError
from ..evaluate.collapse import CollapseDetector, collapse_metrics
from ..methods.base import BatchInfo
from ..nn.distributed import all_gather_object, all_reduce_sum, barrier, init_from_env
from ..augment.resize import progressive_side, resize_views
from ..nn.schedules import REPLAN_FIRST_STEP, lr_multiplier, steps_to_fill
from ..rundir import subdir
from .checkpoint import atomic_save, load_checkpoint, load_resumable, rng_state, set_rng_state
from .metrics import MetricsWriter
from .optim import build_optimizer


class NonFiniteLossError(RuntimeError):
    pass


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of the batch at ``step``: epoch e = step // (n // batch_size) shuffles with a
    generator seeded by (seed, e); the last incomplete batch of an epoch is dropped."""
    per_epoch = n // batch_size
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[pos * batch_size:(pos + 1) * batch_size].numpy()


def stream_indices(pool: np.ndarray, batch_size: int, seed: int, step: int,
                   stream: int = 0) -> np.ndarray:
    """An infinite stream over ``pool``: positions step*batch .. (step+1)*batch of the
    concatenation of independent shuffles of ``pool`` (one per pass, seeded by (seed, stream,
    pass)). Works when the pool is smaller than a batch (40 labels, batch 64). Pure function of
    (seed, step), so resumed runs see the same data."""
    n = len(pool)
    pos = np.arange(step * batch_size, (step + 1) * batch_size)
    passes, within = np.divmod(pos, n)
    out = np.empty(batch_size, dtype=np.int64)
    for p in np.unique(passes):
        g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (stream + 1) + int(p))
        perm = torch.randperm(n, generator=g).numpy()
        sel = passes == p
        out[sel] = pool[perm[within[sel]]]
    return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_for(device: torch.device, precision: str):
    """The context the loss is computed in: bfloat16 autocast (``bf16``; ``auto`` on CUDA) or
    float32. Weights, optimizer state and losses stay float32 either way."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.precision must be auto, fp32 or bf16; got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"train.precision=bf16 runs on cpu or cuda, not {device.type}")
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16), where
    train.precision=bf16 is the fast path; elsewhere bf16 is emulated and slower than float32."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def channels_last_views(views) -> list:
    """The image views in channels-last memory order (oneDNN's fast layout; the model is
    converted with ``method.to(memory_format=torch.channels_last)``), other tensors as they are."""
    return [v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for v in views]


def train(method: torch.nn.Module, dataset, cfg, run_dir: Path,
          monitor: Callable[[torch.nn.Module], dict] | None = None,
          stop_after: int | None = None) -> dict:
    """Train ``method`` on ``dataset`` (an ImageDataset) as ``cfg`` (a RunConfig) says, writing
    checkpoints and metrics under ``run_dir``. Resumes from ``run_dir/checkpoints/last.pt`` when
    present. ``stop_after`` ends the run early after that step without a final checkpoint (used
    to simulate an interruption). Returns a summary dict."""
    tc, oc = cfg.train, cfg.optim
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = subdir(run_dir, "checkpoints") / "last.pt"   # never a link out of the run
    # torchrun: every rank runs this function on its share of each global batch
    rank, world, local_rank = init_from_env()
    main_process = rank == 0
    device = resolve_device(tc.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
    autocast = autocast_for(device, tc.precision)   # a wrong value fails before any work
    if tc.precision == "bf16" and device.type == "cpu" and main_process and not cpu_has_fast_bf16():
        print("selfsup: train.precision=bf16 on a CPU without AMX or AVX512-BF16: bfloat16 is "
              "emulated here and slower than fp32", file=sys.stderr)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    n, bs, total = len(dataset), tc.batch_size, tc.steps
    if bs % world:
        raise ConfigError(f"train.batch_size={bs} (the global batch) must be divisible by the "
                         f"number of processes ({world})")
    lbs = bs // world  # this rank's share
    # semi-supervised methods zip an infinite labeled stream (bs) and an infinite unlabeled
    # stream (uratio * bs) over the images the dataset marks unlabeled (label -1) or labeled
    semi = getattr(method, "semi_supervised", False)
    if semi:
        labeled_pool = np.flatnonzero(dataset.labels >= 0)
        unlabeled_pool = method.unlabeled_pool(dataset.labels)
        ubs = int(round(method.uratio * bs))
        if ubs % world:
            raise ConfigError(f"the unlabeled batch (method.uratio x train.batch_size = {ubs}) "
                             f"must be divisible by the number of processes ({world})")
        if len(labeled_pool) == 0:
            raise ConfigError("this semi-supervised method needs labeled images; the dataset has "
                             "none (give class sub-folders or a labels CSV)")
        if ubs and len(unlabeled_pool) == 0:
            raise ConfigError("no unlabeled images to train on: add unlabeled images, lower "
                             "data.labels_per_class, or set method.uratio=0")
        steps_per_epoch = max(1, (len(unlabeled_pool) // ubs) if ubs else len(labeled_pool) // bs)
    elif n < bs:
        raise ConfigError(f"train.batch_size={bs} is larger than the dataset ({n} images); "
                         f"lower train.batch_size")
    else:
        steps_per_epoch = n // bs
    eval_every = tc.eval_every or steps_per_epoch

    method.setup(n)
    sample = np.sort(np.random.default_rng(tc.seed).choice(n, min(n, 4096), replace=False))
    method.prepare(dataset.batch(sample))
    method.to(device)
    channels_last = cfg.model.channels_last and device.type in ("cpu", "cuda")
    if channels_last:
        method.to(memory_format=torch.channels_last)
    if tc.compile:   # in place: the state dict keeps its names, checkpoints stay eager-loadable
        if not isinstance(getattr(method, "backbone", None), torch.nn.Module):
            raise ConfigError(f"train.compile: method {cfg.method.get('name')!r} has no backbone "
                             f"to compile; set train.compile=false")
        method.backbone.compile()
    # linear scaling rule (Goyal et al., 2017; SimCLR); semi-supervised recipes give lr as is
    lr_peak = oc.lr * bs / 256 if oc.scale_lr else oc.lr
    optimizer = build_optimizer(method, oc.name, lr_peak, oc.weight_decay, oc.momentum, oc.lars_eta,
                                oc.nesterov)
    model = method
    sync = cfg.model.sync_bn
    if sync not in ("auto", "on", "off"):
        raise ConfigError(f"model.sync_bn must be auto, on or off; got {sync!r}")
    if world > 1 and (sync == "on" or (sync == "auto" and getattr(method, "sync_bn", False))):
        if device.type == "cuda":
            method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
            model = method
        elif main_process:  # torch's SyncBatchNorm runs on GPUs only
            print("selfsup: model.sync_bn: BatchNorm is per process on CPU (torch's "
                  "SyncBatchNorm needs GPUs)", file=sys.stderr)
    if world > 1:  # gradients averaged across ranks; buffers (queues, memories) kept per rank
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(method, device_ids=[local_rank] if device.type == "cuda" else None,
                    broadcast_buffers=False)

    collapse = CollapseDetector(cfg.eval.collapse_std_ratio, cfg.eval.collapse_rank,
                                cfg.eval.collapse_rank_fraction)
    step = 0
    ck, note = load_resumable(ckpt_path.parent) if main_process or world == 1 else (None, None)
    if world > 1:  # rank 0 decides which checkpoint every rank resumes from
        which = all_gather_object(None if ck is None else ("prev" if note else "last"))[0]
        if which is not None and not main_process:
            ck = load_checkpoint(ckpt_path.parent / f"{which}.pt")
    if note and main_process:
        print(f"selfsup: {note}", file=sys.stderr)
    if ck is not None:
        method.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        ranks = ck.get("rng_ranks")
        set_rng_state(ranks[rank] if ranks and len(ranks) == world else ck["rng"])
        step = ck["step"]
        collapse.event = ck.get("collapse")
        if tc.fit_to_time and tc.time_limit and ck.get("total"):
            total = ck["total"]   # the re-planned schedule goes on where it was
        if main_process:
            print(f"selfsup: resuming {run_dir} from step {step}", file=sys.stderr)
    else:  # each rank draws its own augmentations (rank 0 as a single process would)
        torch.manual_seed(tc.seed + 100_003 * rank)
        np.random.seed(tc.seed + 100_003 * rank)
    metrics = MetricsWriter(run_dir, resume_step=step if step else None) if main_process else None

    # small datasets live on the device; large ones are read from the memmap batch by batch
    resident = dataset.images.nbytes <= 2 * 1024 ** 3
    images = dataset.batch(np.arange(n)).to(device) if resident else None
    labels = torch.from_numpy(dataset.labels).to(device)
    # the true classes of the training images where known (semi-supervised diagnostics only)
    hidden_np = getattr(dataset, "hidden_labels", None)
    hidden = torch.from_numpy(hidden_np).to(device) if semi and hidden_np is not None else None

    if step == 0 and hasattr(method, "init_memory"):
        # DeepCluster-v2: a forward pass over one epoch of augmented batches fills the memory
        # and makes the first clustering before the first step (swav's init_memory)
        def epoch_batches():
            for s in range(steps_per_epoch):
                idx = batch_indices(n, bs, tc.seed + 1, s)[rank * lbs:(rank + 1) * lbs]
                idx_t = torch.from_numpy(idx).to(device)
                yield idx_t, images[idx_t] if resident else dataset.batch(idx).to(device)

        if main_process:
            print(f"selfsup: filling {cfg.method.get('name')}'s memory ({steps_per_epoch} "
                  f"batches) ...", file=sys.stderr)
        method.init_memory(epoch_batches(), steps_per_epoch)

    def stop_non_finite(at_step: int, msg: str) -> None:
        bar.close()
        if metrics is not None:
            metrics.log({"kind": "error", "step": at_step, "error": msg})
            metrics.close()
        raise NonFiniteLossError(msg)

    def save(at_step: int) -> None:
        # a step that left non-finite weights or statistics (a diverging lr) never becomes the
        # checkpoint a resume starts from
        bad = [k for k, v in method.state_dict().items()
               if v.is_floating_point() and not torch.isfinite(v).all()]
        if world > 1:
            bad = sum(all_gather_object(bad), [])
        if bad:
            stop_non_finite(at_step, f"non-finite values in {', '.join(bad[:3])}"
                            f"{' ...' if len(bad) > 3 else ''} after step {at_step} (training "
                            f"diverged); not saved: the last good checkpoint is "
                            f"{ckpt_path if ckpt_path.exists() else 'none'}. Lower optim.lr or "
                            f"set optim.grad_clip, then re-run with --overwrite.")
        rngs = all_gather_object(rng_state())  # every rank's, so a resume continues each one
        if main_process:
            atomic_save({"model": method.state_dict(), "optimizer": optimizer.state_dict(),
                         "rng": rngs[0], "rng_ranks": rngs if world > 1 else None,
                         "step": at_step, "config": cfg.to_dict(), "collapse": collapse.event,
                         "total": total},
                        ckpt_path)
        barrier()

    bar = tqdm(total=total, initial=step, desc=f"train {cfg.method.get('name')}", unit="step",
               disable=not (tc.progress and main_process), file=sys.stderr, dynamic_ncols=True)
    data_time = compute_time = 0.0
    images_seen, t_window = 0, time.perf_counter()
    # a run resumed from its final checkpoint trains no step: its summary reports the last
    # logged row from before the kill
    last_logs: dict = dict(metrics.last_train) if metrics is not None else {}
    t_start = t_saved = time.perf_counter()
    stopped_by_time, step0, replans = False, step, 0
    method.train()
    while step < total:
        # 1. learning rate for this step
        lr = lr_peak * lr_multiplier(oc.schedule, (step + 1) / total, oc.warmup, oc.final_lr_ratio)
        for g in optimizer.param_groups:
            g["lr"] = lr
        # 2. data path: batch -> device -> augmented views (timed separately)
        t0 = time.perf_counter()
        if semi:  # this rank's slice of the global labeled and unlabeled batches
            lu = ubs // world
            idx_l = stream_indices(labeled_pool, bs, tc.seed, step, stream=0)
            idx_l = idx_l[rank * lbs:(rank + 1) * lbs]
            idx_u = (stream_indices(unlabeled_pool, ubs, tc.seed, step, stream=1)
                     [rank * lu:(rank + 1) * lu] if ubs else np.zeros(0, np.int64))
            idx = np.concatenate([idx_l, idx_u])
        else:
            idx = batch_indices(n, bs, tc.seed, step)[rank * lbs:(rank + 1) * lbs]
        idx_t = torch.from_numpy(idx).to(device)
        x = images[idx_t] if resident else dataset.batch(idx).to(device)
        y = labels[idx_t]
        if semi:  # the unlabeled stream never sees labels, even of images that have one
            y = torch.cat([y[:lbs], torch.full_like(y[lbs:], -1)])
        info = BatchInfo(index=idx_t, label=y,
                         hidden=hidden[idx_t] if hidden is not None else None)
        views = method.views(x, info) if semi else method.views(x)
        if tc.progressive_side:   # progressive resizing: smaller views early in training
            full = max(v.shape[-1] for v in views if v.dim() == 4)
            views = resize_views(views, progressive_side(step / total, tc.progressive_side,
                                                         full, tc.progressive_until), full)
        if channels_last:
            views = channels_last_views(views)
        t1 = time.perf_counter()
        # 3. loss
        with autocast:
            out = model(views, step / total, info)  # = method.training_step (through DDP)
        loss = out.loss
        finite = torch.isfinite(loss.detach()).float()
        if world > 1:  # every rank stops together
            finite = all_reduce_sum(finite) / world
        if finite.item() < 1:
            stop_non_finite(step, f"non-finite loss ({loss.item()}) at step {step}; logs "
                            f"{out.logs}; last good checkpoint: "
                            f"{ckpt_path if ckpt_path.exists() else 'none'}. Lower optim.lr or "
                            f"set optim.grad_clip.")
        # 4. update
        loss.backward()
        if oc.grad_clip:
            torch.nn.utils.clip_grad_norm_(method.parameters(), oc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_optimizer_step(step / total)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        data_time += t1 - t0
        compute_time += t2 - t1
        images_seen += len(idx) * world
        step += 1
        bar.update(1)
        # 5. log
        if main_process and (step % tc.log_every == 0 or step == total):
            dt = time.perf_counter() - t_window
            last_logs = {"kind": "train", "step": step, "lr": lr, **out.logs,
                         "images_per_s": images_seen / dt,
                         "data_fraction": data_time / max(1e-9, data_time + compute_time)}
            metrics.log(last_logs)
            bar.set_postfix(loss=f"{out.logs.get('loss', loss.item()):.3f}",
                            img_s=f"{last_logs['images_per_s']:.0f}")
            data_time = compute_time = 0.0
            images_seen, t_window = 0, time.perf_counter()
        # 6. periodic evaluation and checkpoint
        if main_process and (step % eval_every == 0 or step == total):
            row = {"kind": "eval", "step": step, "epoch": step / steps_per_epoch}
            if out.embeddings is not None:  # the method's output embeddings on this batch
                z = collapse_metrics(out.embeddings)
                row.update({"z_std": z["embed_std"], "z_std_healthy": z["embed_std_healthy"],
                            "z_rank": z["effective_rank"]})
                judged = step >= cfg.eval.collapse_after * total
                warning = collapse.check(step, row) if judged else None
                if warning:
                    bar.write(warning, file=sys.stderr)
                    row["collapsed"] = True
            if monitor is not None:
                row.update(monitor(method.encoder))
            metrics.log(row)
            bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in row.items() if k != "kind"), file=sys.stderr)
        if (tc.fit_to_time and tc.time_limit and step < total
                and (step - step0 == REPLAN_FIRST_STEP or step % eval_every == 0)):
            new = steps_to_fill(step, step - step0, time.perf_counter() - t_start, tc.time_limit)
            new = all_gather_object(new)[0]   # every rank follows rank 0's plan
            if new != total and main_process:
                metrics.log({"kind": "replan", "step": step, "total": new, "was": total})
                bar.total = new
            total, replans = new, replans + (new != total)
        # a time budget (``train.time_limit``): this step is the last one; every rank agrees
        over = tc.time_limit and time.perf_counter() - t_start > tc.time_limit
        if world > 1 and tc.time_limit:
            over = bool(all_reduce_sum(torch.tensor(float(over))).item() > 0)
        if over and step < total:
            stopped_by_time = True
            if main_process:
                bar.write(f"selfsup: train.time_limit={tc.time_limit:.0f}s reached: ending at "
                          f"step {step} of {total}", file=sys.stderr)
            total = step
            if main_process and step % eval_every:   # the final evaluation of a shortened run
                row = {"kind": "eval", "step": step, "epoch": step / steps_per_epoch}
                if monitor is not None:
                    row.update(monitor(method.encoder))
                metrics.log(row)
        by_time = (tc.checkpoint_seconds and time.perf_counter() - t_saved > tc.checkpoint_seconds)
        if world > 1 and tc.checkpoint_seconds:
            by_time = bool(all_reduce_sum(torch.tensor(float(by_time))).item() > 0)
        if step % tc.checkpoint_every == 0 or step == total or by_time:
            save(step)
            t_saved = time.perf_counter()
        if world > 1 and (step % eval_every == 0 or step == total):
            barrier()  # the others wait while rank 0 evaluates
        if stop_after is not None and step >= stop_after and step < total:
            bar.close()
            if metrics is not None:
                metrics.close()
            return {"stopped_at": step}
    bar.close()
    if metrics is not None:
        metrics.close()
    return {"steps": step, "stopped_by_time": stopped_by_time, "replans": replans,
            "final_loss": last_logs.get("loss", math.nan),
            "collapsed": collapse.event is not None, "collapse": collapse.event,
            "images_per_s": last_logs.get("images_per_s", math.nan),
            "data_fraction": last_logs.get("data_fraction", math.nan)}
