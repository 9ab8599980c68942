"""The typed, validated experiment config: YAML file + dotted ``--set`` overrides.

Sections ``data``, ``model``, ``head``, ``train``, ``diagnostics``, ``report``. Unknown keys and wrong
types are errors that name the key and suggest the closest valid one; the fully resolved
config is written next to the results, and running that file reproduces the run.

>>> cfg = load_config(None, ["train.epochs=3", "head.name=log_softmax"])
>>> cfg.train.epochs, cfg.head.name
(3, 'log_softmax')
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from softmaxlab.errors import UserError


class _Section(BaseModel):
    # Unknown keys are errors, not silently ignored; assignments are re-validated.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _registered(kind: str, name: str) -> str:
    """``name`` if it is in the registry of ``kind``; else a ValueError listing valid names.

    The registries are imported here, not at module level, because their modules import
    the config types.
    """
    if kind == "dataset":
        from softmaxlab.data import DATASETS as registry
    elif kind == "model":
        from softmaxlab.models import MODELS as registry
    elif kind == "head":
        from softmaxlab.heads import HEADS as registry
    else:
        from softmaxlab.activations import ACTIVATIONS as registry
    if name not in registry:
        raise ValueError(registry.unknown_message(name))
    return name


class DataConfig(_Section):
    """Which images, how they are split and augmented."""

    name: str = "shapes"  # registry name: shapes, cifar10, cifar100, npz, imagefolder (`softmaxlab list datasets`)
    # cifar10/cifar100: the folder holding (or to receive) cifar-10-batches-py/ or cifar-100-python/;
    # npz: the .npz file; imagefolder: the folder of class folders. Unused by shapes.
    root: str | None = None
    download: bool = False  # cifar10/cifar100: fetch missing files (torchvision's downloader, MD5-checked)
    labels: Literal["fine", "coarse"] = "fine"  # cifar100: 100 fine classes (with the hierarchy) or the 20 coarse
    num_classes: int = Field(10, ge=2)  # shapes only: number of fine classes
    # Every dataset: images are generated / resized (square) to this side. Unset = the dataset's own size,
    # written into the run's config.yaml once the data is loaded: npz as stored (the shorter side when not
    # square), cifar10 / cifar100 and shapes 32, imagefolder 64 (its images differ in size).
    image_size: int | None = Field(None, ge=8)
    train_size: int = Field(6000, ge=1)  # shapes only: generated training images
    val_size: int = Field(1000, ge=1)  # shapes only: generated validation images
    test_size: int = Field(2000, ge=1)  # shapes only: generated test images
    # All but shapes: share of the training images held out for validation when there is no official
    # validation split (stratified by class, seeded by data.seed).
    val_fraction: float = Field(0.1, gt=0, lt=1)
    # npz without x_test, imagefolder without a test folder: share of all images held out for testing.
    test_fraction: float = Field(0.2, gt=0, lt=1)
    skip_corrupt: bool = False  # imagefolder: skip unreadable images with a warning (false: stop, naming them)
    # imagefolder: where decoded images are cached; None = <root>/.softmaxlab-cache, or the user cache
    # folder (~/.cache/softmaxlab) when the root is read-only.
    cache_dir: str | None = None
    seed: int = 0  # seed of the data itself (generation, splits), separate from train.seed
    crop_padding: int = Field(4, ge=0)  # random-crop augmentation: pad by this many pixels
    flip: bool = True  # random horizontal flips
    # Random-resized crop (for larger images, e.g. 64 px and up): crop a box covering a fraction of the
    # image area in rrc_scale, with aspect ratio (w / h) in rrc_ratio, and resize it back; replaces the
    # padded crop above (crop_padding is then unused).
    random_resized_crop: bool = False
    rrc_scale: tuple[float, float] = (0.35, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @field_validator("rrc_scale", "rrc_ratio")
    @classmethod
    def _range(cls, v: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        upper = 1.0 if info.field_name == "rrc_scale" else float("inf")
        if not 0 < v[0] <= v[1] <= upper:
            bound = "0 < low <= high <= 1" if upper == 1.0 else "0 < low <= high"
            raise ValueError(f"must be [low, high] with {bound}, got {list(v)}")
        return v

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return _registered("dataset", v)

    @field_validator(
        "root",
        "download",
        "labels",
        "num_classes",
        "train_size",
        "val_size",
        "test_size",
        "val_fraction",
        "test_fraction",
        "skip_corrupt",
        "cache_dir",
    )
    @classmethod
    def _dataset_only(cls, v: Any, info: ValidationInfo) -> Any:
        # Options that the chosen dataset would silently ignore are errors.
        # Fields are validated in order, so `name` is in info.data when it was valid.
        on_disk = ("cifar10", "cifar100", "npz", "imagefolder")
        allowed = {
            "root": on_disk,
            "num_classes": ("shapes",),
            "train_size": ("shapes",),
            "val_size": ("shapes",),
            "test_size": ("shapes",),
            "val_fraction": on_disk,
            "test_fraction": ("npz", "imagefolder"),
            "download": ("cifar10", "cifar100"),
            "labels": ("cifar100",),
            "skip_corrupt": ("imagefolder",),
            "cache_dir": ("imagefolder",),
        }[info.field_name]
        name = info.data.get("name")
        if v != cls.model_fields[info.field_name].default and name is not None and name not in allowed:
            raise ValueError(f"applies to {' and '.join(allowed)} only; data.name is {name!r}")
        return v


class ModelConfig(_Section):
    """The backbone: images -> features."""

    name: str = "simple_cnn"  # registry name (`softmaxlab list models`)
    # Output channels of each block (one block per entry); unset = the model's own default, written
    # out when validated so the resolved config shows it: simple_cnn [32, 64, 128, 256], resnet12 [64, 160, 320, 640].
    widths: list[int] = Field(None, validate_default=True)
    width: float = Field(1.0, gt=0)  # multiplier of every width (rounded, at least 1): resnet12 at 0.25 is 16-40-80-160
    activation: str = "relu"  # registry name (`softmaxlab list activations`)
    # The softmax activations (softmax_h, softmax_w, softmax_hw, softmax_c) only:
    activation_temperature: float = Field(1.0, gt=0)  # T: the input is divided by T before the softmax
    learn_activation_temperature: bool = False  # learn log T (one per block), starting at activation_temperature
    softmax_rescale: bool = False  # multiply by the number of positions normalised over: mean 1, not 1/n
    softmax_blocks: list[int] | None = None  # 0-based blocks that get `activation` (relu in the others); None = all
    batch_norm: bool = True  # BatchNorm after every convolution
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # dropout before the head

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        return _registered("model", v)

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, v: str) -> str:
        return _registered("activation", v)

    @field_validator("activation_temperature", "learn_activation_temperature", "softmax_rescale", "softmax_blocks")
    @classmethod
    def _softmax_only(cls, v: Any, info: ValidationInfo) -> Any:
        # Options that would be silently ignored with a pointwise activation are errors.
        # Fields are validated in order, so `activation` is in info.data when it was valid.
        from softmaxlab.activations import is_softmax, softmax_names

        default = cls.model_fields[info.field_name].default
        activation = info.data.get("activation")
        if v != default and activation is not None and not is_softmax(activation):
            raise ValueError(
                f"applies to the softmax activations only ({', '.join(softmax_names())}); "
                f"model.activation is {activation!r}"
            )
        if info.field_name == "softmax_blocks" and v is not None and (not v or min(v) < 0 or len(set(v)) != len(v)):
            raise ValueError("must be a non-empty list of distinct 0-based block indices")
        return v

    @field_validator("widths", mode="before")
    @classmethod
    def _model_default_widths(cls, v: Any, info: ValidationInfo) -> Any:
        # `name` is validated first (field order), so it is in info.data when it was valid.
        if v is None and "name" in info.data:
            from softmaxlab.models.base import default_widths

            return default_widths(info.data["name"])
        return v

    @field_validator("widths")
    @classmethod
    def _positive_widths(cls, v: list[int]) -> list[int]:
        if not v or any(w < 1 for w in v):
            raise ValueError("must be a non-empty list of positive integers")
        return v


class HeadConfig(_Section):
    """The output normaliser and its options."""

    name: str = "softmax"  # registry name (`softmaxlab list heads`)
    temperature: float = Field(1.0, gt=0)  # temperature: T in softmax(z / T); the start value when learned
    learn_temperature: bool = False  # temperature: learn log T (so T stays positive) with the network
    tau: float = Field(1.0, gt=0)  # gumbel: temperature tau0 of the Gumbel-softmax samples
    hard: bool = False  # gumbel: straight-through one-hot samples (forward one-hot, backward soft)
    tau_schedule: Literal["constant", "exponential"] = "constant"  # gumbel: how tau changes with the step
    tau_min: float = Field(0.5, gt=0)  # gumbel, exponential: tau = max(tau_min, tau0 * exp(-anneal_rate * step))
    anneal_rate: float = Field(1e-3, ge=0)  # gumbel, exponential: decay rate of tau per optimisation step
    cutoffs: list[int] | None = None  # adaptive: increasing class cutoffs of the clusters; None = from K

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return _registered("head", v)

    @field_validator(
        "temperature", "learn_temperature", "tau", "hard", "tau_schedule", "tau_min", "anneal_rate", "cutoffs"
    )
    @classmethod
    def _head_only(cls, v: Any, info: ValidationInfo) -> Any:
        # Options that the chosen head would silently ignore are errors.
        # Fields are validated in order, so `name` (and `tau_schedule`) are in info.data when valid.
        key = info.field_name
        head = {"temperature": "temperature", "learn_temperature": "temperature", "cutoffs": "adaptive"}
        owner = head.get(key, "gumbel")
        name = info.data.get("name")
        changed = v != cls.model_fields[key].default
        if changed and name is not None and name != owner:
            raise ValueError(f"applies to head.name={owner} only; head.name is {name!r}")
        annealing = info.data.get("tau_schedule", "exponential") == "exponential"
        if changed and key in ("tau_min", "anneal_rate") and not annealing:
            raise ValueError("applies to head.tau_schedule=exponential only")
        return v

    @field_validator("cutoffs")
    @classmethod
    def _increasing_cutoffs(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or v[0] < 1 or any(v[i + 1] <= v[i] for i in range(len(v) - 1))):
            raise ValueError("must be a non-empty, strictly increasing list of positive class counts")
        return v


class TrainConfig(_Section):
    """Optimisation."""

    epochs: int = Field(8, ge=1)  # passes over the training split
    batch_size: int = Field(128, ge=1)  # images per optimisation step
    eval_batch_size: int = Field(1000, ge=1)  # images per forward pass when evaluating
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)  # peak learning rate
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD momentum (Nesterov when `nesterov`)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)  # L2 penalty (decoupled for adamw)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup_fraction: float = Field(0.2, ge=0, lt=1)  # onecycle: share of steps warming up
    seed: int = 0  # python, numpy, torch and loader seeds
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    # Mixed precision: none = float32; bf16 = bfloat16 autocast (CPU or CUDA); fp16 = float16
    # autocast with dynamic loss scaling (CUDA only). Heads normalise in float32 either way.
    amp: Literal["none", "bf16", "fp16"] = "none"
    # NHWC memory layout for model and batches: 1.1-1.3x faster training on the CPU (and the layout
    # of recent GPUs' tensor cores). null (unset) = on, except with a softmax `model.activation`,
    # whose softmax over height / width is slower in NHWC (Config.uses_channels_last decides).
    channels_last: bool | None = None
    compile: bool = False  # torch.compile the model (first epoch pays the compilation)
    # Progressive resizing (as in FFCV's and fast.ai's fast-training recipes), off by default: with
    # low_res_fraction > 0 the first `low_res_fraction` of the epochs (rounded down, at least one) train
    # on images downscaled to `low_res_size` px (bilinear, antialiased, after the crop and flip), then
    # the size grows linearly by epoch, rounded up to a multiple of 16 px, and reaches data.image_size
    # by the last epoch; validation, test and prediction always see data.image_size. Unset size = half
    # of data.image_size but not below 32 px, so with it unset images of 32 px and less are never
    # resized. 0.5 on the 64 px Intel scenes: about half the training time for about a point of
    # accuracy (README "Why these defaults"). Config.train_image_size gives the size of each epoch.
    low_res_fraction: float = Field(0.0, ge=0, lt=1)
    low_res_size: int | None = Field(None, ge=8)
    # Also checkpoint every this-many optimisation steps (0 = only at the end of each epoch).
    checkpoint_every: int = Field(0, ge=0)

    @field_validator("low_res_fraction")
    @classmethod
    def _some_low_res_epoch(cls, v: float, info: ValidationInfo) -> float:
        # A fraction that rounds down to no epoch would silently train at full size.
        epochs = info.data.get("epochs")  # validated first (field order); absent when invalid
        if v > 0 and epochs == 1:
            raise ValueError("progressive resizing needs train.epochs >= 2 (one at the low size, one at full); set 0")
        if v > 0 and epochs is not None and math.floor(v * epochs + 1e-9) == 0:
            raise ValueError(
                f"{v} of {epochs} epochs rounds down to no epoch at the low size; "
                f"use at least {math.ceil(1000 / epochs) / 1000:g} (one epoch) or 0 (off)"
            )
        return v

    @field_validator("low_res_size")
    @classmethod
    def _progressive_only(cls, v: int | None, info: ValidationInfo) -> int | None:
        # Silently ignored otherwise; low_res_fraction is validated first (field order).
        if v is not None and info.data.get("low_res_fraction", 1) == 0:
            raise ValueError("applies with train.low_res_fraction > 0 only (progressive resizing is off)")
        return v


class DiagnosticsConfig(_Section):
    """Gradient flow and activation statistics recorded in every epoch's metrics.jsonl record."""

    enabled: bool = True  # grad_norms, activation_stats and figures/feature_maps.png; false = empty dicts, no figure
    probe_size: int = Field(256, ge=1)  # activation_stats: the first this-many validation images, each epoch


class ReportConfig(_Section):
    """The report.html / report.md written at the end of a run (and of the demo)."""

    # Draw the report's figures. false: tables, notes and configs only (milliseconds instead of
    # about a second); `softmaxlab report DIR` draws them later from the files on disk.
    figures: bool = True


_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


class Config(_Section):
    """A whole experiment."""

    name: str | None = None  # run directory name; a timestamp when unset
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("name", mode="before")
    @classmethod
    def _name_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v  # --set name=2024

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        if v is not None and (not _SAFE_NAME.fullmatch(v) or v in {".", ".."}):
            raise ValueError("must be a directory name of letters, digits, '.', '_' or '-'")
        return v

    def uses_channels_last(self) -> bool:
        """``train.channels_last`` when set; unset: True unless ``model.activation`` is a softmax.

        Decided here, from the config as it is, rather than stored at validation: a sweep
        variant or a copy that changes the activation then gets the layout that fits it.
        """
        if self.train.channels_last is not None:
            return self.train.channels_last
        from softmaxlab.activations import is_softmax

        return not is_softmax(self.model.activation)

    def train_image_size(self, epoch: int, image_size: int | None = None) -> int:
        """Side of the training images in ``epoch`` (1-based) under progressive resizing.

        With ``s`` = ``image_size`` (default ``data.image_size``, which must then be set),
        ``E`` = ``train.epochs``, ``L = floor(low_res_fraction * E)`` and ``l`` =
        ``train.low_res_size`` (unset: ``max(32, s // 2)``):

            size(e) = l                                          for e <= L
            size(e) = ceil16(l + (s - l) * (e - L) / (E - L))    for e > L

        each capped at ``s`` (and ``s`` throughout when ``L = 0``), where ``ceil16`` rounds up
        to a multiple of 16 px (so that four 2x2 poolings divide the ramp's sizes without dropping
        a border; the low size itself is used as it is): the ramp reaches ``s`` by the last epoch,
        earlier when the rounding gets there first. ``low_res_fraction=0.5`` at 64 px over 8 epochs: 32, 32, 32,
        32, 48, 48, 64, 64.
        """
        size = image_size if image_size is not None else self.data.image_size
        if size is None:
            raise ValueError("data.image_size is unset: pass the size the images were loaded at")
        t = self.train
        low = min(size, t.low_res_size if t.low_res_size is not None else max(32, size // 2))
        first = math.floor(t.low_res_fraction * t.epochs + 1e-9)  # epochs at the low size
        if first == 0:  # off
            return size
        if epoch <= first:
            return low
        grown = low + (size - low) * (epoch - first) / (t.epochs - first)
        return min(size, 16 * math.ceil(grown / 16 - 1e-9))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of every value (the fully resolved config)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The fully resolved config as YAML; loading it gives back an equal config."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key that ``model`` accepts (sections and leaves)."""
    keys = []
    for name, field in model.model_fields.items():
        key = prefix + name
        keys.append(key)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_valid_keys(ann, key + "."))
    return keys


def _closest(key: str) -> str:
    valid = _valid_keys(Config)
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not match:  # compare only the last part: `train.epoch` -> `train.epochs`
        leaf = key.rsplit(".", 1)[-1]
        leaves = {k.rsplit(".", 1)[-1]: k for k in valid}
        close = difflib.get_close_matches(leaf, leaves, n=1, cutoff=0.6)
        match = [leaves[close[0]]] if close else []
    return f" (did you mean {match[0]!r}?)" if match else ""


def _format_error(err: ValidationError, source: str) -> str:
    """First validation error as one line naming the dotted key."""
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"unknown config key {key!r} in {source}{_closest(key)}"
    value = e.get("input")
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    shown = f" (got {value!r})" if not isinstance(value, dict) and repr(value) not in msg else ""
    return f"invalid value for {key!r} in {source}: {msg}{shown}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> (["train", "epochs"], 3); the value is parsed as YAML."""
    if "=" not in item:
        raise UserError(f"--set {item!r} must look like section.key=value, e.g. train.epochs=3")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {item!r} has an empty key; use section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # let validation say what type was expected
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted ``key=value`` in a nested dict (in place; also returned)."""
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise UserError(f"--set {item!r}: {prefix!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; missing files and non-YAML content are UserErrors."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {str(p)!r} does not exist; pass the path of a YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise UserError(f"config file {str(p)!r} is not valid YAML{line}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(p)!r} must hold a mapping of sections, not {type(data).__name__}")
    return data


def validate_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a nested dict into a :class:`Config`; errors become one-line UserErrors."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_error(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides`` (``k=v``)."""
    raw = read_yaml(path) if path is not None else {}
    overrides = list(overrides or [])
    apply_overrides(raw, overrides)
    source = "the command line" if overrides and path is None else (str(path) if path else "config")
    if path is not None and overrides:
        source = f"{path} / the command line"
    return validate_config(raw, source)
