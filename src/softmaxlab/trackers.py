"""Experiment trackers: each epoch's record and the run's summary in TensorBoard and MLflow.

``train.loggers: [tensorboard, mlflow]`` (either, both, or none: the default) sends what
``metrics.jsonl`` records each epoch, as scalars with the epoch as the global step, then the
test metrics of the summary with the resolved config as hyper-parameters (dotted keys)::

    epoch record                           tag
    train_loss, train_acc                  train/loss, train/accuracy
    val_loss, val_acc, val_coarse_acc      val/loss, val/accuracy, val/coarse_accuracy
    lr, epoch_seconds                      lr, time/epoch_seconds
    grad_norms.<layer>                     grad_norm/<layer>
    activation_stats.<block>.<stat>        activation/<block>/<stat>
    a head's own state (tau, ...)          head/tau, head/temperature
    summary (at the last epoch's step)     test/<metric>, test/ece_band/mean, timing/<...>, temperature

Where: TensorBoard writes into ``RUN_DIR/tensorboard/`` (``tensorboard --logdir runs/``);
MLflow into the store at ``train.mlflow_uri`` (unset: ``$MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` in the working directory, which ``mlflow ui`` started there shows), in
the experiment named after the sweep the run belongs to, else after the run.

Resume: the trackers hold what ``metrics.jsonl`` holds, each epoch once. A continued run's
TensorBoard writer purges what earlier processes logged from step 1 on (TensorBoard's own
mechanism for a restarted job) and logs the restored epochs again; its MLflow run is the one
``RUN_DIR/mlflow.json`` names (store and run id), and only the epochs missing from it are
logged. A run that ends is tagged with its id (:func:`run_key`), which :func:`export_mlflow`
uses to send each finished run directory to a store once.

Only rank 0 logs (the training loop gives other ranks no loggers). The libraries are optional
extras (``pip install 'softmaxlab[tensorboard]'``, ``'softmaxlab[mlflow]'``), imported only
when used; :func:`require` names the missing one before anything is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from softmaxlab import runs
from softmaxlab.dotted import flatten
from softmaxlab.errors import UserError, short_error
from softmaxlab.progress import CountProgress

#: The loggers ``train.loggers`` may name; each is also the package it needs and its extra.
LOGGERS = ("tensorboard", "mlflow")
#: TensorBoard's event files inside the run directory, and the MLflow store and run it logs to (so
#: that a resumed run continues that run); runs.prepare_run_dir removes both with an overwritten run.
TENSORBOARD_DIR, MLFLOW_FILE = runs.TENSORBOARD_DIR, runs.MLFLOW_FILE
#: MLflow tags: the id of a run directory whose log is complete, where it was, and an export in progress.
RUN_ID_TAG, RUN_DIR_TAG, EXPORT_TAG = "softmaxlab.run_id", "softmaxlab.run_dir", "softmaxlab.export_of"
#: How a sweep lays out its directory (softmaxlab.sweep, a layer above this one; a test checks they agree).
SWEEP_FILE, SWEEP_RUNS = "sweep.yaml", "runs"
#: The files of a run the export attaches as MLflow artifacts (small ones: not the weights).
ARTIFACTS = (runs.CONFIG, runs.METRICS, runs.SUMMARY, runs.REPORT_HTML, runs.REPORT_MD)
#: MLflow's limits: metrics per log_batch call, and the length of a parameter's value.
_BATCH, _PARAM_CHARS = 1000, 6000


def require(loggers: Sequence[str], what: str = "train.loggers") -> None:
    """A UserError naming the extra to install for the first of ``loggers`` whose library is
    missing (``what`` names who asked for it). Called before anything is written."""
    for name in loggers:
        try:
            importlib.import_module(name)  # the package is named as the logger (and its extra)
        except ImportError:
            raise UserError(
                f"{what} needs {name}, which is not installed here; pip install 'softmaxlab[{name}]'"
            ) from None


# --------------------------------------------------------------------------- what is logged


#: Record keys of the loop's own that keep a name of their own.
_RENAMED = {
    "lr": "lr",
    "epoch_seconds": "time/epoch_seconds",
    "train_images_per_second": "time/train_images_per_second",
}
#: Nested records: their tag prefix.
_GROUPS = {"grad_norms": "grad_norm", "activation_stats": "activation"}
#: What MLflow refuses in a metric name (it takes letters, digits, _ - . space : /).
_UNSAFE = re.compile(r"[^\w\-. :/]")
#: ``acc`` at the end of a key spelt out: ``val_coarse_acc`` -> ``coarse_accuracy``.
_ACC = re.compile(r"(^|_)acc$")


def _tag(key: str) -> str:
    """The tag of a top-level record key: ``train_acc`` -> ``train/accuracy``; what the loop
    does not name itself comes from the head's ``epoch_record``: ``tau`` -> ``head/tau``."""
    if key in _RENAMED:
        return _RENAMED[key]
    split, _, rest = key.partition("_")
    if split in ("train", "val", "test") and rest:
        return split + "/" + _ACC.sub(r"\1accuracy", rest)
    return f"head/{key.removeprefix('head_')}"


def _leaves(tree: dict[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}/{key}")
        else:
            yield f"{prefix}/{key}", value


def _number(value: Any) -> float | None:
    """A number as a float; None for what is not a scalar (lists, text, null) or a flag."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of one ``metrics.jsonl`` record under their tags; ``epoch`` is the step.

    >>> epoch_scalars({"epoch": 2, "train_loss": 0.5, "val_acc": 0.75, "lr": 0.1, "tau": 0.9})
    {'train/loss': 0.5, 'val/accuracy': 0.75, 'lr': 0.1, 'head/tau': 0.9}
    >>> epoch_scalars({"grad_norms": {"head.fc": 1.5}, "activation_stats": {"block0": {"std": 1.0}}})
    {'grad_norm/head.fc': 1.5, 'activation/block0/std': 1.0}
    """
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "epoch":
            continue
        pairs = _leaves(value, _GROUPS.get(key, key)) if isinstance(value, dict) else [(_tag(key), value)]
        out.update({_UNSAFE.sub("_", tag): x for tag, v in pairs if (x := _number(v)) is not None})
    return out


def summary_scalars(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers of a run's ``summary.json``: ``test/<metric>`` (nested ones as
    ``test/ece_band/mean``), ``timing/<...>`` and the fitted ``temperature``. The per-class
    lists, the confusion matrix, the bootstrap intervals and the reliability bins are not scalars.

    >>> summary_scalars({"test": {"accuracy": 0.5, "ece_band": {"p95": 0.1}, "reliability": {"bins": 15}},
    ...                  "timing": {"mean_epoch_seconds": 2}, "temperature": 1.5})
    {'test/accuracy': 0.5, 'test/ece_band/p95': 0.1, 'timing/mean_epoch_seconds': 2.0, 'temperature': 1.5}
    """
    test = {k: v for k, v in (summary.get("test") or {}).items() if not k.startswith("reliability")}
    tree = {"test": test, "timing": summary.get("timing") or {}, "temperature": summary.get("temperature")}
    return {_UNSAFE.sub("_", tag[1:]): x for tag, v in _leaves(tree, "") if (x := _number(v)) is not None}


def hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config as dotted keys; numbers and text as they are, the rest (flags,
    lists, null) as JSON text, since trackers take scalars.

    >>> hyperparameters({"train": {"lr": 0.1, "compile": False}, "model": {"widths": [8, 16]}, "name": None})
    {'train.lr': 0.1, 'train.compile': 'false', 'model.widths': '[8, 16]', 'name': 'null'}
    """
    flat = flatten(config)
    return {k: v if isinstance(v, str) or _number(v) is not None else json.dumps(v) for k, v in flat.items()}


def run_key(run_dir: str | Path) -> str:
    """The id of a run directory that ended: a hash of its ``config.yaml`` and ``metrics.jsonl``
    (whose measured epoch times tell apart two runs of one config). A copied or moved run
    keeps it, so it is exported once."""
    digest = hashlib.sha256()
    for name in (runs.CONFIG, runs.METRICS):
        path = Path(run_dir) / name
        digest.update(path.read_bytes() if path.is_file() else b"")
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def experiment_name(run_dir: str | Path, name: str | None = None) -> str:
    """The MLflow experiment of a run: the sweep's directory name for a run of a sweep
    (``SWEEP/runs/NAME`` beside ``SWEEP/sweep.yaml``), else the run's ``name``, else its directory's."""
    path = Path(run_dir).resolve()
    sweep = path.parent.parent
    if path.parent.name == SWEEP_RUNS and (sweep / SWEEP_FILE).is_file():
        return sweep.name
    return name or path.name


# --------------------------------------------------------------------------- MLflow plumbing


def tracking_uri(uri: str | None) -> str:
    """``uri``; unset: ``$MLFLOW_TRACKING_URI``, else MLflow's own default, ``sqlite:///mlflow.db``
    in the working directory (made absolute: a resumed run finds it from anywhere). MLflow 3
    refuses a plain ``mlruns/`` folder store without ``MLFLOW_ALLOW_FILE_STORE=true``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow's INFO lines (creating a new store's tables) held back: stderr is for progress and errors."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def mlflow_client(uri: str) -> Any:
    """An ``MlflowClient`` of the store at ``uri``, opened now (and created when new).

    Raises:
        UserError: a store MLflow cannot open (a folder store MLflow 3 refuses, an unwritable path).
    """
    from mlflow import MlflowClient

    try:
        with _quiet():
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # the store opens here, not at the first metric
    except Exception as exc:  # whatever the backend raises: the URI is the user's to fix
        raise UserError(
            f"cannot open the MLflow tracking store {uri!r} ({short_error(exc)}); "
            "pass a tracking URI such as sqlite:///mlflow.db or http://HOST:5000"
        ) from None
    return client


def experiment_id(client: Any, name: str) -> str:
    """The id of the MLflow experiment ``name``, created when missing (a deleted one is a UserError)."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name)
        except Exception as exc:  # another process (a parallel sweep's run) created it meanwhile
            found = client.get_experiment_by_name(name)
            if found is None:
                raise UserError(
                    f"cannot create the MLflow experiment {name!r} ({short_error(exc)}); check the tracking store"
                ) from None
    if found.lifecycle_stage == "deleted":
        raise UserError(
            f"the MLflow experiment {name!r} was deleted; restore it (mlflow experiments restore) "
            "or choose another name"
        )
    return found.experiment_id


def _log_params(client: Any, run_id: str, config: dict[str, Any]) -> None:
    from mlflow.entities import Param

    # Values past MLflow's limit are cut (the whole config is in config.yaml, an artifact of exports).
    params = [Param(k, str(v)[:_PARAM_CHARS]) for k, v in hyperparameters(config).items()]
    for i in range(0, len(params), 100):  # MLflow takes 100 parameters per call
        client.log_batch(run_id, params=params[i : i + 100])


def _log_metrics(client: Any, run_id: str, points: Sequence[tuple[str, float, int]]) -> None:
    """(tag, value, step) points in batches; non-finite values as MLflow stores them (NaN)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(tag, value if math.isfinite(value) else math.nan, now, step) for tag, value, step in points]
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _BATCH])


def _epoch_points(records: Sequence[dict[str, Any]]) -> list[tuple[str, float, int]]:
    return [(tag, x, int(r["epoch"])) for r in records for tag, x in epoch_scalars(r).items()]


def _summary_points(summary: dict[str, Any], step: int) -> list[tuple[str, float, int]]:
    return [(tag, x, step) for tag, x in summary_scalars(summary).items()]


# --------------------------------------------------------------------------- loggers


class Logger(Protocol):
    """One tracker of one run, as :class:`Tracking` drives it."""

    name: str

    def open(self) -> None:
        """Reach the tracker before the run directory is written (UserError when it cannot be)."""

    def start(self) -> None:
        """Begin the run's log, or continue the one a resumed run began."""

    def log_epochs(self, records: Sequence[dict[str, Any]]) -> None:
        """Of ``records`` (``metrics.jsonl``), those not logged yet; step = epoch."""

    def finish(self, summary: dict[str, Any]) -> None:
        """The run was tested: its summary, and the log closed as finished."""

    def stop(self, status: str) -> None:
        """Training stopped without a test (``diverged`` or ``interrupted``): the log closed so."""


class _EpochLog:
    """What both loggers share: the run, its config, and the epochs logged (each once)."""

    name = ""

    def __init__(self, run_dir: Path, config: dict[str, Any], fresh: bool) -> None:
        self.run_dir, self.config, self.fresh = run_dir, config, fresh
        self.logged: set[int] = set()
        self.last_epoch = 0

    def log_epochs(self, records: Sequence[dict[str, Any]]) -> None:
        new = [r for r in records if isinstance(r.get("epoch"), int) and r["epoch"] not in self.logged]
        if new:
            self._write(new)
            self.logged.update(r["epoch"] for r in new)
        self.last_epoch = max(self.logged, default=0)

    def _write(self, records: Sequence[dict[str, Any]]) -> None:
        raise NotImplementedError


class TensorBoardLogger(_EpochLog):
    """Event files in ``RUN_DIR/tensorboard/`` (torch's SummaryWriter)."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, config: dict[str, Any], fresh: bool) -> None:
        super().__init__(run_dir, config, fresh)
        self.writer: Any = None

    def open(self) -> None:
        """Nothing to reach: the events go into the run directory, written once training starts."""

    def start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.run_dir / TENSORBOARD_DIR
        # Continued: events of earlier processes from step 1 on are purged when read (TensorBoard's
        # mechanism for a restarted job), and the restored epochs are logged again, each once.
        self.writer = SummaryWriter(str(log_dir), purge_step=None if self.fresh else 1)

    def _write(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            for tag, value in epoch_scalars(record).items():
                self.writer.add_scalar(tag, value, record["epoch"])
        self.writer.flush()  # once per epoch: a killed run keeps what it logged

    def finish(self, summary: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = summary_scalars(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, self.last_epoch)
        # The hparams plugin's records, written into this run's own events (add_hparams would
        # start a sub-run); their step is the last epoch's, so that a purge on resume keeps them.
        for proto in hparams(hyperparameters(self.config), metrics):
            self.writer.file_writer.add_summary(proto, self.last_epoch)
        self.writer.close()

    def stop(self, status: str) -> None:
        self.writer.close()


class MLflowLogger(_EpochLog):
    """One MLflow run per run directory, named in ``RUN_DIR/mlflow.json``."""

    name = "mlflow"

    def __init__(self, run_dir: Path, config: dict[str, Any], fresh: bool, uri: str | None, experiment: str) -> None:
        super().__init__(run_dir, config, fresh)
        self.uri, self.experiment = uri, experiment
        self.client: Any = None
        self.run_id: str | None = None
        self.experiment_id = ""

    def open(self) -> None:
        link = None if self.fresh else _read_link(self.run_dir / MLFLOW_FILE)
        self.client = mlflow_client(link["tracking_uri"] if link else tracking_uri(self.uri))
        if link and self._still_there(link["run_id"]):
            self.run_id = link["run_id"]
        else:
            self.experiment_id = experiment_id(self.client, self.experiment)

    def _still_there(self, run_id: str) -> bool:
        try:
            active = self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:  # removed from the store since
            active = False
        if not active:
            warnings.warn(
                f"the MLflow run {run_id} of {str(self.run_dir)!r} is gone; logging to a new one", stacklevel=3
            )
        return active

    def start(self) -> None:
        if self.run_id is not None:  # continued: what it holds is not logged again
            self.client.update_run(self.run_id, status="RUNNING")
            self.logged = {m.step for m in self.client.get_metric_history(self.run_id, "val/loss")}
            return
        tags = {RUN_DIR_TAG: str(self.run_dir.resolve())}
        name = self.config.get("name") or self.run_dir.name  # as the export names it (RunRecord.name)
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.run_id = run.info.run_id
        _log_params(self.client, self.run_id, self.config)
        # Written once the MLflow run has its parameters: a resume continues only a complete start.
        link = {"tracking_uri": self.client.tracking_uri, "experiment_id": self.experiment_id, "run_id": self.run_id}
        runs.atomic_write_json(self.run_dir / MLFLOW_FILE, link)

    def _write(self, records: Sequence[dict[str, Any]]) -> None:
        _log_metrics(self.client, self.run_id, _epoch_points(records))

    def finish(self, summary: dict[str, Any]) -> None:
        _log_metrics(self.client, self.run_id, _summary_points(summary, self.last_epoch))
        self.client.set_tag(self.run_id, RUN_ID_TAG, run_key(self.run_dir))
        self.client.set_terminated(self.run_id, "FINISHED")

    def stop(self, status: str) -> None:
        if status == "diverged":  # ended for good: export finds it already there
            self.client.set_tag(self.run_id, RUN_ID_TAG, run_key(self.run_dir))
        self.client.set_terminated(self.run_id, "FAILED" if status == "diverged" else "KILLED")


def _read_link(path: Path) -> dict[str, str] | None:
    """``mlflow.json`` of a run directory, or None (none yet, or not one this module wrote)."""
    try:
        link = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(link, dict) and all(isinstance(link.get(k), str) for k in ("tracking_uri", "run_id"))
    return link if ok else None


# --------------------------------------------------------------------------- the run's trackers


class Tracking:
    """The loggers of one run (none on ranks other than 0), driven from the training loop's hooks.

    ``open`` reaches them before the run directory is written; ``start`` once training begins;
    ``sync`` after each epoch's record is written (it logs what ``metrics.jsonl`` holds that a
    logger lacks, so a continued run catches up on the epochs before its checkpoint); then
    ``finish`` with the summary, or ``stop`` when training stopped without a test. A logger
    that fails while training is dropped with a warning: losing a dashboard never loses the run.
    """

    def __init__(
        self,
        loggers: Sequence[str],
        run_dir: str | Path,
        config: dict[str, Any],
        *,
        fresh: bool,
        uri: str | None = None,
        experiment: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        name = experiment or experiment_name(self.run_dir, config.get("name"))
        made = {
            "tensorboard": lambda: TensorBoardLogger(self.run_dir, config, fresh),
            "mlflow": lambda: MLflowLogger(self.run_dir, config, fresh, uri, name),
        }
        self.loggers: list[Logger] = [made[n]() for n in dict.fromkeys(loggers)]

    def open(self) -> None:
        """Reach each tracker (a store that cannot be opened: UserError, before anything is written)."""
        for logger in self.loggers:
            logger.open()

    def start(self) -> None:
        self._each(lambda logger: logger.start())

    def sync(self, records: Sequence[dict[str, Any]] | None = None) -> None:
        """Log ``records`` (each epoch once), by default every epoch of ``metrics.jsonl``."""
        if self.loggers:
            history = runs.read_history(self.run_dir) if records is None else records
            self._each(lambda logger: logger.log_epochs(history))

    def finish(self, summary: dict[str, Any]) -> None:
        self.sync()  # a run resumed after its last epoch logs the epochs it restored
        self._each(lambda logger: logger.finish(summary))
        self.loggers = []

    def stop(self, status: str) -> None:
        self._each(lambda logger: logger.stop(status))
        self.loggers = []

    def _each(self, call: Any) -> None:
        for logger in list(self.loggers):
            try:
                call(logger)
            except Exception as exc:  # a tracker's failure (a server gone) must not fail the training
                warnings.warn(
                    f"train.loggers: {logger.name} failed ({short_error(exc)}); it logs no more", stacklevel=3
                )
                self.loggers.remove(logger)


# --------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    """What :func:`export_mlflow` did: the store, the experiment, the runs sent, those skipped and why."""

    uri: str
    experiment: str
    exported: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        """One line: ``exported 2 runs to MLflow experiment 'x' at URI; skipped 1``."""
        s = "" if len(self.exported) == 1 else "s"
        skipped = f"; skipped {len(self.skipped)}" if self.skipped else ""
        return f"exported {len(self.exported)} run{s} to MLflow experiment {self.experiment!r} at {self.uri}{skipped}"


def _ended_runs(directory: str | Path) -> list[runs.RunRecord]:
    """The runs in ``directory`` (a run, a sweep, a demo), with a UserError when none has ended."""
    records = [runs.read_run(d) for d in runs.find_run_dirs(directory)]
    if not any(r.status in ("finished", "diverged") and not r.problems for r in records):
        raise UserError(
            f"{str(directory)!r} holds no finished runs ({len(records)} unfinished or unreadable); "
            "finish them first (softmaxlab resume RUN_DIR) or pass a directory of finished runs"
        )
    return records


def _in_store(client: Any, tag: str) -> dict[str, list[Any]]:
    """Tag value -> the active runs of the whole store that carry ``tag``."""
    ids = [e.experiment_id for e in client.search_experiments()]
    found: dict[str, list[Any]] = {}
    token = None
    while True:
        page = client.search_runs(ids, filter_string=f"tags.`{tag}` LIKE '%'", max_results=1000, page_token=token)
        for run in page:
            found.setdefault(run.data.tags[tag], []).append(run)
        token = page.token
        if not token:
            return found


def export_mlflow(
    directory: str | Path,
    uri: str | None = None,
    experiment: str | None = None,
    progress: CountProgress | None = None,
) -> ExportResult:
    """Send the finished (and diverged) runs in ``directory`` to an MLflow store, after the fact.

    ``directory`` is a run directory, a sweep's (runs in ``runs/``) or a demo's. Each run becomes
    one MLflow run: its config as parameters, each epoch's record as metrics with step = epoch,
    the summary's metrics at the last epoch's step, and ``config.yaml``, ``metrics.jsonl``,
    ``summary.json`` and the report as artifacts. ``uri`` as :func:`tracking_uri`; the
    experiment (created when missing) defaults to ``directory``'s name for a directory of runs,
    else to the one the run logs to itself (:func:`experiment_name`).

    Idempotent: each MLflow run is tagged with the run directory's :func:`run_key` once it is
    complete, and a run already in the store under that key (exported before, or logged while
    it trained) is skipped, in any experiment; an export cut short is replaced at the next.
    Nothing is written into the run directories.

    Raises:
        UserError: no ended run in ``directory`` (nothing written), mlflow not installed, a store
            that cannot be opened.
    """
    records = _ended_runs(directory)
    require(["mlflow"], "softmaxlab export mlflow")
    progress = progress or CountProgress()
    client = mlflow_client(tracking_uri(uri))
    if experiment is None:
        one = records[0] if len(records) == 1 and Path(directory).resolve() == records[0].path.resolve() else None
        experiment = experiment_name(one.path, one.name) if one else Path(directory).resolve().name
    result = ExportResult(client.tracking_uri, experiment)
    exp_id = experiment_id(client, experiment)
    done, started = _in_store(client, RUN_ID_TAG), _in_store(client, EXPORT_TAG)
    progress.start(len(records))
    try:
        for record in records:
            why = _skip_reason(record, done)
            if why is None:
                _export_run(client, exp_id, record, started)
                result.exported.append(record.name)
            else:
                result.skipped.append((record.name, why))
            progress.item_end(f"{record.name}: {'exported' if why is None else f'skipped ({why})'}")
    finally:
        progress.stop()
    return result


def _skip_reason(record: runs.RunRecord, done: dict[str, list[Any]]) -> str | None:
    """Why ``record`` is not exported (None: it is)."""
    if record.problems:
        return f"unreadable: {record.problems[0]}"
    if record.status not in ("finished", "diverged"):
        return "unfinished"
    there = done.get(run_key(record.path))
    return f"already in the store as run {there[0].info.run_id}" if there else None


def _export_run(client: Any, exp_id: str, record: runs.RunRecord, started: dict[str, list[Any]]) -> None:
    """One run directory as one MLflow run, tagged with its key only once complete."""
    key = run_key(record.path)
    for cut_short in started.get(key, ()):  # an earlier export of it that was interrupted
        if RUN_ID_TAG not in cut_short.data.tags:
            client.delete_run(cut_short.info.run_id)
    tags = {EXPORT_TAG: key, RUN_DIR_TAG: str(record.path.resolve()), "softmaxlab.status": record.status}
    run_id = client.create_run(exp_id, run_name=record.name, tags=tags).info.run_id
    _log_params(client, run_id, record.config)
    epochs = [r for r in record.history if isinstance(r.get("epoch"), int)]
    last = max((r["epoch"] for r in epochs), default=0)
    _log_metrics(client, run_id, _epoch_points(epochs) + _summary_points(record.summary, last))
    for name in ARTIFACTS:
        if (record.path / name).is_file():
            client.log_artifact(run_id, str(record.path / name))
    client.set_tag(run_id, RUN_ID_TAG, key)  # last: only a complete export counts as one
    client.set_terminated(run_id, "FINISHED" if record.status == "finished" else "FAILED")
