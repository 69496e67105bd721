"""Typed run configuration: dataclass defaults < YAML preset < ``key=value`` overrides.

Keys are ``section.field`` (``optim.lr=0.3``); the ``method`` section is checked against the chosen
method's own Config dataclass. An unknown key is an error that lists the valid keys.
"""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .augment.views import ViewConfig


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    dataset: str = "digits"          # a registered name (selfsup list datasets) or 'folder'
    path: str | None = None          # folder / .tar.gz / .csv (required for folder and cifar10)
    split: str | None = None         # sub-folder of path used for training (cifar10: train)
    test_split: str | None = None    # sub-folder with held-out labeled images for evaluation
    image_size: int = 32             # decode-once cache resolution (shorter side + centre crop)
    cache_dir: str | None = None     # default: $SELFSUP_CACHE or ~/.cache/selfsup
    strict: bool = False             # fail on unreadable files instead of skipping them
    subset: int | None = None        # use only this many training images (chosen by seed)
    labels_per_class: int | None = None  # semi-supervised: keep N labels per class (by seed),
                                         # hide the rest; None = every label given is used
    labeled_only: bool = False       # pretraining with labels_per_class: train on those labeled
                                     # images only (drop the hidden ones)
    val_per_class: int = 0           # semi-supervised: labeled images per class held out for
                                     # model selection (never trained on; not the test split)


@dataclass
class ModelConfig:
    backbone: str = "resnet18"
    width: float = 1.0
    cifar_stem: bool = True
    channels_last: bool = True
    patch_size: int = 4              # ViTs only: pixels per patch side (image size: augment.size)
    depth: int = 0                   # ViTs only: transformer blocks (0 = the size's 12)
    pool: str = "cls"                # ViTs only: the pooled feature, cls (class token) or mean
                                     # (average patch token, no class token: I-JEPA)
    init: str = ""                   # start from these weights: a safetensors/PyTorch state dict
                                     # or a selfsup run folder (backbones/external.py)
    sync_bn: str = "auto"            # torchrun on GPUs: BatchNorm statistics over the global
                                     # batch. auto = where the method's paper does (SimCLR, BYOL,
                                     # SimSiam, Barlow Twins, VICReg, SwAV, SupCon); on | off


@dataclass
class OptimConfig:
    name: str = "lars"               # sgd | lars | adamw
    lr: float = 0.3                  # base lr for batch 256; scaled by batch_size / 256
    weight_decay: float = 1e-6
    momentum: float = 0.9
    warmup: float = 0.05             # fraction of steps with linear warm-up
    final_lr_ratio: float = 0.0      # cosine decays to lr * final_lr_ratio
    grad_clip: float | None = None   # max global grad norm
    lars_eta: float = 0.001          # LARS trust coefficient
    nesterov: bool = False           # SGD only (FixMatch uses Nesterov momentum)
    schedule: str = "cosine"         # cosine | fixmatch (cos to 7 pi / 16) | constant
    scale_lr: bool = True            # lr * batch_size / 256 (linear scaling rule); off = lr as given


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 256
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    precision: str = "auto"          # auto (bf16 autocast on CUDA, float32 on CPU) | fp32 | bf16
                                     # (bf16 on CPU: ~2x faster where the CPU has AMX, slower
                                     # without it; BENCHMARKS section 1)
    compile: bool = False            # torch.compile the method's backbone (eager stays the default
                                     # and the fallback; needs a C++ compiler on the CPU)
    threads: int | None = None       # torch CPU threads (None = torch's default)
    checkpoint_every: int = 500
    checkpoint_seconds: float = 120.0  # also checkpoint when this much time passed (0 = off)
    time_limit: float = 0.0          # seconds: end the run at the first step past it (0 = none)
    fit_to_time: bool = False        # with time_limit: re-plan steps from the measured speed so
                                     # the schedule ends at the limit (nn.schedules.steps_to_fill)
    progressive_side: int = 0        # progressive resizing: views start at this side (px) and
    progressive_until: float = 0.75  # grow linearly to full size by this fraction of training
                                     # (0 = off; train.loop.progressive_side)
    log_every: int = 10
    eval_every: int | None = None    # steps between monitor evals; None = once per epoch
    out_dir: str | None = None       # default runs/<method>-<timestamp>
    overwrite: bool = False          # replace a finished run in out_dir (CLI --overwrite)
    allow_data_change: bool = False  # resume even if the training images changed since the start
    progress: bool = True


@dataclass
class EvalConfig:
    knn_k: int = 200
    knn_temperature: float = 0.1
    monitor: bool = True             # online kNN + collapse metrics during pretraining
    monitor_size: int = 2000         # labeled images used as kNN bank (and held-out queries)
    labels_per_class: int | None = None
    label_fraction: float | None = None
    val_fraction: float = 0.2        # linear probe: L2 chosen on this part of the labeled set
    collapse_std_ratio: float = 0.1  # collapsed: embedding std < ratio / sqrt(d) ...
    collapse_rank: float = 1.5       # ... or effective rank below this
    collapse_rank_fraction: float = 0.01  # ... or below this fraction of the embedding dimension
    collapse_after: float = 0.1      # judged only after this fraction of training (heads
                                     # without BN start concentrated at initialisation)
    stage: int = 0                   # probe the features after this backbone stage (1-based;
                                     # 0 = the final features). RotNet's best is stage 2 of 4.
    median_last: int = 5             # semi-supervised: report the median test accuracy of the
                                     # last N evaluations (FixMatch: 20 checkpoints)
    flip_tta: bool = False           # semi-supervised: classify (every evaluation, and the
                                     # saved model in predict/export) by the mean logits of the
                                     # image and its mirror; for models trained with flips
    test_curve: bool = True          # semi-supervised: the test set at every evaluation (a
                                     # learning curve); false: once, after training (`fit`: the
                                     # user's budget goes to training, not to a test curve)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig,
            "eval": EvalConfig, "augment": ViewConfig}


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: dict = field(default_factory=lambda: {"name": "simclr"})
    augment: ViewConfig = field(default_factory=ViewConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v, dict) else asdict(v))
                for k, v in ((f.name, getattr(self, f.name)) for f in fields(self))}

    def method_config(self):
        """The method's typed Config built from the ``method`` section."""
        from .methods import METHODS

        from .methods.augself import split_augself

        d = dict(self.method)
        cls = METHODS.get(d.pop("name", "simclr")).Config
        d, _ = split_augself(d)  # AugSelf's own keys (method.augself_*) wrap the method
        return _build(cls, d, "method")

    def augself_config(self):
        """AugSelf's config when ``method.augself_*`` asks for it, else None."""
        from .methods.augself import split_augself

        return split_augself(dict(self.method))[1]


def _coerce(value, typ, key: str):
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", ())):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):  # YAML 1.1 reads '5e-4' as a string
        try:
            return float(value)
        except ValueError:
            pass
    if typ in (int, str, bool) and isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    raise ConfigError(f"{key}: expected {getattr(typ, '__name__', typ)}, got {value!r}")


INF = float("inf")
# allowed ranges (inclusive) of the settings whose wrong values would otherwise fail mid-run
# with a raw error, or worse run and mislead (steps=0 "finishing" with a random encoder)
RANGES = {
    "data.image_size": (8, 4096), "data.subset": (1, INF), "data.labels_per_class": (1, INF),
    "data.val_per_class": (0, INF),
    "model.width": (1 / 64, 16), "model.patch_size": (1, 256), "model.depth": (0, 256),
    "optim.lr": (0, 1e3), "optim.weight_decay": (0, 10), "optim.momentum": (0, 1),
    "optim.warmup": (0, 1), "optim.final_lr_ratio": (0, 1), "optim.grad_clip": (0, INF),
    "optim.lars_eta": (0, 1),
    "train.steps": (1, INF), "train.batch_size": (1, INF), "train.seed": (0, 2**31 - 1),
    "train.threads": (0, 4096), "train.checkpoint_every": (1, INF),
    "train.checkpoint_seconds": (0, INF), "train.time_limit": (0, INF), "train.log_every": (1, INF),
    "train.eval_every": (0, INF),
    "eval.knn_k": (1, INF), "eval.knn_temperature": (1e-6, INF), "eval.monitor_size": (2, INF),
    "eval.label_fraction": (1e-9, 1), "eval.val_fraction": (0, 0.9), "eval.stage": (0, 16),
    "eval.median_last": (1, INF), "eval.labels_per_class": (1, INF),
    "augment.size": (4, 4096),
}


def _check_value(key: str, value) -> None:
    """Numbers must be finite (NaN would also make a resumed run look like a changed one:
    NaN != NaN) and, for the keys in RANGES, inside their range. One line naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value}: must be a finite number")
    if key in RANGES:
        lo, hi = RANGES[key]
        if not lo <= value <= hi:
            span = f"{lo:g} to {hi:g}" if hi != INF else f">= {lo:g}"
            raise ConfigError(f"{key}={value}: out of range (allowed: {span})")


def _build(cls, values: dict, section: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                          f"valid keys in '{section}': {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    for k, v in kwargs.items():
        for x in (v if isinstance(v, tuple) else (v,)):
            _check_value(f"{section}.{k}", x)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[str, str, object]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form section.key=value")
    key, raw = text.split("=", 1)
    if "." not in key:
        raise ConfigError(f"override '{text}': the key needs a section, e.g. optim.lr=0.1; "
                          f"sections: {', '.join(['method', *SECTIONS])}")
    section, name = key.split(".", 1)
    value = yaml.safe_load(raw) if raw != "" else None
    return section, name, value


def load_config(preset: str | Path | None = None, overrides: list[str] | tuple = ()) -> RunConfig:
    """Build a RunConfig from an optional YAML preset (a path, or the name of a bundled preset)
    and a list of ``section.key=value`` overrides."""
    raw: dict[str, dict] = {}
    if preset:
        path = resolve_preset(preset)
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections")
        for section, values in loaded.items():
            if section not in SECTIONS and section != "method":
                raise ConfigError(f"{path}: unknown section '{section}'; valid: "
                                  f"{', '.join(['method', *SECTIONS])}")
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section '{section}' must be a mapping")
            raw.setdefault(section, {}).update(values)
    parsed = [parse_override(text) + (text,) for text in overrides]
    names = [value for section, name, value, _ in parsed if (section, name) == ("method", "name")]
    if names and names[-1] != raw.get("method", {}).get("name", names[-1]):
        # the preset's method keys belong to another method; the overrides' own method keys
        # are kept whatever their order (method.out_dim=1024 method.name=dino == the reverse)
        raw["method"] = {}
    for section, name, value, text in parsed:
        if section not in SECTIONS and section != "method":
            raise ConfigError(f"unknown section '{section}' in '{text}'; valid: "
                              f"{', '.join(['method', *SECTIONS])}")
        raw.setdefault(section, {})[name] = value
    cfg = RunConfig(method={"name": "simclr", **raw.get("method", {})},
                    **{s: _build(cls, raw.get(s, {}), s) for s, cls in SECTIONS.items()})
    cfg.method_config()  # validates the method section now, not mid-run
    return cfg


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """A copy of ``cfg`` with ``section.key=value`` overrides applied (same checks as load_config)."""
    d = cfg.to_dict()
    for text in overrides:
        section, name, value = parse_override(text)
        if section not in d:
            raise ConfigError(f"unknown section '{section}' in '{text}'; valid: {', '.join(d)}")
        d[section][name] = value
    new = config_from_dict(d)
    new.method_config()
    return new


def config_from_dict(d: dict) -> RunConfig:
    return RunConfig(method=dict(d.get("method", {"name": "simclr"})),
                     **{s: _build(cls, d.get(s, {}), s) for s, cls in SECTIONS.items()})


PRESET_DIR = Path(__file__).parent / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_preset(preset: str | Path) -> Path:
    p = Path(preset)
    if p.is_file():
        return p
    bundled = PRESET_DIR / f"{preset}.yaml"
    if bundled.is_file():
        return bundled
    raise ConfigError(f"preset '{preset}' is neither a file nor a bundled preset; bundled: "
                      f"{', '.join(preset_names())}")
