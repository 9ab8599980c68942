"""What training saves and restores: the typed :class:`TrainingState` (the checkpoint) and the
trained model of a run directory (:func:`load_trained`, from ``model.pt``).

A checkpoint is ``TrainingState.state_dict()``: tensors and plain values only, so it loads
with ``weights_only=True``. Its layout is the one earlier versions wrote by hand (``epochs_done``,
``batches_done``, ``steps_done``, ``model``, ``optimizer``, ``scheduler``, ``scaler``,
``grad_norms``, ``sums``, ``history``, ``rng``), so their interrupted runs resume too.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from softmaxlab import runs
from softmaxlab.config import Config, validate_config
from softmaxlab.diagnostics import GradNorms
from softmaxlab.distributed import World, all_reduce
from softmaxlab.errors import UserError
from softmaxlab.models import Classifier, build_model
from softmaxlab.models.wrap import KeptActivationsWarning


@dataclass
class EpochTotals:
    """The running sums of an epoch, kept on the device so that no step waits for the host:
    the loss summed over images, the correct count, the images seen, and the first step whose
    loss was not finite (-1: none)."""

    loss_sum: Tensor
    correct: Tensor
    bad_step: Tensor
    seen: int = 0

    @classmethod
    def zeros(cls, device: torch.device) -> EpochTotals:
        return cls(
            torch.zeros((), device=device),
            torch.zeros((), device=device, dtype=torch.long),
            torch.full((), -1, device=device, dtype=torch.long),
        )

    def add(self, loss: Tensor, correct: Tensor, images: int, step: int) -> None:
        """One step's mean ``loss`` over ``images`` images and its ``correct`` count (device tensors)."""
        self.bad_step = torch.where((self.bad_step < 0) & ~torch.isfinite(loss), step, self.bad_step)
        self.loss_sum += loss * images
        self.correct += correct
        self.seen += images

    def reduce(self, world: World, total_steps: int) -> dict[str, Any]:
        """Mean loss, accuracy, images and first non-finite step over every process (one host read)."""
        seen = self.loss_sum.new_tensor(self.seen).double()
        totals = all_reduce(torch.stack([self.loss_sum.double(), self.correct.double(), seen]), world)
        first_bad = all_reduce(torch.where(self.bad_step < 0, total_steps, self.bad_step), world, "min").item()
        loss, correct, images = totals.tolist()
        return {
            "loss": loss / max(images, 1),
            "acc": correct / max(images, 1),
            "bad_step": int(first_bad) if first_bad < total_steps else -1,
            "images": int(images),
        }

    def state_dict(self) -> dict[str, Any]:
        tensors = {"loss_sum": self.loss_sum, "correct": self.correct, "bad_step": self.bad_step}
        return {**{k: v.detach().cpu() for k, v in tensors.items()}, "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("loss_sum", "correct", "bad_step"):
            getattr(self, key).copy_(state[key])
        self.seen = int(state["seen"])


@dataclass
class TrainingState:
    """Everything a run needs to continue exactly where it stopped.

    ``epochs_done`` whole epochs and ``batches_done`` batches of the next one are done;
    ``totals`` are that epoch's running sums. :meth:`step` is one optimisation step.
    ``net`` is what the forward pass calls (the DistributedDataParallel wrapper of ``model``
    with several processes), ``amp`` the autocast mode; neither is saved.
    """

    model: Classifier
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps_per_epoch: int
    total_steps: int
    grad_norms: GradNorms | None = None
    amp: str = "none"
    scaler: torch.amp.GradScaler | None = None
    net: torch.nn.Module | None = None
    epochs_done: int = 0
    batches_done: int = 0
    totals: EpochTotals | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.amp == "fp16" and self.scaler is None:
            # float16 gradients underflow without loss scaling; bfloat16 has float32's range.
            self.scaler = torch.amp.GradScaler("cuda")
        self.net = self.net if self.net is not None else self.model
        self.totals = self.totals or EpochTotals.zeros(next(self.model.parameters()).device)

    @property
    def steps_done(self) -> int:
        return self.epochs_done * self.steps_per_epoch + self.batches_done

    def step(self, loss: Tensor) -> None:
        """Backward of ``loss`` (scaled for float16), the gradient-norm read, the optimiser step
        (skipped by the scaler on inf / NaN) and the schedule step."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # true gradients for the gradient norms
        if self.grad_norms is not None:
            self.grad_norms.update()
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Close an epoch: its ``record`` joins the history and the sums start again."""
        self.history.append(record)
        self.epochs_done += 1
        self.batches_done = 0
        self.totals = EpochTotals.zeros(self.totals.loss_sum.device)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: tensors (on the CPU where they are the model's) and plain values."""
        return {
            "epochs_done": self.epochs_done,
            "batches_done": self.batches_done,
            "steps_done": self.steps_done,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "grad_norms": None if self.grad_norms is None else self.grad_norms.state_dict(),
            "sums": self.totals.state_dict() if self.batches_done else None,
            "history": self.history,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any], source: str, random_state: bool = True) -> None:
        """Continue from a checkpoint, with its random states unless ``random_state`` is false;
        ``source`` names it in errors.

        Raises:
            UserError: a checkpoint whose position (epochs, batches, history) does not fit this
                run, or whose parts the optimiser, schedule or random generators refuse: an
                altered file, which would otherwise train epochs twice or end a run early.
        """
        self._check_position(state, source)
        try:
            self._load(state, source, random_state)
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
            raise UserError(
                f"{source} does not hold what softmaxlab writes ({type(exc).__name__} loading it); "
                "delete it to train the run from its last good checkpoint or from the start"
            ) from None

    def _check_position(self, state: dict[str, Any], source: str) -> None:
        epochs, batches, history = state.get("epochs_done"), state.get("batches_done"), state.get("history")
        total_epochs = self.total_steps // max(self.steps_per_epoch, 1)
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (epochs, batches))
        ok = (
            ints
            and 0 <= epochs <= total_epochs  # all of them: killed between the last checkpoint and the summary
            and 0 <= batches < (self.steps_per_epoch if epochs < total_epochs else 1)
            and state.get("steps_done") == epochs * self.steps_per_epoch + batches
            and isinstance(history, list)
            and [r.get("epoch") if isinstance(r, dict) else None for r in history] == list(range(1, epochs + 1))
        )
        if not ok:
            raise UserError(
                f"{source} records a position that does not fit this run (epochs done {epochs!r} of "
                f"{total_epochs}, batches done {batches!r}); it was altered: delete it to train the run "
                "from its last good checkpoint or from the start"
            )

    def _load(self, state: dict[str, Any], source: str, random_state: bool) -> None:
        runs.load_state_checked(self.model, state["model"], source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.grad_norms is not None and state["grad_norms"] is not None:
            self.grad_norms.load_state_dict(state["grad_norms"])
        self.epochs_done, self.batches_done = state["epochs_done"], state["batches_done"]
        if state["sums"] is not None:
            self.totals.load_state_dict(state["sums"])
        self.history = list(state["history"])
        if random_state:
            set_rng_state(state["rng"])


def rng_state() -> dict[str, Any]:
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


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_trained(run_dir: str | Path) -> tuple[Classifier, Config, dict[str, Any]]:
    """The trained model of a run directory (in eval mode, on the CPU), its config and the
    weights payload (``classes``, ``normalization``, ...); also of runs written by earlier
    versions (their flat config sections).

    Raises:
        UserError: no weights, a foreign or corrupt file, or weights that do not fit the
            model the saved config describes.
    """
    payload = runs.load_weights(run_dir)
    where = str(Path(run_dir) / runs.WEIGHTS)
    cfg = validate_config(payload["config"], source=where, legacy=True)
    norm = payload.get("normalization")
    if not norm:
        raise UserError(f"{where!r} has no normalisation statistics (written by an older softmaxlab); retrain the run")
    # The trained weights follow: no pretrained download, no model.weights file (it may have moved).
    try:
        with warnings.catch_warnings():  # said when the run trained; not again on every evaluate or predict
            warnings.simplefilter("ignore", KeptActivationsWarning)
            model = build_model(
                cfg, len(norm["mean"]), len(payload["classes"]), payload.get("coarse_of"), initial_weights=False
            )
    except UserError as exc:  # a user factory's file, named relative to where the run was trained
        if ".py:" not in cfg.model.name:
            raise
        raise UserError(
            f"{exc}; the run's model.name {cfg.model.name!r} names its file from the folder the run was trained "
            "in: run this command from there"
        ) from None
    runs.load_state_checked(model, payload["state_dict"], f"{where!r}")
    return model.eval(), cfg, payload


__all__ = ["EpochTotals", "TrainingState", "load_trained", "rng_state", "set_rng_state"]
