"""The typed, validated experiment config: YAML file + dotted ``--set`` overrides.

Sections ``data``, ``model``, ``head``, ``train``, ``diagnostics``, ``report``. The ``data``,
``model`` and ``head`` sections are composed from the registries: their keys are the options
that the chosen dataset, model (with its activation) and head declare where they register
(:class:`~softmaxlab.registry.Options`), so ``head.tau`` exists where ``head.name`` is
``gumbel``. Unknown keys and wrong types are errors that name the key and suggest the
closest valid one; an option of another component is an error that names its owners (set to
its default, as the flat sections of earlier versions wrote them, it is dropped). An override
(``--set``) that chooses another component than the config file drops the file's options of
that section that the new component does not declare, with a note
(:func:`apply_command_line`). The fully resolved config holds only the options of the chosen
components; it is written next to the results, and running that file reproduces the run.

>>> cfg = load_config(None, ["train.epochs=3", "head.name=gumbel", "head.tau=0.5"])
>>> cfg.train.epochs, cfg.head.name, cfg.head.tau
(3, 'gumbel', 0.5)
>>> sorted(cfg.to_dict()["head"])  # the gumbel head's options, no other head's
['anneal_rate', 'eval_rule', 'eval_samples', 'eval_seed', 'name', 'tau', 'tau_min', 'tau_schedule']
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    StrictInt,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from softmaxlab import runs, untrusted
from softmaxlab.activations import ACTIVATIONS, is_softmax
from softmaxlab.data import DATASETS, DataOptions
from softmaxlab.errors import UserError
from softmaxlab.heads import HEADS
from softmaxlab.models import MODELS
from softmaxlab.registry import Options, Registry


class _Section(Options):
    """A fixed config section: unknown keys are errors, assignments are re-validated."""


@dataclass(frozen=True)
class Selector:
    """A key of a component section that picks a registered component (``head.name``)."""

    key: str
    registry: Registry
    default: str
    #: How errors name the owners of an option: ``head.name=`` + ``gumbel``.
    prefix: str = ""


#: Keys that earlier versions had and that no longer exist, with their old default: that value
#: is dropped without a word (it changed nothing); another is an error, except in the config of
#: an existing run directory (``legacy``), where it is dropped too.
REMOVED_KEYS: dict[tuple[str, str], tuple[Any, str]] = {
    ("head", "hard"): (False, "it changed neither training nor evaluation (the loss uses the soft sample)"),
}


def _error(loc: tuple[str, ...], message: str, value: Any) -> ValidationError:
    """A one-entry ValidationError at ``loc``, inside a section (pydantic prefixes the section)."""
    error = PydanticCustomError("value_error", "Value error, {message}", {"message": message})
    return ValidationError.from_exception_data("config", [InitErrorDetails(type=error, loc=loc, input=value)])


class ComponentSection(Options):
    """A section whose selector keys (``name``; the model's ``activation`` too) pick registered
    components, and whose other keys are their options.

    The section class itself stands for "whichever component is chosen": constructing or
    validating it gives an instance of the class composed of the chosen components' options
    and the section (cached, so equal configs have equal types), e.g. ``HeadConfig(name="gumbel",
    tau=0.5)`` is an instance of ``HeadConfig[gumbel]``, which is also a ``GumbelOptions``.
    """

    section: ClassVar[str] = ""
    selectors: ClassVar[tuple[Selector, ...]] = ()

    def __setattr__(self, key: str, value: Any) -> None:
        if any(s.key == key for s in self.selectors):  # frozen: the component decides the fields
            raise TypeError(
                f"{self.section}.{key} picks the component and so the section's options: make a new config "
                f"instead, e.g. load_config(None, ['{self.section}.{key}={value}'])"
            )
        super().__setattr__(key, value)

    def __new__(cls, *args: Any, **data: Any) -> Any:
        if cls in _SECTION_BASES:  # HeadConfig(...): build the composed class of the chosen head
            cls = _composed(cls, _choices(cls, data))
        return super().__new__(cls)

    def __init__(self, **data: Any) -> None:
        super().__init__(**_applicable(type(self), data, legacy=False))

    @model_validator(mode="wrap")
    @classmethod
    def _dispatch(cls, data: Any, handler: Any, info: ValidationInfo) -> Any:
        if cls not in _SECTION_BASES or not isinstance(data, dict):
            return handler(data)
        target = _composed(cls, _choices(cls, data))
        legacy = bool((info.context or {}).get("legacy"))
        return target.model_validate(_applicable(target, data, legacy), context=info.context)

    @model_serializer(mode="wrap")
    def _selectors_first(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        first = {s.key: out[s.key] for s in self.selectors if s.key in out}
        return {**first, **out}

    def __reduce__(self) -> Any:
        # Composed classes are made at run time; pickle rebuilds one from its section base, from
        # the values that were set (so what was left to its default stays so: the sweep asks).
        base = next(b for b in type(self).__mro__ if b in _SECTION_BASES)
        return (_rebuild, (base, self.model_dump(mode="json", exclude_unset=True)))


def _rebuild(base: type[ComponentSection], data: dict[str, Any]) -> ComponentSection:
    return base.model_validate(data)


def _choices(base: type[ComponentSection], data: dict[str, Any]) -> tuple[tuple[str, type[Options]], ...]:
    """(name, options model) of each selector of ``base`` in ``data``; an unknown name, or two
    chosen components that declare an option of the same name, is a ValidationError."""
    out: list[tuple[str, type[Options]]] = []
    for s in base.selectors:
        name = data.get(s.key, _selector_default(s, out))
        if not isinstance(name, str) or name not in s.registry:
            raise _error((s.key,), s.registry.unknown_message(name), name)
        options = s.registry.options(name)
        for earlier, (other, other_options) in zip(base.selectors, out, strict=False):
            shared = [k for k in _own_fields(options, base) if k in _own_fields(other_options, base)]
            if shared:
                message = (
                    f"{base.section}.{earlier.key}={other!r} and {base.section}.{s.key}={name!r} both have an option "
                    f"{shared[0]!r}; rename it in one of them (their keys share the {base.section} section)"
                )
                raise _error((s.key,), message, name)
        out.append((name, options))
    return tuple(out)


def _selector_default(selector: Selector, chosen: list[tuple[str, type[Options]]]) -> str:
    """The default of ``selector``, or the one an earlier chosen component declares for its key
    (a library model's ``activation: keep``: its own activations, not ReLU)."""
    for _, options in chosen:
        field = options.model_fields.get(selector.key)
        if field is not None:
            return field.get_default(call_default_factory=True)
    return selector.default


def _own_fields(options: type[Options], base: type[ComponentSection]) -> set[str]:
    """The fields ``options`` adds to the section ``base`` (not those the section has itself)."""
    return set(options.model_fields) - set(base.model_fields)


@functools.cache
def _composed(base: type[ComponentSection], choices: tuple[tuple[str, type[Options]], ...]) -> type[ComponentSection]:
    """The section class of ``base`` with the options of the chosen components (cached)."""
    bases = tuple(dict.fromkeys(opts for _, opts in choices if not issubclass(base, opts)))
    label = ", ".join(name for name, _ in choices)
    return create_model(f"{base.__name__}[{label}]", __base__=(*bases, base), __module__=base.__module__)


def _applicable(target: type[ComponentSection], data: dict[str, Any], legacy: bool) -> dict[str, Any]:
    """``data`` without the options of other components that are set to a default of theirs (the
    flat sections of earlier versions wrote every option); an option of another component set
    to something else is a ValidationError naming its owners. Unknown keys are left for
    pydantic to refuse (``extra="forbid"``)."""
    out = dict(data)
    for key, value in data.items():
        if key in target.model_fields:
            continue
        removed = REMOVED_KEYS.get((target.section, key))
        if removed is not None:
            if value != removed[0] and not legacy:
                raise _error((key,), f"this option was removed: {removed[1]}; delete it", value)
            del out[key]
            continue
        owners = _owners(target, key)
        if not owners:
            continue
        if any(_default(opts, key) == value for _, _, opts in owners):  # e.g. a flat section's default
            del out[key]
            continue
        raise _error((key,), _owners_text(target, data, owners), value)
    return out


def _owners(target: type[ComponentSection], key: str) -> list[tuple[Selector, str, type[Options]]]:
    """(selector, name, options) of every registered component (or family, by its label) of the
    section that has ``key``, from the first selector with any."""
    for s in target.selectors:
        found = [(s, n, opts) for n, opts in s.registry.choices() if key in opts.model_fields]
        if found:
            return found
    return []


def _default(options: type[Options], key: str) -> Any:
    return options.model_fields[key].get_default(call_default_factory=True)


def _owners_text(target: type[ComponentSection], data: dict[str, Any], owners: list) -> str:
    """``applies to head.name=gumbel only; head.name is 'softmax'`` (owners named by their
    options' ``owners_label`` when they all share one)."""
    selector = owners[0][0]
    names = [n for _, n, _ in owners]
    labels = {opts.owners_label for _, _, opts in owners}
    label = labels.pop() if len(labels) == 1 else None
    who = f"{label} only ({', '.join(names)})" if label else f"{selector.prefix}{' and '.join(names)} only"
    chosen = data.get(selector.key, selector.default)
    return f"applies to {who}; {target.section}.{selector.key} is {chosen!r}"


class DataConfig(ComponentSection, DataOptions):
    """Which images, how they are split and augmented: ``name`` and the dataset's options
    (``softmaxlab list datasets``)."""

    section = "data"
    selectors = (Selector("name", DATASETS, "shapes"),)

    name: str = Field("shapes", frozen=True)  # registry name: shapes, cifar10, cifar100, npz, imagefolder


class ModelConfig(ComponentSection):
    """The backbone (images -> features): ``name`` and its options, ``activation`` and its options."""

    section = "model"
    selectors = (
        Selector("name", MODELS, "simple_cnn", prefix="model.name="),
        Selector("activation", ACTIVATIONS, "relu", prefix="model.activation="),
    )

    name: str = Field("simple_cnn", frozen=True)  # registry name (`softmaxlab list models`)
    activation: str = Field("relu", frozen=True)  # registry name (`softmaxlab list activations`)


class HeadConfig(ComponentSection):
    """The output normaliser: ``name`` and the head's options (``softmaxlab list heads``)."""

    section = "head"
    selectors = (Selector("name", HEADS, "softmax", prefix="head.name="),)

    name: str = Field("softmax", frozen=True)  # registry name (`softmaxlab list heads`)


_SECTION_BASES = (DataConfig, ModelConfig, HeadConfig)


class TrainConfig(_Section):
    """Optimisation."""

    epochs: int = Field(8, ge=1)  # passes over the training split
    batch_size: int = Field(128, ge=1)  # images per optimisation step
    eval_batch_size: int = Field(1000, ge=1)  # images per forward pass when evaluating
    # Test-time flips: validation, test, evaluate and predict average the head's input scores over
    # each image and its horizontal mirror image (twice the evaluation forwards; training unchanged).
    eval_flip: bool = False
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)  # peak learning rate
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD momentum (Nesterov when `nesterov`)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)  # L2 penalty (decoupled for adamw)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup_fraction: float = Field(0.2, ge=0, lt=1)  # onecycle: share of steps warming up
    seed: StrictInt = Field(0, ge=0, lt=2**32)  # python, numpy, torch and loader seeds (an integer, not 1.0 or true)
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
    # accuracy (docs/guide/defaults.md). Config.train_image_size gives the size of each epoch.
    low_res_fraction: float = Field(0.0, ge=0, lt=1)
    low_res_size: int | None = Field(None, ge=8)
    # Also checkpoint every this-many optimisation steps (0 = only at the end of each epoch).
    checkpoint_every: int = Field(0, ge=0)
    # Experiment trackers (softmaxlab.trackers, docs/guide/trackers.md): tensorboard, mlflow, both or none.
    # Each epoch's metrics.jsonl record as scalars at step = epoch (train/loss, val/accuracy, lr,
    # grad_norm/<layer>, head/tau, ...), then the test metrics with this config as hyper-parameters;
    # rank 0 only; a resumed run continues the same logs. tensorboard writes RUN_DIR/tensorboard/
    # (`tensorboard --logdir runs/`). Each needs its extra: pip install 'softmaxlab[tensorboard]' / '[mlflow]'.
    loggers: list[Literal["tensorboard", "mlflow"]] = Field(default_factory=list)
    # MLflow tracking URI; null = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    # (MLflow's default; `mlflow ui` there shows it). RUN_DIR/mlflow.json keeps the store and run a resume continues.
    mlflow_uri: str | None = None
    # MLflow experiment; null = the sweep's directory name for a run of a sweep, else the run's name.
    mlflow_experiment: str | None = None

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

    @field_validator("loggers", mode="before")
    @classmethod
    def _one_logger(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v  # --set train.loggers=tensorboard

    @field_validator("loggers")
    @classmethod
    def _each_once(cls, v: list[str]) -> list[str]:
        if len(set(v)) < len(v):
            raise ValueError("names a logger twice; list each once")
        return v

    @field_validator("mlflow_uri", "mlflow_experiment")
    @classmethod
    def _mlflow_only(cls, v: str | None, info: ValidationInfo) -> str | None:
        # Silently ignored otherwise; loggers is validated first (field order), absent when invalid.
        if v is not None and "mlflow" not in info.data.get("loggers", ["mlflow"]):
            raise ValueError("applies with mlflow in train.loggers only")
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
    data: SerializeAsAny[DataConfig] = Field(default_factory=DataConfig)
    model: SerializeAsAny[ModelConfig] = Field(default_factory=ModelConfig)
    head: SerializeAsAny[HeadConfig] = Field(default_factory=HeadConfig)
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


def config_keys() -> tuple[list[str], list[str]]:
    """(sections, leaves): every dotted key a config accepts, over every registered component
    (``head.tau`` is a leaf: some head has it)."""
    sections, leaves = [], []
    for name, field in Config.model_fields.items():
        section = field.annotation
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            leaves.append(name)
            continue
        sections.append(name)
        fields = list(section.model_fields)
        for s in getattr(section, "selectors", ()):
            fields += [f for _, opts in s.registry.choices() for f in opts.model_fields]
        leaves += [f"{name}.{f}" for f in dict.fromkeys(fields)]
    return sections, leaves


def closest_key(key: str) -> str:
    """`` (did you mean 'train.epochs'?)`` for the valid key closest to ``key``, or ``""``; for a
    key that was removed (:data:`REMOVED_KEYS`), why."""
    section, _, leaf = key.partition(".")
    removed = REMOVED_KEYS.get((section, leaf))
    if removed is not None:
        return f" (it was removed: {removed[1]})"
    sections, leaves = config_keys()
    valid = sections + leaves
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not match:  # compare only the last part: `train.epoch` -> `train.epochs`
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid}
        close = difflib.get_close_matches(leaf, by_leaf, n=1, cutoff=0.6)
        match = [by_leaf[close[0]]] if close else []
    return f" (did you mean {match[0]!r}?)" if match else ""


def _format_error(err: ValidationError, source: str) -> str:
    """First validation error as one line naming the dotted key."""
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"unknown config key {key!r} in {source}{closest_key(key)}"
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
        value = untrusted.load_yaml(raw, f"--set {item!r}") if raw.strip() else None
    except untrusted.YamlError as exc:
        if "not valid YAML" not in str(exc):
            raise  # a repeated key or an alias bomb
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


@dataclass(frozen=True)
class DroppedOptions:
    """Options of a config file dropped because the command line chose another component of
    their section, one that does not declare them (:func:`apply_command_line`)."""

    keys: tuple[str, ...]  # dotted, in the file's order: ("model.widths", "model.batch_norm")
    source: str  # the config file, as it was named
    chosen: tuple[str, ...]  # the command line's choices that changed a component: ("model.name=timm:resnet18",)

    def note(self) -> str:
        """One line: ``model.widths from c.yaml does not apply to model.name=timm:resnet18 and was dropped``."""
        one = len(self.keys) == 1
        return (
            f"{', '.join(self.keys)} from {self.source} {'does' if one else 'do'} not apply to "
            f"{', '.join(self.chosen)} and {'was' if one else 'were'} dropped"
        )


def apply_command_line(raw: dict[str, Any], overrides: list[str], source: str) -> DroppedOptions | None:
    """Apply ``overrides`` (``k=v``, as :func:`apply_overrides`) to ``raw``, the mapping of the
    config file ``source``, in place; where they choose another component of a section than the
    file (``model.name``, ``model.activation``, ``head.name``, ``data.name``), first drop the
    file's options of that section that the file's components declare and the newly chosen
    ones do not: the file's ``model.widths`` of its ``simple_cnn`` under
    ``model.name=timm:resnet18``. Options the overrides set are never dropped (they validate as
    ever), nor options the file's own components do not declare (still errors); where no
    component changes, nothing is.

    Returns:
        What was dropped, or None when nothing was.
    """
    given = [parse_override(item)[0] for item in overrides]  # a malformed item fails here, as in apply_overrides
    before = {b.section: dict(raw[b.section]) for b in _SECTION_BASES if isinstance(raw.get(b.section), dict)}
    apply_overrides(raw, overrides)
    keys: list[str] = []
    chosen: list[str] = []
    for section, file_section in before.items():
        after = raw.get(section)
        if [section] in given or not isinstance(after, dict):  # the command line replaced the whole section
            continue
        own = {parts[1] for parts in given if len(parts) > 1 and parts[0] == section}
        dropped, changed = _drop_inapplicable(_section_base(section), file_section, after, own)
        keys += [f"{section}.{k}" for k in dropped]
        chosen += [f"{section}.{k}={after[k]}" for k in changed] if dropped else []
    return DroppedOptions(tuple(keys), source, tuple(chosen)) if keys else None


def _section_base(section: str) -> type[ComponentSection]:
    return next(b for b in _SECTION_BASES if b.section == section)


def _drop_inapplicable(
    base: type[ComponentSection], before: dict[str, Any], after: dict[str, Any], given: set[str]
) -> tuple[list[str], list[str]]:
    """Delete from ``after`` (a section with the overrides applied) the keys of ``before`` (the
    file's section) not in ``given`` (set by the overrides) that the components ``before``
    chooses declare and those ``after`` chooses do not, where a selector in ``given`` changed
    the component. Returns (the deleted keys, the selector keys that changed a component)."""
    try:
        old, new = _choices(base, before), _choices(base, after)
    except ValidationError:  # an unknown name (or a clash of options): validation reports it
        return [], []
    changed = [s.key for s, o, n in zip(base.selectors, old, new, strict=True) if o[0] != n[0] and s.key in given]
    if not changed:
        return [], []
    declared, kept = _composed(base, old).model_fields, _composed(base, new).model_fields
    dropped = [k for k in before if k not in given and k in declared and k not in kept]
    for key in dropped:
        del after[key]
    return dropped, changed


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; missing files and non-YAML content are UserErrors."""
    p = Path(path)
    text = untrusted.read_text(p, "config file", "pass the path of a YAML file")
    data = untrusted.load_yaml(text, f"config file {str(p)!r}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(p)!r} must hold a mapping of sections, not {type(data).__name__}")
    return data


def validate_config(raw: dict[str, Any], source: str = "config", *, legacy: bool = False) -> Config:
    """Validate a nested dict into a :class:`Config`; errors become one-line UserErrors.

    ``legacy``: the config of an existing run directory, which may hold keys that were
    removed since it was written (:data:`REMOVED_KEYS`); they are dropped.
    """
    try:
        return Config.model_validate(raw, context={"legacy": legacy})
    except ValidationError as err:
        raise UserError(_format_error(err, source)) from None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    on_note: Callable[[str], None] | None = None,
) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides`` (``k=v``).

    An override that chooses another component than the file (``model.name=timm:resnet18``)
    drops the file's options of that section that the new component does not declare
    (:func:`apply_command_line`); ``on_note`` then gets one line naming them, once the config
    has validated.
    """
    raw = read_yaml(path) if path is not None else {}
    overrides = list(overrides or [])
    dropped = apply_command_line(raw, overrides, str(path))
    source = "the command line" if overrides and path is None else (str(path) if path else "config")
    if path is not None and overrides:
        source = f"{path} / the command line"
    cfg = validate_config(raw, source)
    if dropped is not None and on_note is not None:
        on_note(dropped.note())
    return cfg


def load_run_config(run_dir: str | Path) -> Config:
    """The config of the run directory ``run_dir`` (its ``config.yaml``), also one written by an
    earlier version (flat sections holding every component's options, removed keys).

    Raises:
        UserError: no config.yaml there, or one that does not validate.
    """
    path = Path(run_dir) / runs.CONFIG
    raw = runs.read_config(run_dir)
    if raw is None:
        raise UserError(f"{str(run_dir)!r} holds no {runs.CONFIG}; pass a run directory written by `softmaxlab run`")
    return validate_config(raw, str(path), legacy=True)
