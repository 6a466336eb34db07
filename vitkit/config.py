"""Run configuration: dataclass sections filled from a YAML preset and `section.key=value` overrides.

Every key is checked before any work starts: unknown keys name the nearest valid one, values are
type-checked and range-checked, and the model section is validated by building its ViTConfig.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import VitkitError, unknown
from .files import atomic_write_text


@dataclass
class DataConfig:
    spec: str = "digits"             # digits | mnist:DIR | folder:DIR | cifar10:DIR | cifar100:DIR | synthetic
                                     # | shards:DIR/train-{000000..000099}.tar (written by `vitkit data pack`)
    val_fraction: float = 0.1        # carved from the training data when the source has no val split
    test_fraction: float = 0.2       # held out of an image folder that has no test split
    num_workers: int = -1            # DataLoader worker processes; -1: 0 on CPU (the loader outpaces a CPU's
                                     # training, benchmarks in docs/training.md), up to 4 beside a GPU
    download: bool = False           # fetch mnist / cifar into DIR, with checksum verification
    strict: bool = False             # unreadable images: error instead of skip-with-warning
    limit_train: int = 0             # train on a stratified random N of the training images (0: all)
    shuffle_buffer: int = 2000       # streamed shards: samples held for shuffling, per loader worker


@dataclass
class AugConfig:
    random_resized_crop: bool = False
    rrc_scale_min: float = 0.08
    crop_padding: int = 0            # random crop after zero padding by this many pixels
    hflip: bool = False
    randaugment_n: int = 0           # number of RandAugment ops per image (0: off)
    randaugment_m: float = 9.0       # their magnitude, 0-10
    mixup: float = 0.0               # Beta(alpha, alpha) of Mixup (0: off)
    cutmix: float = 0.0              # Beta(alpha, alpha) of CutMix (0: off)
    label_smoothing: float = 0.0


@dataclass
class OptimConfig:
    name: str = "adamw"              # adamw | adam | sgd
    lr: float = 1e-3                 # peak learning rate, for the global batch
    weight_decay: float = 0.05       # adamw: decoupled, w -= lr * weight_decay * w; sgd: torch's L2 term; adam: none
                                     # (set 0). Never on biases, norms, position embeddings, tokens
    beta1: float = 0.9
    beta2: float = 0.999
    momentum: float = 0.9            # sgd only
    schedule: str = "cosine"         # cosine | linear | constant, after warm-up
    warmup_epochs: float = 1.0       # linear warm-up length in epochs ...
    warmup_steps: int = 0            # ... or in optimizer steps, as the paper gives it (10k); set one of the two
    min_lr: float = 0.0
    clip_grad: float = 1.0           # global gradient-norm clipping (0: off)
    accum_steps: int = 1             # gradient accumulation: optimizer step every N batches


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128            # global: all processes together (each takes batch_size / world size)
    eval_batch_size: int = 512
    seed: int = 0
    device: str = "cpu"              # cpu | cuda | cuda:N | mps
    precision: str = "auto"          # auto | fp32 | bf16 | fp16: autocast over fp32 master weights; auto = bf16 where the
                                     # hardware computes it natively, else fp32 (vitkit/precision.py); fp16 with loss scaling
    ema_decay: float = 0.0           # EMA of weights (0: off); evaluation then uses the EMA weights
    log_every: int = 50              # steps between metric lines
    checkpoint_every: int = 0        # also save `last` every N steps (0: at epoch ends only)
    out: str = ""                    # run folder (default runs/<timestamp>-<model>)
    deterministic: bool = False
    skip_nonfinite: bool = False     # skip a step with NaN/inf loss instead of stopping
    threads: int = 0                 # torch intra-op threads (0: torch's default)
    tensorboard: bool = True         # also log to TensorBoard when the package is installed
    init: str = ""                   # start from these weights (fine-tuning): any file vitkit.load_model reads
    keep_head: bool = False          # with init: keep the old head when the classes match (default: new zero head)
    grad_checkpointing: bool = False  # recompute block activations in backward: less memory, ~30% more compute
    fsdp: bool = False               # under torchrun: shard parameters, gradients and optimizer state (FSDP)
    compile: bool = False            # torch.compile the training forward and backward (pays on small models)
    objective: str = "classify"      # classify | mpp (masked patch prediction pre-training; labels unused)


@dataclass
class RunConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"name": "vit_digits_patch4_8"})
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def model_name(self) -> str:
        return str(self.model.get("name", ""))

    @property
    def model_overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "name"}


SECTIONS = {f.name: f for f in dataclasses.fields(RunConfig)}
CHOICES = {("optim", "name"): ("adamw", "adam", "sgd"), ("optim", "schedule"): ("cosine", "linear", "constant"),
           ("train", "precision"): ("auto", "fp32", "bf16", "fp16"), ("train", "objective"): ("classify", "mpp")}
LEGACY = {("train", "amp"): ("precision", {"none": "fp32", "bf16": "bf16", "fp16": "fp16"})}  # key -> (new key, values)
NON_NEGATIVE = {"weight_decay", "min_lr", "clip_grad", "warmup_epochs", "warmup_steps", "mixup", "cutmix",
                "crop_padding", "randaugment_n", "ema_decay", "checkpoint_every", "threads", "limit_train"}
POSITIVE = {"epochs", "batch_size", "eval_batch_size", "accum_steps", "log_every"}
FRACTIONS = {"val_fraction", "test_fraction", "label_smoothing", "beta1", "beta2", "momentum", "rrc_scale_min"}


def _check_type(where: str, value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise VitkitError(f"{where}: expected true/false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise VitkitError(f"{where}: expected an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise VitkitError(f"{where}: expected a number, got {value!r}")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise VitkitError(f"{where}: expected a string, got {value!r}")
    elif origin is not None and type(None) in args:
        if value is not None:
            return _check_type(where, value, next(a for a in args if a is not type(None)))
    return value


def _apply_section(section: str, obj: Any, values: dict[str, Any]) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        if key not in names:
            raise unknown(f"key in section '{section}'", key, names)
        value = _check_type(f"{section}.{key}", value, hints[key])
        setattr(obj, key, value)


# (key that would be ignored, the condition under which it is, why) for keys a user set explicitly
IGNORED_WHEN = [
    (("optim", "momentum"), lambda c: c.optim.name != "sgd", "only optim.name=sgd uses momentum"),
    (("optim", "beta1"), lambda c: c.optim.name == "sgd", "optim.name=sgd has no Adam betas"),
    (("optim", "beta2"), lambda c: c.optim.name == "sgd", "optim.name=sgd has no Adam betas"),
    (("optim", "min_lr"), lambda c: c.optim.schedule == "constant", "optim.schedule=constant never decays"),
    (("optim", "warmup_epochs"), lambda c: c.optim.warmup_steps > 0, "optim.warmup_steps is set too: set one"),
    (("aug", "mixup"), lambda c: c.train.objective == "mpp", "masked patch prediction uses no labels to mix"),
    (("aug", "cutmix"), lambda c: c.train.objective == "mpp", "masked patch prediction uses no labels to mix"),
    (("aug", "label_smoothing"), lambda c: c.train.objective == "mpp", "masked patch prediction has no labels"),
    (("train", "keep_head"), lambda c: not c.train.init, "keep_head applies to fine-tuning (train.init)"),
    (("data", "shuffle_buffer"), lambda c: not c.data.spec.startswith("shards:"), "only streamed shards use it"),
]


def check_ignored(cfg: RunConfig, explicit: set[tuple[str, str]]) -> None:
    """A value the run would silently drop is an error that names the key, before any work starts."""
    if cfg.optim.name == "adam" and cfg.optim.weight_decay > 0:
        raise VitkitError(f"optim.weight_decay={cfg.optim.weight_decay:g} would be ignored: optim.name=adam applies "
                          f"no weight decay; use optim.name=adamw (Adam with decoupled decay, as the paper's "
                          f"official code applies it) or set optim.weight_decay=0")
    for (section, key), ignored, why in IGNORED_WHEN:
        value = getattr(getattr(cfg, section), key)
        if (section, key) in explicit and value and ignored(cfg):
            raise VitkitError(f"{section}.{key}={value} would be ignored: {why}")


def validate(cfg: RunConfig, explicit: set[tuple[str, str]] = frozenset()) -> None:
    """Range and choice checks, values that would be ignored (among the keys in `explicit`, the ones
    the user set), and the model section built once (catches patch/size/heads mistakes)."""
    for section in ("data", "aug", "optim", "train"):
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            v, where = getattr(obj, f.name), f"{section}.{f.name}"
            if (section, f.name) in CHOICES and v not in CHOICES[(section, f.name)]:
                raise unknown(where, v, CHOICES[(section, f.name)])
            if f.name in NON_NEGATIVE and v < 0:
                raise VitkitError(f"{where} must be >= 0, got {v}")
            if f.name in POSITIVE and v <= 0:
                raise VitkitError(f"{where} must be > 0, got {v}")
            if f.name in FRACTIONS and not 0 <= v < 1:
                raise VitkitError(f"{where} must be in [0, 1), got {v}")
    if cfg.data.num_workers < -1:
        raise VitkitError(f"data.num_workers must be >= 0 (or -1: chosen for the device), got {cfg.data.num_workers}")
    if cfg.optim.lr <= 0:
        raise VitkitError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    check_ignored(cfg, explicit)
    from .models import model_config

    if cfg.train.init:
        return  # the architecture comes from the weights file
    if not cfg.model_name:
        raise VitkitError("model.name is missing (a registered name, see `vitkit models`)")
    model_config(cfg.model_name, **cfg.model_overrides)


def parse_override(item: str) -> tuple[str, str, Any]:
    """`section.key=value` with the value read as YAML (numbers, booleans, lists, null)."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise VitkitError(f"--set expects section.key=value, got '{item}'")
    path, raw = item.split("=", 1)
    section, key = path.split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return section.strip(), key.strip(), value


PRESET_DIR = Path(__file__).parent / "configs"


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_preset(name: str | Path) -> Path:
    """A YAML path, or the name of a preset shipped with vitkit (`digits`, `mnist`, ...)."""
    p = Path(name)
    if p.is_file():
        return p
    if (PRESET_DIR / f"{name}.yaml").is_file():
        return PRESET_DIR / f"{name}.yaml"
    if p.suffix in (".yaml", ".yml") or "/" in str(name):
        raise VitkitError(f"config file {p} does not exist")
    raise unknown("config preset", str(name), presets())


def build_config(path: str | Path | None = None, overrides: list[str] | None = None,
                 base: dict[str, Any] | None = None) -> RunConfig:
    """Defaults <- YAML file (or `base` dict) <- `section.key=value` overrides, then validated."""
    raw: dict[str, Any] = {}
    if path:
        p = resolve_preset(path)
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise VitkitError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise VitkitError(f"config file {p} must hold a mapping of sections")
    if base:
        raw = {**raw, **base}
    cfg = RunConfig()
    explicit: set[tuple[str, str]] = set()
    for section, values in raw.items():
        _merge(cfg, section, values)
        explicit |= {(section, k) for k in values}
    for item in overrides or []:
        section, key, value = parse_override(item)
        _merge(cfg, section, {key: value})
        explicit.add((section, key))
    defaults = RunConfig()
    changed = {(s, k) for s, k in explicit if s != "model" and hasattr(getattr(cfg, s), k)  # (not a legacy key)
               and getattr(getattr(cfg, s), k) != getattr(getattr(defaults, s), k)}
    validate(cfg, changed)  # a saved config.yaml lists every key: only values off their default count as set
    return cfg


def _merge(cfg: RunConfig, section: str, values: Any) -> None:
    if section not in SECTIONS:
        raise unknown("config section", section, SECTIONS)
    if not isinstance(values, dict):
        raise VitkitError(f"config section '{section}' must be a mapping, got {values!r}")
    if section == "model":
        from .models.config import ResNetConfig, ViTConfig

        valid = {"name"} | set(ViTConfig.field_names()) | set(ResNetConfig.field_names())
        for k in values:
            if k not in valid:
                raise unknown("key in section 'model'", k, valid)
        if "name" in values and values["name"] != cfg.model.get("name"):
            cfg.model = {"name": values["name"]}
        cfg.model.update(values)
    else:
        for (sec, old), (new, mapping) in LEGACY.items():  # a run folder written before the key was renamed
            if sec == section and old in values:
                values = dict(values)
                value = values.pop(old)
                if value not in mapping:
                    raise unknown(f"{section}.{old} (now {section}.{new})", str(value), mapping)
                values.setdefault(new, mapping[value])
        _apply_section(section, getattr(cfg, section), values)


def save_config(cfg: RunConfig, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
