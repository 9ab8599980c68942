"""``fit(config)``: the training loop, nothing else.

The loop runs in named phases::

    decide    what the run directory holds and what to do with it: a new run, the
              continuation of an interrupted one, or a finished run returned as it is
              (:func:`decide`, the one place of the resume / overwrite policy)
    setup     checks, seeds, data (uint8 tensors on the device), model = backbone + head,
              optimiser, learning-rate schedule (a pure function of the step), all in a
              :class:`~softmaxlab.checkpoint.TrainingState`; then the run directory
    train     train_one_epoch: forward, head.loss, backward, step; the loss sum and the
              correct count (and the gradient norms) are accumulated on the device and
              read once per epoch
    validate  evaluate on the validation split; one record per epoch in metrics.jsonl,
              with grad_norms and activation_stats (softmaxlab.diagnostics); weights and
              checkpoint written
    test      head.probs on the test split -> predictions.npz and the metrics -> summary.json
              (:func:`run_summary`, which also writes the summary of a diverged run)

Hooks (:class:`Hook`) are called at fixed points: progress, checkpoints every N steps, the
trackers of ``train.loggers`` (:class:`TrackerHook`, :mod:`softmaxlab.trackers`), and whatever
a caller passes (a test's kill points). The report and the feature-map figure are
not the loop's: :mod:`softmaxlab.experiment` draws them from what ``fit`` returns.

In a notebook::

    from softmaxlab import fit, load_config
    result = fit(load_config(None, ["train.epochs=2"]), out_dir="runs/try")
    result.summary["test"]["accuracy"]
"""

from __future__ import annotations

import contextlib
import math
import random
import shlex
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from softmaxlab import distributed, runs, trackers
from softmaxlab.checkpoint import TrainingState, load_trained
from softmaxlab.config import Config, TrainConfig, load_run_config, validate_config
from softmaxlab.data import ImageData, Normalize, TensorLoader, load_data
from softmaxlab.diagnostics import Diagnostics
from softmaxlab.distributed import World, all_reduce, resolve_device
from softmaxlab.dotted import differences
from softmaxlab.errors import DivergedError, UserError
from softmaxlab.linting import Finding, lint, warn_findings
from softmaxlab.metrics import after_temperature, classification_metrics, fit_head_temperature
from softmaxlab.models import Classifier, build_model
from softmaxlab.progress import Progress

#: What ``fit`` does with a run directory that already holds a run (see :func:`decide`).
Resume = bool | Literal["unfinished", "required"]


@dataclass
class FitResult:
    """What :func:`fit` returns: the run directory, the summary, the epoch records and the model.

    ``feature_maps`` are (activation name, (C, H, W) output) of each block for the first
    validation image, computed at the end of a run (None when diagnostics are off, on ranks
    other than 0, and for a finished run returned as it was, which ``resumed_finished``
    says). ``report`` is the run's ``report.html`` once :mod:`softmaxlab.experiment` wrote it.
    """

    run_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    model: Classifier
    report: Path | None = None
    feature_maps: list[tuple[str, Tensor]] | None = None
    resumed_finished: bool = False


# --------------------------------------------------------------------------- hooks


class Hook:
    """Called by :func:`fit` at fixed points; subclass and override what you need.

    The hooks a caller passes run before fit's own (the checkpoint every
    ``train.checkpoint_every`` steps, then the progress), in the order given.
    """

    def on_fit_start(self, label: str, epochs: int, steps_per_epoch: int) -> None:
        """Training begins (or continues): ``epochs`` in all, ``steps_per_epoch`` each."""

    def on_step_end(self, state: TrainingState) -> None:
        """After each optimisation step (``state.steps_done`` counts it)."""

    def on_checkpoint_write(self, steps_done: int) -> None:
        """Halfway through writing the checkpoint of ``steps_done`` steps (rank 0)."""

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        """An epoch ended with this metrics record (written, checkpointed)."""

    def on_fit_end(self) -> None:
        """Training stopped: finished, diverged or interrupted."""

    def on_run_finished(self, result: FitResult) -> None:
        """Rank 0, after the test: what this writes into ``result.run_dir`` is part of the
        finished run, since ``summary.json`` (which marks a run finished) is written after it."""


class Hooks(Hook):
    """Several hooks called in order."""

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.hooks = list(hooks)

    def on_fit_start(self, label: str, epochs: int, steps_per_epoch: int) -> None:
        for h in self.hooks:
            h.on_fit_start(label, epochs, steps_per_epoch)

    def on_step_end(self, state: TrainingState) -> None:
        for h in self.hooks:
            h.on_step_end(state)

    def on_checkpoint_write(self, steps_done: int) -> None:
        for h in self.hooks:
            h.on_checkpoint_write(steps_done)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        for h in self.hooks:
            h.on_epoch_end(record)

    def on_fit_end(self) -> None:
        for h in self.hooks:
            h.on_fit_end()

    def on_run_finished(self, result: FitResult) -> None:
        for h in self.hooks:
            h.on_run_finished(result)


class ProgressHook(Hook):
    """Drives a :class:`~softmaxlab.progress.Progress` (bar or epoch lines)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def on_fit_start(self, label: str, epochs: int, steps_per_epoch: int) -> None:
        self.progress.start(label, epochs, steps_per_epoch)

    def on_step_end(self, state: TrainingState) -> None:
        self.progress.advance()

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.progress.epoch_end(record)

    def on_fit_end(self) -> None:
        self.progress.stop()


@dataclass
class Checkpointer(Hook):
    """Writes the checkpoint (rank 0): at every epoch's end, and every ``every`` steps between."""

    run_dir: Path
    world: World
    every: int = 0
    hooks: Hook = field(default_factory=Hook)  # told halfway through each write
    config: dict[str, Any] = field(default_factory=dict)  # what the run trains under, saved with each checkpoint

    def save(self, state: TrainingState) -> None:
        if not self.world.is_main:
            return
        steps = state.steps_done
        payload = {**state.state_dict(), "config": self.config}
        runs.save_checkpoint(self.run_dir, payload, during_write=lambda: self.hooks.on_checkpoint_write(steps))

    def on_step_end(self, state: TrainingState) -> None:
        mid_epoch = state.batches_done < state.steps_per_epoch  # the epoch's end has its own checkpoint
        if self.every and state.steps_done % self.every == 0 and mid_epoch and not self._diverged(state):
            self.save(state)

    def _diverged(self, state: TrainingState) -> bool:
        """Whether a loss of this epoch was non-finite on any process (its update already spoilt
        the weights): then the checkpoint is not written, and the last good one is kept. The
        flag lives on the device (:class:`EpochTotals`), so this is one host read per
        checkpoint, none per step; every process calls it (the flags are reduced over them)."""
        flag = (state.totals.bad_step >= 0).to(torch.long)
        return bool(all_reduce(flag, self.world, "max").item())


class TrackerHook(Hook):
    """Drives the run's ``train.loggers`` (a :class:`~softmaxlab.trackers.Tracking`): each epoch's
    record once it is written and checkpointed, then the summary (how a run that does not
    finish stopped is told by ``_fit``, which sees the test phase fail too)."""

    def __init__(self, tracking: trackers.Tracking) -> None:
        self.tracking = tracking

    def on_fit_start(self, label: str, epochs: int, steps_per_epoch: int) -> None:
        self.tracking.start()
        self.tracking.sync()  # a resumed run's restored epochs that its trackers lack

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.tracking.sync([record])  # the epoch just written: metrics.jsonl is not read again

    def on_run_finished(self, result: FitResult) -> None:
        self.tracking.finish(result.summary)


# --------------------------------------------------------------------------- setup


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) random number generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, total_steps: int, schedule: str, warmup_fraction: float) -> float:
    """Multiplier of the peak learning rate at optimisation ``step`` (0-based); pure.

    * ``onecycle``: linear warm-up from ~0 to 1 over the first ``warmup_fraction`` of the
      steps, then linear decay to 0 at the last step (a triangle).
    * ``cosine``: the same warm-up, then ``(1 + cos(pi t)) / 2`` with t going 0 -> 1.
    * ``constant``: 1.

    >>> [round(lr_factor(s, 10, "onecycle", 0.2), 2) for s in range(10)]
    [0.5, 1.0, 0.88, 0.75, 0.62, 0.5, 0.38, 0.25, 0.12, 0.0]
    """
    if schedule == "constant":
        return 1.0
    warmup = round(warmup_fraction * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup + 1) / max(1, total_steps - warmup))
    if schedule == "onecycle":
        return 1.0 - t
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule {schedule!r}")


@torch.no_grad()
def check_forward(model: Classifier, image_shape: tuple[int, int, int], device: torch.device) -> None:
    """One image of zeros through ``model`` in eval mode, so that a model that cannot take the
    data (e.g. more pooling blocks than the image size allows) fails before anything is
    written. Eval mode leaves BatchNorm statistics and the random number generators alone."""
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *image_shape, device=device))
    except (UserError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # a library or user model that cannot take these images: the user's to fix
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(
            f"the model fails on images of shape {image_shape} ({type(exc).__name__}: {message[:200]}); set "
            "data.image_size to a size it takes, or pass its own size option in model.kwargs (e.g. img_size for a "
            "timm ViT)"
        ) from None
    finally:
        model.train(was_training)


#: Module paths a merged pitfall warning names before "and N more" (``softmaxlab lint`` lists all).
SHOWN_PLACES = 3


def merge_repeated(findings: Sequence[Finding], run_dir: str | Path = "RUN_DIR") -> list[Finding]:
    """``findings`` with each group of the same kind, severity and fix found at several places
    merged into one, in the order each group first occurs.

    A softmax activation in every block of a ResNet is 8 to 17 ``intermediate_softmax``
    findings with the same fix; warned one by one they bury the run's output. The merged
    finding counts them and names the first :data:`SHOWN_PLACES`, or all with one more (its
    ``where`` is ``"N places"``, its ``message`` the list of paths); its fix ends by pointing to
    ``softmaxlab lint`` on ``run_dir``, which explains each. A finding found at one place is kept as it is.
    """
    groups: dict[tuple[str, str, str], list[Finding]] = {}
    for finding in findings:
        groups.setdefault((finding.kind, finding.severity, finding.fix), []).append(finding)
    merged = []
    for group in groups.values():
        first = group[0]
        places = list(dict.fromkeys(f.where for f in group))  # one module found twice is one place
        if len(places) == 1:
            merged.append(first)
            continue
        cut = SHOWN_PLACES if len(places) > SHOWN_PLACES + 1 else len(places)  # "and 1 more" saves nothing
        shown = ", ".join(places[:cut])
        more = f" and {len(places) - cut} more" if cut < len(places) else ""
        merged.append(
            replace(
                first,
                where=f"{len(places)} places",
                message=shown + more,
                fix=f"{first.fix}; `softmaxlab lint {shlex.quote(str(run_dir))}` explains each",
            )
        )
    return merged


def lint_first_batch(
    model: Classifier, loader: TensorLoader, amp: str = "none", run_dir: str | Path = "RUN_DIR"
) -> None:
    """Warn once about each kind of softmax pitfall of ``model`` with its head's loss
    (:func:`softmaxlab.linting.lint`, repeated findings merged by :func:`merge_repeated`): the
    double-softmax and softmax-into-NLL pitfall heads as a DoubleSoftmaxWarning and a
    SoftmaxNLLWarning, softmax activations as one ``intermediate_softmax``. Traced forwards of
    the first two training images (and their labels), in training mode under ``amp``'s
    autocast and then in eval mode (outputs that become probabilities only there), which
    leave the weights, the BatchNorm statistics and the random number generators as they were."""
    x, y = loader.normalize(loader.x[:2]), loader.y[:2]
    with autocast(x.device, amp):
        warn_findings(merge_repeated(lint(model, model.head.loss, x, target=y), run_dir))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum), Adam or AdamW on every parameter of ``model``.

    Weight decay skips biases and normalisation parameters (1-d tensors), as in timm.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_loaders(data: ImageData, cfg: Config, device: torch.device, world: World) -> dict[str, TensorLoader]:
    """Loaders over the uint8 splits on ``device``; normalisation statistics from training.

    With several processes (``world``) the training loader gives each rank its slice of every
    global batch and the validation split is cut into one contiguous block per rank; the
    test loader always covers the whole test split (it is evaluated on rank 0).
    """
    mean, std = data.channel_stats()
    norm = Normalize(mean, std, device, channels_last=cfg.uses_channels_last())
    d = cfg.data
    train = TensorLoader(
        data.train.x.to(device),
        data.train.y.to(device),
        cfg.train.batch_size,
        norm,
        shuffle=True,
        crop_padding=d.crop_padding,
        flip=d.flip,
        resized_crop=(d.rrc_scale, d.rrc_ratio) if d.random_resized_crop else None,
        # Sharded batches must all be full, or the ranks would disagree on the step count.
        drop_last=len(data.train) >= cfg.train.batch_size or world.distributed,
        seed=cfg.train.seed,
        shard=(world.rank, world.size),
    )

    def plain(split: str, shard: bool) -> TensorLoader:
        s = getattr(data, split)
        lo, hi = (world.rank * len(s) // world.size, (world.rank + 1) * len(s) // world.size) if shard else (0, len(s))
        return TensorLoader(s.x[lo:hi].to(device), s.y[lo:hi].to(device), cfg.train.eval_batch_size, norm)

    return {"train": train, "val": plain("val", shard=True), "test": plain("test", shard=False)}


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """The autocast context of ``train.amp``: disabled for "none", else bfloat16 / float16."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "none")


# --------------------------------------------------------------------------- train / evaluate


def train_one_epoch(state: TrainingState, loader: TensorLoader, hooks: Hook, world: World) -> dict[str, Any]:
    """One pass over ``loader`` from ``state``; returns mean loss, accuracy, images and the
    first non-finite step (-1: none), summed over the processes.

    A state that stopped mid-epoch (``batches_done`` > 0) draws those batches from the
    loader (replaying its random numbers) without training on them, and continues its
    ``totals``. Nothing is read back to the host inside the loop: the sums stay on the
    device until the end (so do the gradient norms that :meth:`TrainingState.step` adds).
    """
    model, head = state.model, state.model.head
    model.train()
    device = loader.x.device
    skip, first_step = state.batches_done, state.epochs_done * len(loader)
    for i, (x, y) in enumerate(loader):
        if i < skip:
            continue
        step = first_step + i
        head.step_update(step, state.total_steps)
        with autocast(device, state.amp):
            scores = state.net(x)  # (B, K)
            loss = head.loss(scores, y)
            # Under the same autocast as the loss: a head that applies its own layers to the
            # features it is given (hierarchical, adaptive) gets bf16 features against float32 weights.
            predicted = head.predict(scores.detach())
        state.step(loss)
        state.totals.add(loss.detach(), (predicted == y).sum(), y.shape[0], step)
        state.batches_done = i + 1
        hooks.on_step_end(state)
    return {**state.totals.reduce(world, state.total_steps), "steps": len(loader)}


def flip_averaged(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(s, s1): the scores ``s = (f(x) + f(flip(x))) / 2`` averaged over a batch and its
    horizontal mirror images (test-time augmentation, ``train.eval_flip``), and the single-view
    scores ``s1 = f(x)``. The average is taken over the head's inputs (logits, or the features
    of a head with its own layers), so every head normalises the averaged scores its own way."""
    single = model(x)
    return (single + model(x.flip(-1))) / 2, single


@torch.no_grad()
def evaluate(
    model: Classifier,
    loader: TensorLoader,
    world: World,
    *,
    keep_probs: bool = False,
    amp: str = "none",
    flip: bool = False,
) -> dict[str, Any]:
    """Mean head loss and accuracy over ``loader``; with ``keep_probs`` also the (N, K)
    probabilities from ``head.probs`` and the (N,) targets, on the CPU, and the (N, K)
    ``scores`` of a head that is temperature-scaled on them (``temperature_input``). ``amp``
    as ``train.amp`` (the head still normalises in float32). With ``flip`` every number is
    that of the flip-averaged scores (:func:`flip_averaged`), and ``acc_single_view`` is the
    accuracy of the images alone. With several processes each rank passes its shard and the
    sums are added over the ranks (``World()``: one process)."""
    model.eval()
    head = model.head
    device = loader.x.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    correct_single = torch.zeros((), device=device, dtype=torch.long)
    kept: dict[str, list[Tensor]] = {"probs": [], "targets": [], "scores": []}
    keep_scores = keep_probs and head.temperature_input == "scores"
    for x, y in loader:
        with autocast(device, amp):
            scores, single = flip_averaged(model, x) if flip else (model(x), None)
            loss_sum += head.loss(scores, y).float() * y.shape[0]
            p = head.probs(scores)
            if single is not None:
                correct_single += (head.probs(single).argmax(dim=1) == y).sum()  # as `correct`
        correct += (p.argmax(dim=1) == y).sum()
        if keep_probs:
            kept["probs"].append(p.float().cpu())
            kept["targets"].append(y.cpu())
        if keep_scores:
            kept["scores"].append(scores.float().cpu())
    n_local = loss_sum.new_tensor(len(loader.y)).double()
    totals = all_reduce(torch.stack([loss_sum.double(), correct.double(), correct_single.double(), n_local]), world)
    loss_total, correct_total, single_total, n = totals.tolist()
    out: dict[str, Any] = {"loss": loss_total / n, "acc": correct_total / n}
    if flip:
        out["acc_single_view"] = single_total / n
    out.update({k: torch.cat(v) for k, v in kept.items() if v})
    return out


# --------------------------------------------------------------------------- fit


@dataclass
class _Job:
    """The arguments of one :func:`fit` call."""

    cfg: Config
    run_dir: Path
    overwrite: bool
    resume: Resume
    progress: Progress
    data: ImageData | None
    hooks: Sequence[Hook]
    started: float = field(default_factory=time.perf_counter)


def fit(
    cfg: Config,
    out_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    data: ImageData | None = None,
    resume: Resume = False,
    hooks: Sequence[Hook] = (),
) -> FitResult:
    """Train ``cfg`` and write its run directory; returns a :class:`FitResult`.

    Args:
        cfg: the validated experiment config.
        out_dir: the run directory (default ``runs/<cfg.name or timestamp>``). A directory
            that already holds a run is refused unless ``overwrite`` or ``resume`` says what to do.
        overwrite: replace the run files of an existing run directory.
        resume: continue an interrupted run in ``out_dir`` from its last complete checkpoint
            (written every epoch, and every ``train.checkpoint_every`` steps), with the
            model, optimiser, schedule, loss scaler, head state, epoch sums and the
            Python / NumPy / torch random states, so that on the CPU the final metrics equal
            those of the run left alone; ``config.yaml`` there must equal ``cfg`` (UserError
            otherwise). ``True``: a directory without a run starts fresh, a finished run is
            returned as it is (its model loaded from ``model.pt``) and a diverged one raises
            its DivergedError again. ``"unfinished"``: the same, but a finished run is refused.
            ``"required"``: there must be an interrupted run to continue.
        progress: progress display (default: silent).
        data: an already loaded dataset matching ``cfg.data`` (saves regenerating it when
            several runs share one dataset, as in the demo).
        hooks: :class:`Hook` s called during training (before fit's own).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls ``fit`` with the same
    arguments: the model is wrapped in DistributedDataParallel, each rank trains on its
    slice of every global batch of ``train.batch_size`` images, the epoch metrics are
    summed over the ranks, rank 0 evaluates the test split and alone writes the run
    directory, and every rank returns rank 0's summary.

    Raises:
        UserError: bad input (checked before anything is written).
        DivergedError: the training loss became non-finite; ``summary.json`` records
            ``status: "diverged"`` and the weights of the last good epoch are kept.
    """
    device = resolve_device(cfg.train.device)
    world, device = distributed.setup(device)
    try:
        # Rank 0's path: a timestamp taken on each rank could differ by a second.
        run_dir = _on_main(world, lambda: runs.default_run_dir(cfg.name) if out_dir is None else Path(out_dir))
        job = _Job(cfg, run_dir, overwrite, resume, progress or Progress(), data, hooks)
        with contextlib.ExitStack() as lock:
            # Rank 0 writes the directory, so it alone holds its lock (a second writer is refused).
            _on_main(world, lambda: lock.enter_context(runs.lock_dir(run_dir)) and None)
            return _fit(job, world, device)
    except KeyboardInterrupt as exc:
        if (run_dir / runs.CONFIG).is_file():  # written: `softmaxlab resume RUN_DIR` continues it
            exc.run_dir = run_dir  # type: ignore[attr-defined]
        raise
    finally:
        distributed.teardown(world)


@dataclass
class _Run:
    """What the phases of one fit share: the resolved config, the data and its loaders, the
    diagnostics, the run directory, the processes, the device and the hooks."""

    cfg: Config
    data: ImageData
    loaders: dict[str, TensorLoader]
    diagnostics: Diagnostics
    run_dir: Path
    world: World
    device: torch.device
    hooks: Hooks
    checkpoints: Checkpointer
    started: float  # time.perf_counter() when this fit call began


def _fit(job: _Job, world: World, device: torch.device) -> FitResult:
    """The phases of :func:`fit` in this process's ``world``."""
    _check_world(job.cfg, world, device)
    decision = _on_main(world, lambda: decide(job.cfg, job.run_dir, job.overwrite, job.resume))
    if decision == "finished":
        return _finished_result(job.run_dir)
    cfg, data, model = _setup(job.cfg, job.data, world, device)
    tracking = _tracking(cfg, job.run_dir, world, decision)
    _on_main(world, lambda: _prepare_run_dir(cfg, job.run_dir, decision, job.overwrite))
    if world.distributed:
        # Same initial weights on every rank (seeded above, and DDP broadcasts rank 0's), but
        # each rank its own noise for dropout and Gumbel samples.
        torch.manual_seed(cfg.train.seed + 1_000_003 * world.rank)
    loaders = make_loaders(data, cfg, device, world)
    if world.is_main:  # before torch.compile and DistributedDataParallel wrap the model
        lint_first_batch(model, loaders["train"], cfg.train.amp, job.run_dir)
    diagnostics = Diagnostics(model, loaders["val"], cfg.diagnostics.enabled, cfg.diagnostics.probe_size)
    checkpoints = Checkpointer(job.run_dir, world, cfg.train.checkpoint_every, Hooks(job.hooks), cfg.to_dict())
    progress = ProgressHook(job.progress if world.is_main else Progress())
    hooks = Hooks([*job.hooks, checkpoints, progress, TrackerHook(tracking)])
    run = _Run(cfg, data, loaders, diagnostics, job.run_dir, world, device, hooks, checkpoints, job.started)
    state = _training_state(run, model)
    if decision == "continue":
        _restore(run, state)
    # The run's first line (after every check that could refuse it): what it trains and tests on.
    for line in (f"{cfg.data.name}, {data.split_sizes()}", *data.notes):
        progress.progress.note(f"data: {line}")
    try:
        _train_epochs(run, state)
        return _finish(run, state)
    except DivergedError as exc:
        if world.is_main:
            summary = run_summary(cfg, data, state.history, device, world, diverged=exc, started=run.started)
            runs.atomic_write_json(run.run_dir / runs.SUMMARY, summary)
        tracking.stop("diverged")
        exc.run_dir = run.run_dir
        raise
    except BaseException:
        # Ctrl-C, or a failure in training or in the test phase: the run is not finished and
        # resumes from its checkpoint (after a finish, the trackers are closed and this is a no-op).
        tracking.stop("interrupted")
        raise


def _on_main(world: World, work: Any) -> Any:
    """``work()`` on rank 0, its result (or its UserError) on every rank, so that no rank is
    left waiting for one that stopped."""
    result, error = None, None
    if world.is_main:
        try:
            result = work()
        except UserError as exc:
            error = str(exc)
    result, error = distributed.broadcast_object((result, error), world)
    if error is not None:
        raise UserError(error)
    return result


def decide(cfg: Config, run_dir: Path, overwrite: bool, resume: Resume) -> Literal["new", "continue", "finished"]:
    """What :func:`fit` does in ``run_dir``: train a ``new`` run there, ``continue`` the
    interrupted one, or return the ``finished`` one (see ``fit``'s ``resume``).

    A new run in a directory that holds one is refused later, when the directory is
    prepared (unless ``overwrite``). Continuing or returning needs the same config.

    Raises:
        UserError: ``resume="required"`` without an interrupted run, or a run with another config.
    """
    if overwrite or not resume:
        return "new"
    finished = runs.is_finished(run_dir)
    if finished and resume == "unfinished":
        return "new"  # refused when the directory is prepared: a finished run is not trained again
    if finished and resume == "required":
        raise UserError(f"{str(run_dir)!r} already holds a finished run; nothing to resume")
    if not (run_dir / runs.CONFIG).is_file():
        if resume == "required":
            raise UserError(f"{str(run_dir)!r} holds no config.yaml; pass a run directory written by `softmaxlab run`")
        return "new"
    check_same_config(cfg, run_dir)
    return "finished" if finished else "continue"


def check_same_config(cfg: Config, run_dir: Path) -> None:
    """A UserError unless the run in ``run_dir`` has ``cfg`` (an unset ``data.image_size`` on
    either side stands for the dataset's own size, which the other side holds)."""
    saved = load_run_config(run_dir)
    if cfg.data.image_size is None or saved.data.image_size is None:
        size = cfg.data.image_size if cfg.data.image_size is not None else saved.data.image_size
        cfg, saved = _with_image_size(cfg, size), _with_image_size(saved, size)
    if saved.to_dict() != cfg.to_dict():
        differ = differences(saved.to_dict(), cfg.to_dict())
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise UserError(
            f"{str(run_dir)!r} holds a run with another config ({', '.join(differ[:3])}{more}); "
            "resume it with its own config.yaml, pass --overwrite to replace it, or choose another --out"
        )


def _with_image_size(cfg: Config, size: int | None) -> Config:
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"image_size": size})})


def _check_world(cfg: Config, world: World, device: torch.device) -> None:
    """What the device, the number of processes and the installed trackers allow, checked before any
    process waits for another."""
    trackers.require(cfg.train.loggers)  # a missing extra: before anything is written
    if cfg.train.amp == "fp16" and device.type != "cuda":
        raise UserError("train.amp=fp16 (float16 with loss scaling) needs CUDA; use --set train.amp=bf16 on the CPU")
    if cfg.train.batch_size % world.size:
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} is the global batch and must divide evenly over "
            f"{world.size} processes; choose a multiple of {world.size}"
        )


def _setup(
    cfg: Config, data: ImageData | None, world: World, device: torch.device
) -> tuple[Config, ImageData, Classifier]:
    """Data and model: everything that can fail on bad input, before anything is written.
    The config comes back with ``data.image_size`` set (unset: the size the images were loaded at)."""
    data = data if data is not None else load_data(cfg.data)
    if cfg.data.image_size is None:  # written into config.yaml
        cfg = _with_image_size(cfg, data.image_shape[-1])
    if world.distributed and len(data.train) < cfg.train.batch_size:
        raise UserError(
            f"{len(data.train)} training images are fewer than one global batch ({cfg.train.batch_size}); "
            "lower train.batch_size"
        )
    seed_everything(cfg.train.seed)
    model = build_model(cfg, data.image_shape[0], data.num_classes, data.coarse_of).to(device)
    if cfg.uses_channels_last():
        model = model.to(memory_format=torch.channels_last)
    _check_forwards(model, cfg, data, device)
    return cfg, data, model


def _check_forwards(model: Classifier, cfg: Config, data: ImageData, device: torch.device) -> None:
    """The model takes the data's images, and the smaller ones of progressive resizing's first epochs."""
    check_forward(model, data.image_shape, device)
    for size in sorted({cfg.train_image_size(e) for e in range(1, cfg.train.epochs + 1)} - {data.image_shape[-1]}):
        try:
            check_forward(model, (data.image_shape[0], size, size), device)
        except UserError as e:
            raise UserError(
                f"progressive resizing trains the first epochs at {size} px (train.low_res_size), too small "
                f"for the model: {e}; raise train.low_res_size or set train.low_res_fraction=0"
            ) from None


def _tracking(cfg: Config, run_dir: Path, world: World, decision: str) -> trackers.Tracking:
    """The run's ``train.loggers``, on rank 0 only; their stores are opened here, so that one that
    cannot be opened (a bad ``train.mlflow_uri``) fails before the run directory is written."""
    t = cfg.train
    names = t.loggers if world.is_main else []
    tracking = trackers.Tracking(
        names, run_dir, cfg.to_dict(), fresh=decision == "new", uri=t.mlflow_uri, experiment=t.mlflow_experiment
    )
    _on_main(world, tracking.open)
    return tracking


def _prepare_run_dir(cfg: Config, run_dir: Path, decision: str, overwrite: bool) -> None:
    """A new run: create the directory and write config.yaml; a continued one: the same config,
    now that the data's image size is known."""
    if decision == "continue":
        check_same_config(cfg, run_dir)
        runs.remove_stale_tmp(run_dir)  # of the writes the interruption cut short
        return
    runs.prepare_run_dir(run_dir, overwrite=overwrite)
    runs.remove_stale_tmp(run_dir)
    runs.atomic_write_text(run_dir / runs.CONFIG, cfg.to_yaml())


def _training_state(run: _Run, model: Classifier) -> TrainingState:
    """Optimiser, schedule, loss scaler, compiled and distributed forward around ``model``."""
    t = run.cfg.train
    optimizer = build_optimizer(model, t)
    steps = len(run.loaders["train"])
    total_steps = t.epochs * steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, t.schedule, t.warmup_fraction)
    )
    state = TrainingState(model, optimizer, scheduler, steps, total_steps, run.diagnostics.grad_norms, t.amp)
    if t.compile:
        model.compile()  # in place: parameter names (and so model.pt) stay those of the plain model
    if run.world.distributed:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        state.net = DistributedDataParallel(model, device_ids=device_ids)
    return state


def _restore(run: _Run, state: TrainingState) -> None:
    """Continue from the newest complete checkpoint of the run directory (none: from the start)."""
    checkpoint = runs.load_checkpoint(run.run_dir)
    if checkpoint is None:
        return
    world, seed = run.world, run.cfg.train.seed
    _check_written_under(checkpoint, run.cfg, run.run_dir)
    # Only rank 0's random state is saved: with several processes, fresh and distinct noise per rank.
    source = f"checkpoint {str(run.run_dir / runs.CHECKPOINT)!r}"
    state.load_state_dict(checkpoint, source, random_state=not world.distributed)
    if world.distributed:
        torch.manual_seed(seed + 1_000_003 * world.rank + 7919 * (checkpoint["steps_done"] + 1))


def _check_written_under(checkpoint: dict[str, Any], cfg: Config, run_dir: Path) -> None:
    """A UserError unless ``checkpoint`` was written under ``cfg``: a ``config.yaml`` edited
    after the run started would otherwise continue weights and a schedule that no longer
    match what the file says. (Checkpoints of earlier versions record no config.)"""
    saved = checkpoint.get("config")
    if not isinstance(saved, dict) or saved == cfg.to_dict():
        return
    # Written by an earlier version: resolved as this one resolves it, options added since
    # (model.bn_eps, a head's new options) take their defaults, which reproduce the old behaviour.
    with contextlib.suppress(UserError, TypeError, ValueError):
        saved = validate_config(saved, "the checkpoint's config", legacy=True).to_dict()
    if saved == cfg.to_dict():
        return
    # A changed component name first: it explains the options that changed with it.
    differ = sorted(differences(saved, cfg.to_dict()), key=lambda d: not d.split(" ", 1)[0].endswith(".name"))
    more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
    raise UserError(
        f"the checkpoint in {str(run_dir)!r} was written under another config than its config.yaml now holds "
        f"({', '.join(differ[:3])}{more}); undo the edit to resume it, or train it afresh with "
        f"`softmaxlab run CONFIG --out {str(run_dir)!r} --overwrite`"
    )


def _train_epochs(run: _Run, state: TrainingState) -> None:
    """The epochs left to train: train, validate, record; weights and checkpoint after each."""
    cfg, hooks, world = run.cfg, run.hooks, run.world
    label = cfg.name or f"{cfg.head.name}/{cfg.model.activation} seed {cfg.train.seed}"
    hooks.on_fit_start(label, cfg.train.epochs, len(run.loaders["train"]))
    try:
        for epoch in range(state.epochs_done + 1, cfg.train.epochs + 1):
            record = _epoch(run, state, epoch)
            record.update(run.diagnostics.epoch_record())  # grad_norms, activation_stats
            record.update(state.model.head.epoch_record(lambda t: all_reduce(t, world)))
            state.end_epoch(record)
            if world.is_main:
                runs.atomic_write_jsonl(run.run_dir / runs.METRICS, state.history)
                norm = run.loaders["train"].normalize
                normalization = {"mean": norm.mean, "std": norm.std}
                d = run.data
                runs.save_weights(
                    run.run_dir, state.model, cfg, d.classes, epoch, normalization=normalization, coarse_of=d.coarse_of
                )
            run.checkpoints.save(state)
            hooks.on_epoch_end(record)
    finally:
        hooks.on_fit_end()


def _epoch(run: _Run, state: TrainingState, epoch: int) -> dict[str, Any]:
    """Train and validate epoch ``epoch`` (1-based): its metrics record, or a DivergedError."""
    cfg, train = run.cfg, run.loaders["train"]
    train.set_epoch(epoch)
    train.size = cfg.train_image_size(epoch)
    _sync(run.device)
    t0 = time.perf_counter()
    stats = train_one_epoch(state, train, run.hooks, run.world)
    _sync(run.device)
    seconds = time.perf_counter() - t0
    if stats["bad_step"] >= 0 or not math.isfinite(stats["loss"]):
        raise _divergence(cfg, epoch, stats["bad_step"], "loss")
    distributed.broadcast_buffers(state.model, run.world)  # rank 0's BatchNorm statistics, as saved
    val = evaluate(state.model, run.loaders["val"], run.world, amp=cfg.train.amp, flip=cfg.train.eval_flip)
    if not math.isfinite(val["loss"]):  # e.g. an unstable head overflowing on unseen images
        raise _divergence(cfg, epoch, -1, "validation loss")
    last_step = epoch * len(train) - 1
    t = cfg.train
    return {
        "epoch": epoch,
        "train_loss": stats["loss"],
        "train_acc": stats["acc"],
        "val_loss": val["loss"],
        "val_acc": val["acc"],
        **({"val_acc_single_view": val["acc_single_view"]} if "acc_single_view" in val else {}),
        "epoch_seconds": seconds,
        "train_images_per_second": stats["images"] / seconds,
        "train_image_size": train.size,  # progressive resizing: smaller in early epochs
        "lr": t.lr * lr_factor(last_step, state.total_steps, t.schedule, t.warmup_fraction),  # at the last step
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _divergence(cfg: Config, epoch: int, step: int, what: str) -> DivergedError:
    where = f"epoch {epoch}, step {step}" if step >= 0 else f"epoch {epoch}"
    message = (
        f"training diverged at {where}: non-finite {what} with head {cfg.head.name!r} and lr {cfg.train.lr:g}; "
        "lower train.lr or choose a numerically stable head"
    )
    return DivergedError(message, epoch=epoch, step=step)


def _finish(run: _Run, state: TrainingState) -> FitResult:
    """Test (rank 0, on the whole test split), the finished-run hooks, summary.json, and the
    checkpoints removed."""
    summary, maps, world = None, None, run.world
    if world.is_main:
        test, temperature, note = _test_metrics(run, state.model)
        history = state.history
        summary = run_summary(
            run.cfg,
            run.data,
            history,
            run.device,
            world,
            test=test,
            temperature=temperature,
            note=note,
            started=run.started,
        )
        maps = run.diagnostics.feature_maps()  # the first validation image
        run.hooks.on_run_finished(FitResult(run.run_dir, summary, history, state.model, feature_maps=maps))
        runs.atomic_write_json(run.run_dir / runs.SUMMARY, summary)
        runs.remove_checkpoints(run.run_dir)  # finished: the weights are in model.pt
    summary = distributed.broadcast_object(summary, world)
    return FitResult(run.run_dir, summary, state.history, state.model, feature_maps=maps)


def _test_metrics(run: _Run, model: Classifier) -> tuple[dict[str, Any], float | None, str]:
    """Every test metric, before and after temperature scaling, and the temperature with its note.

    The temperature is fitted on the whole validation split (the training loop's validation
    loader may be one rank's shard), then applied to the test probabilities.
    """
    cfg, data, device, test_loader, one = run.cfg, run.data, run.device, run.loaders["test"], World()
    flip = cfg.train.eval_flip
    test = evaluate(model, test_loader, one, keep_probs=True, amp=cfg.train.amp, flip=flip)
    metrics = classification_metrics(test["probs"], test["targets"], source=f"head {cfg.head.name!r}")
    runs.save_predictions(run.run_dir / runs.PREDICTIONS, test["probs"], test["targets"], test.get("scores"))
    norm = test_loader.normalize
    val_loader = TensorLoader(data.val.x.to(device), data.val.y.to(device), cfg.train.eval_batch_size, norm)
    val = evaluate(model, val_loader, one, keep_probs=True, amp=cfg.train.amp, flip=flip)
    source = f"head {cfg.head.name!r} (validation split)"
    head = model.head
    temperature, note = fit_head_temperature(head, val["probs"], val["targets"], source, val.get("scores"))
    metrics.update(after_temperature(test["probs"], test["targets"], temperature, head, test.get("scores")))
    return {"loss": test["loss"], **metrics}, temperature, note


def _timing(history: list[dict[str, Any]]) -> dict[str, float]:
    seconds = [r["epoch_seconds"] for r in history]
    # The first epoch pays one-off costs (allocator warm-up, cuDNN autotuning), so the
    # throughput is the median over epochs when there are several: over the epochs at the
    # last epoch's (full) size, so that progressive resizing's smaller, faster first epochs
    # do not inflate it (its saving shows in the epoch times).
    full = [r for r in history if r.get("train_image_size") == history[-1].get("train_image_size")]
    return {
        "mean_epoch_seconds": sum(seconds) / len(seconds),
        "total_train_seconds": sum(seconds),
        "train_images_per_second": statistics.median(r["train_images_per_second"] for r in full),
    }


def run_summary(
    cfg: Config,
    data: ImageData,
    history: list[dict[str, Any]],
    device: torch.device,
    world: World,
    *,
    test: dict[str, Any] | None = None,
    temperature: float | None = None,
    note: str = "",
    diverged: DivergedError | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """``summary.json`` of a run: ``status`` ``finished`` with the ``test`` metrics and the
    fitted ``temperature`` with its ``note``, or ``diverged`` with where and why; both with
    what the run is, its epochs, timing and environment. ``started``: the
    ``time.perf_counter()`` at which the fit call began, for ``timing.wall_seconds``."""
    summary: dict[str, Any] = {
        "status": "diverged" if diverged is not None else "finished",
        "name": cfg.name,
        "head": cfg.head.name,
        "model": cfg.model.name,
        "activation": cfg.model.activation,
        "dataset": cfg.data.name,
        "classes": data.classes,
        "epochs": len(history),
    }
    if diverged is not None:
        summary["diverged"] = {"epoch": diverged.epoch, "step": diverged.step, "message": str(diverged)}
    if test is not None:
        summary.update({"test": test, "temperature": temperature, "temperature_note": note})
        summary["val"] = {"loss": history[-1]["val_loss"], "accuracy": history[-1]["val_acc"]}
    if history:
        summary["timing"] = _timing(history)
    if started is not None:  # the fit call's whole time: since the resume, for a resumed run
        summary.setdefault("timing", {})["wall_seconds"] = time.perf_counter() - started
    summary["env"] = {**runs.environment(device, cfg.train.seed), "processes": world.size}
    return summary


def _finished_result(run_dir: Path) -> FitResult:
    """The FitResult of a run that already ran to its end (its diverged error raised again)."""
    summary = runs.read_summary(run_dir) or {}
    if summary.get("status") == "diverged":
        d = summary.get("diverged", {})
        raise DivergedError(d.get("message", "the run diverged"), epoch=d.get("epoch", 0), step=d.get("step", -1))
    model, _, _ = load_trained(run_dir)
    return FitResult(run_dir, summary, runs.read_history(run_dir), model, resumed_finished=True)
