"""Library entry points: build a method from a config, pretrain it, reload its encoder.

    from selfsup.config import load_config
    from selfsup.pretrain import pretrain
    run_dir, summary = pretrain(load_config("simclr_digits", ["train.steps=100"]))
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from . import __version__, backbones, rundir
from .augment.views import IMAGENET_MEAN, IMAGENET_STD
from .config import ConfigError, RunConfig, config_from_dict
from .data import ImageDataset, load_dataset
from .evaluate.collapse import collapse_metrics
from .evaluate.features import extract_features
from .evaluate.knn import knn_accuracy
from .evaluate.protocol import evaluate_encoder, labeled_train_subset
from .methods import METHODS
from .train.loop import resolve_device, train


class RunDirError(RuntimeError):
    pass


def build_backbone(cfg: RunConfig, init: bool = True) -> torch.nn.Module:
    """The run's backbone; with ``model.init`` (and ``init``) starting from those weights."""
    m = cfg.model
    try:
        net = backbones.build(m.backbone, m.width, m.cifar_stem, cfg.augment.size, m.patch_size,
                              m.depth, m.pool)
    except ValueError as e:   # a setting the architecture refuses (model.pool=max, ...)
        raise ConfigError(str(e)) from None
    if init and m.init:
        from .backbones.external import load_init

        load_init(net, m.init)
    return net


def build_method(cfg: RunConfig) -> torch.nn.Module:
    cls = METHODS.get(cfg.method.get("name", "simclr"))
    backbone, method_cfg = build_backbone(cfg), cfg.method_config()
    try:
        method = cls(backbone, method_cfg, cfg.augment)
    except ConfigError:
        raise
    except ValueError as e:   # a method that refuses this backbone (MAE on a convnet, ...)
        raise ConfigError(str(e)) from None
    aug_cfg = cfg.augself_config()
    if aug_cfg is not None:   # AugSelf composes with the method instead of copying it
        from .methods.augself import AugSelf

        try:
            method = AugSelf(method, aug_cfg)
        except ValueError as e:
            raise ConfigError(f"method.augself_*: {e}") from None
    return method


def load_data(cfg: RunConfig, split: str | None, progress: bool = True) -> ImageDataset:
    d = cfg.data
    kw = dict(cache_dir=d.cache_dir, strict=d.strict, progress=progress)
    if d.dataset == "digits":
        kw = {}
    return load_dataset(d.dataset, path=d.path, split=split, image_size=d.image_size, **kw)


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def make_monitor(cfg: RunConfig, train_ds: ImageDataset, test_ds: ImageDataset | None, device):
    """Online kNN (when labels exist) + collapse metrics on a fixed sample, run every epoch."""
    ec, seed = cfg.eval, cfg.train.seed
    rng = np.random.default_rng(seed)
    if train_ds.has_labels:
        labeled = np.flatnonzero(train_ds.labels >= 0)
        bank_idx = np.sort(rng.choice(labeled, min(ec.monitor_size, len(labeled)), replace=False))
        bank = train_ds.subset(bank_idx)
        if test_ds is not None and test_ds.has_labels:
            q = np.sort(rng.choice(len(test_ds), min(ec.monitor_size // 2, len(test_ds)),
                                   replace=False))
            queries = test_ds.subset(q)
        else:  # held-out labeled training images
            rest = np.setdiff1d(labeled, bank_idx)
            if len(rest) == 0:
                rest = labeled
            queries = train_ds.subset(np.sort(rng.choice(rest, min(ec.monitor_size // 2, len(rest)),
                                                         replace=False)))
    else:
        bank, queries = None, train_ds.subset(np.sort(rng.choice(len(train_ds),
                                                                 min(1024, len(train_ds)),
                                                                 replace=False)))

    def monitor(encoder) -> dict:
        fq = extract_features(encoder, queries, device=device)
        out = collapse_metrics(fq)
        if bank is not None:
            fb = extract_features(encoder, bank, device=device)
            out.update(knn_accuracy(fb, bank.labels, fq, queries.labels, len(train_ds.classes),
                                    min(ec.knn_k, len(bank)), ec.knn_temperature))
        return out

    return monitor


def default_run_dir(cfg: RunConfig) -> Path:
    return Path("runs") / f"{cfg.method.get('name')}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_finished(run_dir: Path) -> bool:
    """A run is finished when its summary.json is complete (written last, atomically)."""
    try:
        rundir.read_json(Path(run_dir) / "summary.json")
        return True
    except rundir.RunFileError:
        return False


def _saved_config(run_dir: Path) -> dict | None:
    """The configuration a run was started with: config.yaml, or, when that file is damaged,
    the copy inside its checkpoint (then config.yaml is rebuilt from it). None: never trained."""
    cfg_path = run_dir / "config.yaml"
    try:
        old = yaml.safe_load(rundir.read_text(cfg_path))
        if isinstance(old, dict):
            return old
    except (rundir.RunFileError, yaml.YAMLError):
        pass
    from .train.checkpoint import load_resumable

    ck, _ = load_resumable(run_dir / "checkpoints")
    if ck is None:
        return None
    rundir.warn(f"{cfg_path} was damaged: rebuilt from the checkpoint's copy")
    rundir.write_text(cfg_path, yaml.safe_dump(ck["config"], sort_keys=False))
    return ck["config"]


# settings that may change between a run and its resume (they do not change what is computed)
RESUMABLE_KEYS = ("progress", "out_dir", "overwrite", "time_limit", "checkpoint_seconds",
                  "allow_data_change", "compile")


def config_diff(old: dict, new: dict) -> list[str]:
    """The settings ("section.key") in which two saved configurations differ, leaving out those
    a run may change when it is resumed (RESUMABLE_KEYS)."""
    return sorted(f"{s}.{k}" for s in set(old) | set(new)
                  for k in set(old.get(s, {})) | set(new.get(s, {}))
                  if old.get(s, {}).get(k) != new.get(s, {}).get(k)
                  and not (s == "train" and k in RESUMABLE_KEYS))


def reusable_run(run_dir: str | Path, cfg: RunConfig) -> bool:
    """Whether ``run_dir`` holds a finished run made with ``cfg``'s settings, so a benchmark may
    report it instead of training again. A finished run with other settings raises RunDirError
    naming them (a 2,000-step folder must never stand for an 8,000-step row). Settings filled in
    from the data when training starts (method.num_classes) are taken from the saved run."""
    run_dir = Path(run_dir)
    if not run_finished(run_dir):
        return False
    old, new = load_run_config(run_dir).to_dict(), cfg.to_dict()
    new.setdefault("method", {}).setdefault("num_classes", old.get("method", {}).get("num_classes"))
    diff = config_diff(old, new)
    if diff:
        raise RunDirError(f"{run_dir} holds a finished run with other settings (differs in: "
                          f"{', '.join(diff)}); give the benchmark another output folder")
    return True


def prepare_run_dir(cfg: RunConfig, run_dir: Path, kind: str = "run") -> None:
    """Create and lock the run directory, or check that an existing one is this same run
    (resume). A finished run is replaced only with ``train.overwrite`` (CLI ``--overwrite``); a
    non-empty folder that selfsup did not make is never touched. The lock is held until
    ``release_run_dir`` (or the end of the process)."""
    run_dir = Path(run_dir)
    try:
        if not rundir.is_run(run_dir):
            rundir.create(run_dir, kind)     # refuses a foreign non-empty folder, untouched
    except rundir.RunFileError as e:
        raise RunDirError(str(e).replace("output folder", "train.out_dir")) from None
    rundir.lock(run_dir)
    try:
        _prepare_locked(cfg, run_dir, kind)
    except BaseException:
        rundir.unlock(run_dir)
        raise


def release_run_dir(run_dir: Path) -> None:
    rundir.unlock(run_dir)


def _prepare_locked(cfg: RunConfig, run_dir: Path, kind: str) -> None:
    gone = rundir.clean_temporaries(run_dir)
    if gone:
        rundir.warn(f"removed {len(gone)} temporary file(s) of an interrupted write in {run_dir}")
    cfg_path = run_dir / "config.yaml"
    if cfg.train.overwrite and run_finished(run_dir):
        print(f"selfsup: --overwrite: replacing the finished run in {run_dir}", file=sys.stderr)
        rundir.remove(run_dir, keep=(rundir.LOCK, rundir.MARKER))
    old = _saved_config(run_dir) if cfg_path.exists() or (run_dir / "checkpoints").exists() \
        else None
    if old is not None:
        diff = config_diff(old, cfg.to_dict())
        if diff:
            raise RunDirError(f"{run_dir} holds a run with a different configuration "
                              f"(differs in: {', '.join(diff)}); choose another train.out_dir")
        if run_finished(run_dir):
            raise RunDirError(f"{run_dir} already holds a finished run; choose another "
                              f"train.out_dir, or pass --overwrite (train.overwrite=true) to "
                              f"replace it")
        return
    rundir.write_text(cfg_path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    rundir.write_json(run_dir / "run.json", {
        "selfsup_version": __version__, "git_sha": git_sha(), "seed": cfg.train.seed,
        "command": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(), "torch": torch.__version__,
        "host": platform.node(), "kind": kind})


def data_fingerprint(ds: ImageDataset) -> str:
    """A hash of what training sees: image names, labels and pixels (every byte up to 256 MB,
    else 4,096 images chosen by a fixed rule), so added, removed, relabelled or edited images
    change it."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for nm in ds.names:
        h.update(nm.encode("utf-8", "surrogateescape") + b"\0")
    h.update(np.ascontiguousarray(ds.labels, dtype=np.int64).tobytes())
    n = len(ds)
    idx = np.arange(n) if ds.images.nbytes <= 256 << 20 else \
        np.unique(np.linspace(0, n - 1, 4096).astype(np.int64))
    for start in range(0, len(idx), 4096):
        h.update(np.ascontiguousarray(ds.images[idx[start:start + 4096]]).tobytes())
    return h.hexdigest()


def check_data(run_dir: Path, ds: ImageDataset, cfg: RunConfig) -> None:
    """Record the training data's fingerprint when a run starts; on resume, refuse data that
    changed since (images added, removed, relabelled or edited) unless
    ``train.allow_data_change`` (CLI ``--allow-data-change``)."""
    path = run_dir / "data.json"
    now = {"fingerprint": data_fingerprint(ds), "images": len(ds), "source": ds.source,
           "labeled": int((ds.labels >= 0).sum())}
    if path.exists() and (run_dir / "checkpoints").exists():
        then = rundir.read_json(path, fix="delete it to accept the current data")
        if then.get("fingerprint") != now["fingerprint"]:
            if not cfg.train.allow_data_change:
                raise RunDirError(
                    f"{run_dir}: the training images changed since this run started "
                    f"({then.get('images')} images, {then.get('labeled')} labeled then; "
                    f"{now['images']}, {now['labeled']} now); restore them, or re-run with "
                    f"--allow-data-change (train.allow_data_change=true) to continue on the new "
                    f"images")
            rundir.warn(f"--allow-data-change: continuing {run_dir} on changed images "
                        f"({then.get('images')} -> {now['images']})")
            now["changed_from"] = then
    rundir.write_json(path, now)


def check_output_space(run_dir: Path, method: torch.nn.Module, margin: int = 64 << 20) -> None:
    """Before training: the run directory must be writable and have room for two checkpoints
    (weights + optimizer state + EMA copies, and the temporary file of an atomic save)."""
    import shutil

    probe = Path(run_dir) / ".selfsup-write-test"
    try:
        rundir.write_bytes(probe, b"ok")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"{run_dir} is not writable ({e.strerror or e}); choose another "
                          f"train.out_dir") from None
    n_bytes = sum(t.numel() * t.element_size() for t in method.state_dict().values())
    need = 3 * 2 * n_bytes + margin
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise RunDirError(f"{run_dir}: only {free / 2**20:.0f} MiB free, a run of this model needs "
                          f"about {need / 2**20:.0f} MiB for its checkpoints; free some space or "
                          f"choose another train.out_dir")


def probe_encoder(encoder: torch.nn.Module, stage: int) -> torch.nn.Module:
    """The encoder evaluation reads: the whole backbone, or its first ``stage`` stages."""
    if not stage:
        return encoder
    from .backbones.stages import StageEncoder

    if hasattr(encoder, "rewrap"):  # a wrapper (e.g. L-channel input) around a backbone
        return encoder.rewrap(StageEncoder(encoder.backbone, stage))
    return StageEncoder(encoder, stage)


def model_metadata(cfg: RunConfig) -> dict[str, str]:
    """What rebuilding and feeding a saved network needs (safetensors metadata: strings)."""
    return {"backbone": cfg.model.backbone, "width": str(cfg.model.width),
            "cifar_stem": str(cfg.model.cifar_stem), "image_size": str(cfg.data.image_size),
            "input_size": str(cfg.augment.size), "patch_size": str(cfg.model.patch_size),
            "depth": str(cfg.model.depth), "pool": cfg.model.pool,
            "mean": json.dumps(IMAGENET_MEAN), "std": json.dumps(IMAGENET_STD),
            "method": cfg.method.get("name", ""), "selfsup_version": __version__}


def _yaml_mapping(path: Path) -> dict:
    try:
        d = yaml.safe_load(rundir.read_text(path))
    except yaml.YAMLError as e:
        raise RunDirError(f"{path} is damaged ({str(e).splitlines()[0]}); re-run the command "
                          f"that made it to rebuild it from the checkpoint") from None
    if not isinstance(d, dict):
        raise RunDirError(f"{path} is damaged (empty, or not a mapping of sections); re-run the "
                          f"command that made it to rebuild it from the checkpoint")
    return d


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved configuration saved in a run directory."""
    p = Path(run_dir) / "config.yaml"
    if not p.exists():
        raise RunDirError(f"{run_dir}: not a selfsup run directory (no config.yaml)")
    return config_from_dict(_yaml_mapping(p))


def save_encoder(method, cfg: RunConfig, run_dir: Path) -> Path:
    from safetensors.torch import save_file

    meta = model_metadata(cfg)
    # "backbone": the file is a backbone's weights; "method": the method's own encoder module
    # (e.g. colorization's L-input wrapper, iGPT's palette + transformer), rebuilt from the config
    meta["encoder"] = "backbone" if getattr(method, "encoder_is_backbone", True) else "method"
    state = {k: v.detach().cpu().contiguous() for k, v in method.encoder.state_dict().items()}
    path = run_dir / "encoder.safetensors"
    with rundir.atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def load_encoder(run_dir: str | Path) -> tuple[torch.nn.Module, RunConfig]:
    """Rebuild the encoder of a finished run (or from its last checkpoint)."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    enc = build_backbone(cfg, init=False)     # its own weights are loaded below
    path = run_dir / "encoder.safetensors"
    if path.exists():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            kind = (f.metadata() or {}).get("encoder", "backbone")
        if kind == "method":
            enc = build_method(cfg).encoder
        enc.load_state_dict(load_file(str(path)))
    elif (run_dir / "checkpoints" / "last.pt").exists():
        from .train.checkpoint import load_checkpoint

        state = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
        # every method keeps its encoder as ``backbone`` (AugSelf: its base's, ``base.backbone``)
        prefix = "base.backbone." if any(k.startswith("base.backbone.") for k in state) \
            else "backbone."
        enc.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                             if k.startswith(prefix)})
    else:
        raise RunDirError(f"{run_dir}: no encoder.safetensors or checkpoint to load")
    return enc, cfg


def main_first(fn, everyone: bool = True):
    """Run ``fn`` on rank 0 first (creating run directories, building the image cache), then,
    when ``everyone``, on the other ranks. An error on rank 0 is raised on every rank instead of
    leaving them waiting. In a single process: just ``fn()``."""
    from .nn.distributed import all_gather_object, rank

    out, err = None, None
    if rank() == 0:
        try:
            out = fn()
        except Exception as e:  # re-raised below, after telling the other ranks
            err = e
    errors = all_gather_object(f"{type(err).__name__}: {err}" if err else None)
    if err is not None:
        raise err
    if errors[0]:
        raise RunDirError(f"rank 0 failed: {errors[0]}")
    if everyone and rank() != 0:
        out = fn()
    return out


def pretrain(cfg: RunConfig, run_dir: str | Path | None = None, stop_after: int | None = None,
             datasets: tuple[ImageDataset, ImageDataset | None] | None = None
             ) -> tuple[Path, dict]:
    """Pretrain ``cfg.method.name``; ``datasets``: (training images, labeled test images or None)
    already loaded (``selfsup fit``), else loaded as ``cfg.data`` says."""
    if getattr(METHODS.get(cfg.method.get("name", "simclr")), "semi_supervised", False):
        raise RunDirError(f"method '{cfg.method.get('name')}' trains a classifier from labels: "
                          f"use `selfsup semisup` (selfsup.semisupervised.train_semisup)")
    from .nn.distributed import init_from_env

    rank, world, _ = init_from_env()      # torchrun: one process per device, same command
    main = rank == 0
    from .nn.distributed import all_gather_object

    # rank 0's choice (a default name has a timestamp that could differ between ranks)
    run_dir = Path(all_gather_object(str(run_dir or cfg.train.out_dir or default_run_dir(cfg)))[0])
    main_first(lambda: prepare_run_dir(cfg, run_dir, "pretrain"), everyone=False)
    try:
        return _pretrain_locked(cfg, run_dir, stop_after, datasets, main)
    finally:
        if main:
            release_run_dir(run_dir)


def _pretrain_locked(cfg: RunConfig, run_dir: Path, stop_after: int | None, datasets,
                     main: bool) -> tuple[Path, dict]:
    from .nn.distributed import barrier

    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if datasets is not None:
        train_ds, test_ds = datasets
    else:
        # rank 0 builds the decode-once cache; the other ranks then read it
        train_ds = main_first(lambda: load_data(cfg, cfg.data.split, cfg.train.progress and main))
        test_ds = (main_first(lambda: load_data(cfg, cfg.data.test_split,
                                                cfg.train.progress and main))
                   if cfg.data.test_split else None)
    if main:
        train_ds.write_report(run_dir / "data_report.json")
    if cfg.data.labels_per_class and train_ds.has_labels:
        # methods that use labels (SupCon) see only N per class, chosen by seed: the same images
        # as the evaluation's labeled split with eval.labels_per_class = N
        from .data.splits import class_balanced_subset

        keep = class_balanced_subset(train_ds.labels, per_class=cfg.data.labels_per_class,
                                     seed=cfg.train.seed, classes=train_ds.classes)
        hidden = np.full(len(train_ds), -1, np.int64)
        hidden[keep] = train_ds.labels[keep]
        train_ds = ImageDataset(train_ds.images, hidden, train_ds.classes, train_ds.names,
                                train_ds.source, train_ds.skipped)
        if cfg.data.labeled_only:
            train_ds = train_ds.subset(np.sort(keep))
    if cfg.data.subset and cfg.data.subset < len(train_ds):
        idx = np.sort(np.random.default_rng(cfg.train.seed).choice(len(train_ds), cfg.data.subset,
                                                                  replace=False))
        train_ds = train_ds.subset(idx)
    if test_ds is not None and train_ds.has_labels and test_ds.has_labels:
        test_ds = test_ds.aligned_to(train_ds.classes)
    if main:
        check_data(run_dir, train_ds, cfg)
        rundir.write_json(run_dir / "splits.json",
                          {"train_names": train_ds.names if len(train_ds) <= 200_000 else "all",
                           "test_split": cfg.data.test_split}, indent=None)
    torch.manual_seed(cfg.train.seed)     # the same initial weights on every rank
    method = build_method(cfg)
    main_first(lambda: check_output_space(run_dir, method), everyone=False)
    monitor = (make_monitor(cfg, train_ds, test_ds, device)
               if cfg.eval.monitor and main else None)
    t0 = time.time()
    result = train(method, train_ds, cfg, run_dir, monitor=monitor, stop_after=stop_after)
    if "stopped_at" in result or not main:
        barrier()
        return run_dir, result
    summary = {"method": cfg.method.get("name"), "seed": cfg.train.seed, **result,
               "train_seconds": time.time() - t0, "n_train": len(train_ds),
               "skipped_files": len(train_ds.skipped)}
    save_encoder(method, cfg, run_dir)
    from .report.pictures import save_method_pictures

    pics = save_method_pictures(method, train_ds, cfg.augment.size, run_dir, device=device)
    if pics is not None:
        summary["pictures"] = str(pics)
    if test_ds is not None and train_ds.has_labels and test_ds.has_labels:
        # never probe on images that are also test images (pretraining on the test split
        # itself). Names are relative to their source, so they are compared only when both
        # sets come from the same source; different splits never share files.
        same_source = train_ds.source == test_ds.source
        test_names = set(test_ds.names) if same_source else set()
        keep = np.array([nm not in test_names for nm in train_ds.names], dtype=bool)
        probe_ds = labeled_train_subset(train_ds.subset(np.flatnonzero(keep)),
                                        cfg.eval.labels_per_class, cfg.eval.label_fraction,
                                        cfg.train.seed)
        splits = rundir.read_json(run_dir / "splits.json")
        splits["probe_names"] = probe_ds.names  # the labeled subset, saved with the run
        rundir.write_json(run_dir / "splits.json", splits, indent=None)
        summary["eval"] = evaluate_encoder(probe_encoder(method.encoder, cfg.eval.stage),
                                           probe_ds, test_ds, device=device,
                                           knn_k=(cfg.eval.knn_k, 20),
                                           knn_temperature=cfg.eval.knn_temperature,
                                           val_fraction=cfg.eval.val_fraction,
                                           seed=cfg.train.seed)
    rundir.write_json(run_dir / "summary.json", summary)
    barrier()
    return run_dir, summary
