"""``fit(config)``: the training loop, nothing else.

The loop runs in named phases::

    setup     seeds, device, data (uint8 tensors on the device), model = backbone + head,
              optimiser, learning-rate schedule (a pure function of the step)
    train     train_one_epoch: forward, head.loss, backward, step; the loss sum and the
              correct count (and the diagnostics' gradient norms) are accumulated on the
              device and read once per epoch
    validate  evaluate on the validation split; one record per epoch in metrics.jsonl,
              with grad_norms and activation_stats (softmaxlab.diagnostics)
    test      head.probs on the test split -> metrics -> summary.json, weights,
              figures/feature_maps.png, then report.html / report.md (softmaxlab.report)

In a notebook::

    from softmaxlab import fit, load_config
    result = fit(load_config(None, ["train.epochs=2"]), out_dir="runs/try")
    result.summary["test"]["accuracy"]
"""

from __future__ import annotations

import math
import os
import random
import signal
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from softmaxlab import distributed, runs
from softmaxlab.config import Config, TrainConfig
from softmaxlab.data import ImageData, Normalize, TensorLoader, load_data
from softmaxlab.diagnostics import Diagnostics
from softmaxlab.distributed import World, all_reduce
from softmaxlab.errors import DivergedError, UserError
from softmaxlab.heads import Head
from softmaxlab.heads.check import warn_if_probabilities
from softmaxlab.metrics import after_temperature, classification_metrics, fit_head_temperature
from softmaxlab.models import Classifier, build_model
from softmaxlab.progress import Progress


@dataclass
class FitResult:
    """What :func:`fit` returns: the run directory, the summary, the epoch records, the model,
    and the run's ``report.html`` (None where it was not written: ranks other than 0)."""

    run_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    model: Classifier
    report: Path | None = None


# --------------------------------------------------------------------------- setup


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) random number generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA GPU is available; use --set train.device=cpu (or auto)")
    return torch.device(name)


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
    finally:
        model.train(was_training)


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


def make_loaders(
    data: ImageData, cfg: Config, device: torch.device, world: World | None = None
) -> dict[str, TensorLoader]:
    """Loaders over the uint8 splits on ``device``; normalisation statistics from training.

    With several processes (``world``) the training loader gives each rank its slice of every
    global batch and the validation split is cut into one contiguous block per rank; the
    test loader always covers the whole test split (it is evaluated on rank 0).
    """
    world = world or World()
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


@dataclass
class Stepper:
    """Everything between a batch's loss and the next batch: backward (scaled for float16),
    the diagnostics' gradient read, the optimiser step and the schedule step."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    amp: str = "none"
    diagnostics: Diagnostics | None = None
    scaler: torch.amp.GradScaler | None = None

    def __post_init__(self) -> None:
        if self.amp == "fp16" and self.scaler is None:
            # float16 gradients underflow without loss scaling; bfloat16 has float32's range.
            self.scaler = torch.amp.GradScaler("cuda")

    def step(self, loss: torch.Tensor) -> None:
        """Backward of ``loss`` and one optimisation step (skipped by the scaler on inf/NaN)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # true gradients for the diagnostics
        if self.diagnostics is not None:
            self.diagnostics.after_backward()
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()


# --------------------------------------------------------------------------- train / evaluate


def train_one_epoch(
    model: Classifier,
    loader: TensorLoader,
    stepper: Stepper,
    progress: Progress,
    first_step: int,
    total_steps: int,
    net: nn.Module | None = None,
    world: World | None = None,
    *,
    skip: int = 0,
    sums: dict[str, Any] | None = None,
    after_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """One pass over ``loader``; returns mean loss, accuracy and the first non-finite step.

    Resuming mid-epoch: ``skip`` batches are drawn from the loader (replaying its random
    numbers) but not trained on, and ``sums`` (``loss_sum``, ``correct``, ``bad_step``,
    ``seen``, as a checkpoint holds them) continue the epoch's sums. ``after_step(i, sums)``
    is called after each step with the number of the epoch's batches done so far.

    Nothing is read back to the host inside the loop: the loss sum, the correct count and
    the index of the first step with a non-finite loss stay on the device until the end
    (so do the gradient norms that the stepper's diagnostics accumulate after each backward).
    ``net`` is what the forward pass calls (the DistributedDataParallel wrapper of ``model``
    when there are several processes); the epoch's sums are then added over the ranks.
    """
    net = net if net is not None else model
    world = world or World()
    model.train()
    head: Head = model.head
    device = loader.x.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    bad_step = torch.full((), -1, device=device, dtype=torch.long)
    seen = 0
    if sums is not None:
        loss_sum.copy_(sums["loss_sum"]), correct.copy_(sums["correct"]), bad_step.copy_(sums["bad_step"])
        seen = int(sums["seen"])
    for i, (x, y) in enumerate(loader):
        if i < skip:
            continue
        step = first_step + i
        head.step_update(step, total_steps)
        with autocast(device, stepper.amp):
            scores = net(x)  # (B, K)
            loss = head.loss(scores, y)
        if step == 0 and head.applies_softmax and world.is_main:  # first batch of the run only: one host read
            warn_if_probabilities(scores.detach())  # the double-softmax pitfall
        stepper.step(loss)
        loss = loss.detach()
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), step, bad_step)
        loss_sum += loss * y.shape[0]
        correct += (head.predict(scores.detach()) == y).sum()
        seen += y.shape[0]
        progress.advance()
        if after_step is not None:
            after_step(i + 1, {"loss_sum": loss_sum, "correct": correct, "bad_step": bad_step, "seen": seen})
    totals = all_reduce(torch.stack([loss_sum.double(), correct.double(), loss_sum.new_tensor(seen).double()]), world)
    first_bad = all_reduce(torch.where(bad_step < 0, total_steps, bad_step), world, "min").item()
    loss_total, correct_total, seen_total = totals.tolist()
    return {
        "loss": loss_total / max(seen_total, 1),
        "acc": correct_total / max(seen_total, 1),
        "bad_step": int(first_bad) if first_bad < total_steps else -1,
        "images": int(seen_total),
        "steps": len(loader),
    }


@torch.no_grad()
def evaluate(
    model: Classifier, loader: TensorLoader, keep_probs: bool = False, amp: str = "none", world: World | None = None
) -> dict[str, Any]:
    """Mean head loss and accuracy over ``loader``; with ``keep_probs`` also the (N, K)
    probabilities from ``head.probs`` and the (N,) targets, on the CPU. ``amp`` as
    ``train.amp`` (the head still normalises in float32). With several processes
    (``world``) each rank passes its shard and the sums are added over the ranks."""
    model.eval()
    head: Head = model.head
    device = loader.x.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    probs, targets = [], []
    for x, y in loader:
        with autocast(device, amp):
            scores = model(x)
            loss_sum += head.loss(scores, y).float() * y.shape[0]
            p = head.probs(scores)
        correct += (p.argmax(dim=1) == y).sum()
        if keep_probs:
            probs.append(p.float().cpu())
            targets.append(y.cpu())
    n_local = loss_sum.new_tensor(len(loader.y)).double()
    totals = all_reduce(torch.stack([loss_sum.double(), correct.double(), n_local]), world or World())
    loss_total, correct_total, n = totals.tolist()
    out: dict[str, Any] = {"loss": loss_total / n, "acc": correct_total / n}
    if keep_probs:
        out["probs"], out["targets"] = torch.cat(probs), torch.cat(targets)
    return out


# --------------------------------------------------------------------------- fit


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit(
    cfg: Config,
    out_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    data: ImageData | None = None,
    resume: bool = False,
) -> FitResult:
    """Train ``cfg`` and write its run directory; returns a :class:`FitResult`.

    Args:
        cfg: the validated experiment config.
        out_dir: the run directory (default ``runs/<cfg.name or timestamp>``). A directory
            that already holds a run is refused unless ``overwrite``.
        overwrite: replace the run files of an existing run directory.
        resume: continue an interrupted run in ``out_dir`` from its last complete checkpoint
            (written every epoch, and every ``train.checkpoint_every`` steps), with the
            model, optimiser, schedule, loss scaler, head state, epoch sums and the
            Python / NumPy / torch random states, so that on the CPU the final metrics equal
            those of the run left alone. ``config.yaml`` there must equal ``cfg``
            (UserError otherwise). A directory without a run starts fresh; a finished run
            is returned as it is (its model loaded from ``model.pt``) and a diverged one
            raises its DivergedError again.
        progress: progress hooks (default: silent).
        data: an already loaded dataset matching ``cfg.data`` (saves regenerating it when
            several runs share one dataset, as in the demo).

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
        return _fit(cfg, out_dir, overwrite, progress or Progress(), data, world, device, resume)
    finally:
        distributed.teardown(world)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _with_image_size(cfg: Config, size: int | None) -> Config:
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"image_size": size})})


def _resumable(cfg: Config, path: Path, overwrite: bool, resume: bool) -> bool:
    """Whether ``path`` holds an unfinished run to continue (its config must equal ``cfg``)."""
    from softmaxlab.config import load_config

    if overwrite or not resume or not (path / runs.CONFIG).is_file():
        return False
    saved = load_config(path / runs.CONFIG)
    if cfg.data.image_size is None or saved.data.image_size is None:
        # Unset on one side (a config before its data is loaded, or a hand-written config.yaml):
        # the dataset's own size, which the other side holds once resolved.
        size = cfg.data.image_size if cfg.data.image_size is not None else saved.data.image_size
        cfg, saved = _with_image_size(cfg, size), _with_image_size(saved, size)
    if saved.to_dict() != cfg.to_dict():
        old, new = _flat(saved.to_dict()), _flat(cfg.to_dict())
        differ = [
            f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
        ]
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise UserError(
            f"{str(path)!r} holds a run with another config ({', '.join(differ[:3])}{more}); "
            "resume it with its own config.yaml, pass --overwrite to replace it, or choose another --out"
        )
    return True


def _prepare_run_dir(
    cfg: Config, out_dir: str | Path | None, overwrite: bool, world: World, resume: bool = False
) -> tuple[Path, bool]:
    """Rank 0 creates the run directory and writes config.yaml (or checks that the run to
    resume has ``cfg``); every rank gets its path and whether it resumes, or rank 0's
    UserError (so that no rank is left waiting for a rank that stopped)."""
    path, error = runs.default_run_dir(cfg.name) if out_dir is None else Path(out_dir), None
    resuming = False
    if world.is_main:
        try:
            resuming = _resumable(cfg, path, overwrite, resume)
            if not resuming:
                path = runs.prepare_run_dir(path, overwrite=overwrite)
                runs.atomic_write_text(path / runs.CONFIG, cfg.to_yaml())
        except UserError as exc:
            error = str(exc)
    path, resuming, error = distributed.broadcast_object((path, resuming, error), world)
    if error is not None:
        raise UserError(error)
    return Path(path), resuming


#: Test hook: ``step:N`` kills the process (SIGKILL) right after optimisation step N (1-based
#: count of steps done), ``checkpoint:N`` halfway through writing the checkpoint of step N.
TEST_KILL_ENV = "SOFTMAXLAB_TEST_KILL_AT"


def _test_kill(point: str) -> None:
    if os.environ.get(TEST_KILL_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) random states as tensors and plain values."""
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _finished_result(run_dir: Path) -> FitResult:
    """The FitResult of a run that already ran to its end (resume of a finished run)."""
    import json

    from softmaxlab.models import load_trained
    from softmaxlab.report.build import HTML_FILE

    summary = json.loads((run_dir / runs.SUMMARY).read_text(encoding="utf-8"))
    if summary.get("status") == "diverged":
        d = summary.get("diverged", {})
        raise DivergedError(d.get("message", "the run diverged"), epoch=d.get("epoch", 0), step=d.get("step", -1))
    model, _, _ = load_trained(run_dir)
    history = runs.read_jsonl(run_dir / runs.METRICS)
    report = run_dir / HTML_FILE
    return FitResult(run_dir, summary, history, model, report if report.is_file() else None)


def _fit(
    cfg: Config,
    out_dir: str | Path | None,
    overwrite: bool,
    progress: Progress,
    data: ImageData | None,
    world: World,
    device: torch.device,
    resume: bool = False,
) -> FitResult:
    if resume and not overwrite and out_dir is not None and runs.is_finished(out_dir):
        _resumable(cfg, Path(out_dir), overwrite, resume)  # the same config, or a UserError
        return _finished_result(Path(out_dir))
    # --- setup: everything that can fail on bad input happens before the first write.
    if cfg.train.amp == "fp16" and device.type != "cuda":
        raise UserError("train.amp=fp16 (float16 with loss scaling) needs CUDA; use --set train.amp=bf16 on the CPU")
    if cfg.train.batch_size % world.size:
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} is the global batch and must divide evenly over "
            f"{world.size} processes; choose a multiple of {world.size}"
        )
    data = data if data is not None else load_data(cfg.data)
    if cfg.data.image_size is None:  # unset: the size the images were loaded at, written into config.yaml
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
    check_forward(model, data.image_shape, device)
    for size in sorted({cfg.train_image_size(e) for e in range(1, cfg.train.epochs + 1)} - {data.image_shape[-1]}):
        try:  # the smaller images of progressive resizing's first epochs
            check_forward(model, (data.image_shape[0], size, size), device)
        except UserError as e:
            raise UserError(
                f"progressive resizing trains the first epochs at {size} px (train.low_res_size), too small "
                f"for the model: {e}; raise train.low_res_size or set train.low_res_fraction=0"
            ) from None
    run_dir, resuming = _prepare_run_dir(cfg, out_dir, overwrite, world, resume)
    if world.distributed:
        # Same initial weights on every rank (seeded above, and DDP broadcasts rank 0's), but
        # each rank its own noise for dropout and Gumbel samples.
        torch.manual_seed(cfg.train.seed + 1_000_003 * world.rank)
    if not world.is_main:
        progress = Progress()

    loaders = make_loaders(data, cfg, device, world)
    diagnostics = Diagnostics(model, loaders["val"], cfg.diagnostics)
    optimizer = build_optimizer(model, cfg.train)
    total_steps = cfg.train.epochs * len(loaders["train"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.train.schedule, cfg.train.warmup_fraction)
    )
    stepper = Stepper(optimizer, scheduler, cfg.train.amp, diagnostics)
    if cfg.train.compile:
        model.compile()  # in place: parameter names (and so model.pt) stay those of the plain model
    net: nn.Module = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    label = cfg.name or f"{cfg.head.name}/{cfg.model.activation} seed {cfg.train.seed}"
    history: list[dict[str, Any]] = []
    checkpoint = runs.load_checkpoint(run_dir) if resuming else None
    start_epoch, skip, sums = 1, 0, None
    if checkpoint is not None:
        runs.load_state_checked(model, checkpoint["model"], f"checkpoint {str(run_dir / runs.CHECKPOINT)!r}")
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if stepper.scaler is not None and checkpoint["scaler"] is not None:
            stepper.scaler.load_state_dict(checkpoint["scaler"])
        if diagnostics.grad_norms is not None and checkpoint["grad_norms"] is not None:
            diagnostics.grad_norms.load_state_dict(checkpoint["grad_norms"])
        history = list(checkpoint["history"])
        start_epoch, skip, sums = checkpoint["epochs_done"] + 1, checkpoint["batches_done"], checkpoint["sums"]
        if world.distributed:  # only rank 0's random state is saved: fresh, distinct noise per rank
            torch.manual_seed(cfg.train.seed + 1_000_003 * world.rank + 7919 * (checkpoint["steps_done"] + 1))
        else:
            _set_rng_state(checkpoint["rng"])
    norm = loaders["train"].normalize
    steps_per_epoch = len(loaders["train"])

    def save_checkpoint(epochs_done: int, batches_done: int, epoch_sums: dict[str, Any] | None) -> None:
        """Rank 0 writes the state after ``epochs_done`` epochs and ``batches_done`` more batches."""
        steps_done = epochs_done * steps_per_epoch + batches_done
        if not world.is_main:
            return
        state = {
            "epochs_done": epochs_done,
            "batches_done": batches_done,
            "steps_done": steps_done,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": None if stepper.scaler is None else stepper.scaler.state_dict(),
            "grad_norms": None if diagnostics.grad_norms is None else diagnostics.grad_norms.state_dict(),
            "sums": None
            if epoch_sums is None
            else {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in epoch_sums.items()},
            "history": history,
            "rng": _rng_state(),
        }
        runs.save_checkpoint(run_dir, state, during_write=lambda: _test_kill(f"checkpoint:{steps_done}"))

    def after_step(epoch: int) -> Callable[[int, dict[str, Any]], None]:
        def hook(batches_done: int, epoch_sums: dict[str, Any]) -> None:
            steps_done = (epoch - 1) * steps_per_epoch + batches_done
            _test_kill(f"step:{steps_done}")
            every = cfg.train.checkpoint_every
            if every and steps_done % every == 0 and batches_done < steps_per_epoch:
                save_checkpoint(epoch - 1, batches_done, epoch_sums)

        return hook

    progress.start(label, cfg.train.epochs, len(loaders["train"]))
    try:
        for epoch in range(start_epoch, cfg.train.epochs + 1):
            # --- train
            loaders["train"].set_epoch(epoch)
            loaders["train"].size = cfg.train_image_size(epoch)
            _sync(device)
            t0 = time.perf_counter()
            first_step = (epoch - 1) * len(loaders["train"])
            last_step = first_step + len(loaders["train"]) - 1
            lr = cfg.train.lr * lr_factor(last_step, total_steps, cfg.train.schedule, cfg.train.warmup_fraction)
            stats = train_one_epoch(
                model,
                loaders["train"],
                stepper,
                progress,
                first_step,
                total_steps,
                net,
                world,
                skip=skip if epoch == start_epoch else 0,
                sums=sums if epoch == start_epoch else None,
                after_step=after_step(epoch),
            )
            _sync(device)
            seconds = time.perf_counter() - t0
            if stats["bad_step"] >= 0 or not math.isfinite(stats["loss"]):
                _diverged(cfg, run_dir, history, epoch, stats["bad_step"], data, device, world=world)
            # --- validate (with rank 0's BatchNorm statistics on every rank, as saved)
            distributed.broadcast_buffers(model, world)
            val = evaluate(model, loaders["val"], amp=cfg.train.amp, world=world)
            if not math.isfinite(val["loss"]):  # e.g. an unstable head overflowing on unseen images
                _diverged(cfg, run_dir, history, epoch, -1, data, device, "validation loss", world)
            record = {
                "epoch": epoch,
                "train_loss": stats["loss"],
                "train_acc": stats["acc"],
                "val_loss": val["loss"],
                "val_acc": val["acc"],
                "epoch_seconds": seconds,
                "train_images_per_second": stats["images"] / seconds,
                "train_image_size": loaders["train"].size,  # progressive resizing: smaller in early epochs
                "lr": lr,  # at the epoch's last step
                **diagnostics.epoch_record(),  # grad_norms, activation_stats
                **model.head.epoch_record(),
            }
            history.append(record)
            if world.is_main:
                runs.atomic_write_jsonl(run_dir / runs.METRICS, history)
                runs.save_weights(
                    run_dir,
                    model,
                    cfg,
                    data.classes,
                    epoch,
                    normalization={"mean": norm.mean, "std": norm.std},
                    coarse_of=data.coarse_of,
                )
            save_checkpoint(epoch, 0, None)
            progress.epoch_end(record)
    finally:
        progress.stop()

    # --- test (rank 0, on the whole test split)
    summary, report = None, None
    if world.is_main:
        summary = _summary(cfg, model, loaders["test"], history, data, device, world)
        diagnostics.save_feature_maps(run_dir / "figures" / "feature_maps.png")  # the first validation image
        runs.atomic_write_json(run_dir / runs.SUMMARY, summary)
        runs.remove_checkpoints(run_dir)  # finished: the weights are in model.pt
        report = write_run_report(run_dir, cfg)
    summary = distributed.broadcast_object(summary, world)
    return FitResult(run_dir, summary, history, model, report)


def write_run_report(run_dir: Path, cfg: Config, what: str = "run", figures: bool | None = None) -> Path | None:
    """``report.html`` and ``report.md`` of the run (or of the directory of runs ``what``
    names, e.g. a sweep), from its files (figures unless ``figures`` is false, by default
    ``report.figures``); returns the HTML's path. A report that cannot be written is a
    warning, not a lost run: ``softmaxlab report DIR`` writes it later."""
    from softmaxlab.report.build import HTML_FILE, write_report

    try:
        write_report(run_dir, figures=cfg.report.figures if figures is None else figures)
    except UserError as exc:
        warnings.warn(f"the {what}'s report was not written: {exc}", stacklevel=2)
        return None
    return run_dir / HTML_FILE


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


def _summary(
    cfg: Config,
    model: Classifier,
    test_loader: TensorLoader,
    history: list[dict[str, Any]],
    data: ImageData,
    device: torch.device,
    world: World | None = None,
) -> dict[str, Any]:
    test = evaluate(model, test_loader, keep_probs=True, amp=cfg.train.amp)
    metrics = classification_metrics(test["probs"], test["targets"], source=f"head {cfg.head.name!r}")
    # Temperature scaling: one T fitted on the whole validation split (the training loop's val
    # loader may be one rank's shard), then applied to the test probabilities.
    val_loader = TensorLoader(
        data.val.x.to(device), data.val.y.to(device), cfg.train.eval_batch_size, test_loader.normalize
    )
    val = evaluate(model, val_loader, keep_probs=True, amp=cfg.train.amp)
    temperature, temperature_note = fit_head_temperature(
        model.head, val["probs"], val["targets"], source=f"head {cfg.head.name!r} (validation split)"
    )
    metrics.update(after_temperature(test["probs"], test["targets"], temperature))
    return {
        "status": "finished",
        "name": cfg.name,
        "head": cfg.head.name,
        "model": cfg.model.name,
        "activation": cfg.model.activation,
        "dataset": cfg.data.name,
        "classes": data.classes,
        "epochs": len(history),
        "test": {"loss": test["loss"], **metrics},
        "temperature": temperature,
        "temperature_note": temperature_note,
        "val": {"loss": history[-1]["val_loss"], "accuracy": history[-1]["val_acc"]},
        "timing": _timing(history),
        "env": {**runs.environment(device, cfg.train.seed), "processes": (world or World()).size},
    }


def _diverged(
    cfg: Config,
    run_dir: Path,
    history: list[dict[str, Any]],
    epoch: int,
    step: int,
    data: ImageData,
    device: torch.device,
    what: str = "loss",
    world: World | None = None,
) -> None:
    """Record ``status: diverged`` (keeping the last good weights; rank 0 writes) and raise."""
    where = f"epoch {epoch}, step {step}" if step >= 0 else f"epoch {epoch}"
    message = (
        f"training diverged at {where}: non-finite {what} with head {cfg.head.name!r} and lr {cfg.train.lr:g}; "
        "lower train.lr or choose a numerically stable head"
    )
    summary = {
        "status": "diverged",
        "name": cfg.name,
        "head": cfg.head.name,
        "dataset": cfg.data.name,
        "classes": data.classes,
        "diverged": {"epoch": epoch, "step": step, "message": message},
        "epochs": len(history),
        "env": runs.environment(device, cfg.train.seed),
    }
    if history:
        summary["timing"] = _timing(history)
    if (world or World()).is_main:
        runs.atomic_write_json(run_dir / runs.SUMMARY, summary)
        write_run_report(run_dir, cfg)  # shows the run as diverged, with its curves up to then
    raise DivergedError(message, epoch=epoch, step=step)
