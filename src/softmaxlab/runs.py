"""The run directory: the one reader and writer of its files.

A run directory holds ``config.yaml`` (fully resolved), ``metrics.jsonl`` (one JSON object
per epoch), ``summary.json``, ``predictions.npz`` (the test probabilities), ``model.pt``
(weights), ``checkpoint.pt`` while it trains and ``figures/``. Every file is written to a
temporary file in the same directory and renamed over the target, so a crash never leaves a
half-written file behind. Reading:

* :func:`read_config`, :func:`read_summary`, :func:`read_history`: one file each, strict
  (a file that is there but cannot be read is a :class:`UserError` naming it);
* :func:`read_run`: all three as a :class:`RunRecord`, lenient (what cannot be read is
  listed in ``problems``), for reports over many runs; :func:`find_run_dirs` finds them;
* :func:`load_weights`, :func:`load_checkpoint`: ``model.pt`` and the checkpoints;
* :func:`save_predictions`, :func:`read_predictions`: ``predictions.npz``.

The config is read as the plain mapping on disk: validating it is the config's job.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import pickle
import platform
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import yaml

from softmaxlab import untrusted
from softmaxlab.errors import UserError, write_error

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
WEIGHTS = "model.pt"
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_PREV = "checkpoint.prev.pt"
PREDICTIONS = "predictions.npz"
RUN_FILES = (CONFIG, METRICS, SUMMARY, PREDICTIONS, WEIGHTS, CHECKPOINT, CHECKPOINT_PREV)
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
FIGURES = "figures"
#: What is drawn from a run's files: replaced along with them (``--overwrite``).
DERIVED_FILES = (REPORT_HTML, REPORT_MD)
#: What the trackers (softmaxlab.trackers, ``train.loggers``) keep in a run directory: TensorBoard's
#: event files and the MLflow store and run it logs to; removed with the run's files (``--overwrite``).
TENSORBOARD_DIR = "tensorboard"
MLFLOW_FILE = "mlflow.json"
CHECKPOINT_FORMAT = "softmaxlab-checkpoint-1"
_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, fsync it, rename it over ``path``.

    A full disk or an unwritable directory is a :class:`UserError` naming ``path``; the
    temporary file is removed and ``path`` keeps its old content (or stays absent).
    """
    check_replaceable(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        error = write_error(exc, path) if isinstance(exc, OSError) else None
        if error is not None:
            raise error from None
        raise


def check_replaceable(path: Path) -> None:
    """A UserError when something other than a regular file is at ``path``: the rename would
    replace a device (``/dev/null``), a named pipe or a symbolic link with a plain file."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UserError(f"cannot write {str(path)!r}: {exc.strerror}; choose another path") from None
    if stat.S_ISLNK(mode):
        raise UserError(f"{str(path)!r} is a symbolic link; it is not replaced: choose another path")
    if stat.S_ISDIR(mode):
        raise UserError(f"{str(path)!r} is a directory; choose another path")
    if not stat.S_ISREG(mode):
        raise UserError(f"{str(path)!r} is not a regular file (a device, pipe or socket); choose another path")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic(Path(path), lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_safe(obj: Any) -> Any:
    """Non-finite floats become None: JSON has no NaN, and readers choke on it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _is_flat_list(obj: Any) -> bool:
    return isinstance(obj, list) and all(not isinstance(v, (dict, list)) for v in obj)


def _dumps(obj: Any, indent: int, level: int) -> str:
    """Indented JSON, except that lists of scalars (a confusion-matrix row) stay on one line."""
    pad, inner = " " * (indent * level), " " * (indent * (level + 1))
    if _is_flat_list(obj):
        return json.dumps(obj, allow_nan=False)
    if isinstance(obj, list) and obj:
        items = ",\n".join(inner + _dumps(v, indent, level + 1) for v in obj)
        return f"[\n{items}\n{pad}]"
    if isinstance(obj, dict) and obj:
        items = ",\n".join(f"{inner}{json.dumps(str(k))}: {_dumps(v, indent, level + 1)}" for k, v in obj.items())
        return f"{{\n{items}\n{pad}}}"
    return json.dumps(obj, allow_nan=False)


def to_json(obj: Any, indent: int | None = 2) -> str:
    """JSON text with non-finite floats written as null; ``indent=None`` gives one line.

    >>> print(to_json({"cm": [[1, 0], [0, 1]], "ece": float("nan")}))
    {
      "cm": [
        [1, 0],
        [0, 1]
      ],
      "ece": null
    }
    """
    if indent is None:
        return json.dumps(_json_safe(obj), allow_nan=False)
    return _dumps(_json_safe(obj), indent, 0)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(path, to_json(obj) + "\n")


def atomic_write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Write one JSON object per line; the whole file is replaced atomically."""
    atomic_write_text(path, "".join(to_json(r, indent=None) + "\n" for r in records))


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save`` atomically. The payload is serialised in memory first: torch's writer
    turns a failed file write (a full disk) into a RuntimeError, which would hide the OSError."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file."""
    return _jsonl(Path(path).read_text(encoding="utf-8"))


def version() -> str:
    """The installed softmaxlab's version (from the package metadata, i.e. pyproject.toml)."""
    try:
        return metadata.version("softmaxlab")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree that is not installed
        return "unknown"


# --------------------------------------------------------------------------- reading a run


class UnreadableFileError(UserError):
    """A run file that is there but cannot be read; ``problem`` says which and why in a few words."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{problem} in {str(path.parent)!r}; re-run the training to rewrite it")
        self.problem = problem


def _read_file(path: Path, parse: Callable[[str], Any], kind: type) -> Any:
    """``parse`` of the text at ``path``; None when there is no such file. A file that cannot
    be read or parsed, or that does not hold a ``kind``, is an :class:`UnreadableFileError`."""
    if not path.is_file():
        return None
    try:
        value = parse(path.read_text(encoding="utf-8"))
    except untrusted.YamlError as exc:
        raise UnreadableFileError(path, f"{path.name} could not be read ({exc.reason})") from None
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise UnreadableFileError(path, f"{path.name} could not be read ({type(exc).__name__})") from None
    if not isinstance(value, kind):
        raise UnreadableFileError(path, f"{path.name} does not hold a {kind.__name__}")
    return value


def _jsonl(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The mapping in ``config.yaml`` (as written, not validated), or None when there is none."""
    path = Path(run_dir) / CONFIG
    return _read_file(path, lambda text: untrusted.load_yaml(text, f"{CONFIG} in {str(run_dir)!r}"), dict)


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """``summary.json`` of a run, or None when it has none (not finished)."""
    return _read_file(Path(run_dir) / SUMMARY, json.loads, dict)


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epoch records of ``metrics.jsonl`` ([] before the first epoch)."""
    records = _read_file(Path(run_dir) / METRICS, _jsonl, list) or []
    return [r for r in records if isinstance(r, dict)]


@dataclass
class RunRecord:
    """One run directory as read from disk; missing or unreadable files leave their part empty.

    ``problems`` lists one line per file that could not be read; ``variant`` is the label a
    report gives the run.
    """

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    variant: str = ""

    @property
    def status(self) -> str:
        """``finished``, ``diverged`` (from ``summary.json``) or ``unfinished`` (no summary yet)."""
        return str(self.summary.get("status", "unfinished"))

    @property
    def name(self) -> str:
        """The config's ``name``, else the directory's name."""
        return str(self.summary.get("name") or self.config.get("name") or self.path.name)

    @property
    def seed(self) -> Any:
        """``train.seed`` of the config (None when unknown)."""
        return (self.config.get("train") or {}).get("seed", (self.summary.get("env") or {}).get("seed"))

    @property
    def test(self) -> dict[str, Any]:
        """``summary["test"]``, or {} (a diverged or unfinished run)."""
        test = self.summary.get("test")
        return test if isinstance(test, dict) else {}

    @property
    def command(self) -> str:
        """The command that reproduces the run: ``summary.command`` when recorded, else
        ``softmaxlab run DIR/config.yaml``."""
        recorded = self.summary.get("command")
        if isinstance(recorded, list):
            return " ".join(str(a) for a in recorded)
        if isinstance(recorded, str) and recorded:
            return recorded
        return f"softmaxlab run {self.path.as_posix()}/{CONFIG}"


def read_run(path: str | Path) -> RunRecord:
    """Read one run directory; never raises for missing or corrupt files (see ``problems``)."""
    p = Path(path)
    problems: list[str] = []

    def lenient(read: Callable[[Path], Any], default: Any) -> Any:
        try:
            value = read(p)
        except UnreadableFileError as exc:
            problems.append(exc.problem)
            return default
        return default if value is None else value

    return RunRecord(p, lenient(read_config, {}), lenient(read_summary, {}), lenient(read_history, []), problems)


#: How deep below a directory runs are looked for (a sweep keeps them in runs/).
SEARCH_DEPTH = 3


def find_run_dirs(path: str | Path) -> list[Path]:
    """``path`` itself when it is a run directory (it holds ``config.yaml``), else the run
    directories below it (at most :data:`SEARCH_DEPTH` levels), oldest first.

    Runs are ordered by the time their ``config.yaml`` was written, so a demo's or a sweep's
    runs appear in the order they were run.

    Raises:
        UserError: ``path`` does not exist, is a file, or holds no run.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"{str(p)!r} does not exist; pass a run directory or a directory of runs")
    if not p.is_dir():
        raise UserError(f"{str(p)!r} is a file; pass a run directory or a directory of runs")
    if (p / CONFIG).is_file():
        return [p]
    found: list[Path] = []
    for depth in range(1, SEARCH_DEPTH + 1):
        for cfg in p.glob("/".join(["*"] * depth + [CONFIG])):
            run = cfg.parent
            hidden = any(part.startswith(".") for part in run.relative_to(p).parts)
            if not hidden and not any(f in run.parents for f in found):  # not a run inside a run
                found.append(run)
    if not found:
        raise UserError(
            f"{str(p)!r} holds no runs (no {CONFIG} in it or below); pass a run directory or a directory of runs"
        )
    return sorted(found, key=lambda r: ((r / CONFIG).stat().st_mtime, r.as_posix()))


LOCK = ".softmaxlab.lock"
_held: dict[str, int] = {}  # directory -> how many times this process holds its lock


@contextmanager
def lock_dir(directory: str | Path) -> Iterator[Path]:
    """Hold the write lock of a run or sweep directory (created when missing) while the block runs.

    Every process that writes a run or a sweep directory takes this lock first, so two
    commands on one ``--out`` cannot interleave their files: the second is refused at once
    with a :class:`UserError` naming the holder's process id. The lock is ``flock`` on the
    file ``.softmaxlab.lock`` inside the directory: advisory, and released by the operating
    system when the holder dies, so a killed run never leaves its directory locked. It is
    re-entrant within one process (an experiment holds it around ``fit``, which takes it
    too). On release the lock file is removed, and the directory too when this call
    created it and nothing else was written there, with the parents it created for it
    (``runs/`` of a default ``--out``).
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise UserError(f"output path {str(path)!r} is a file, not a directory; choose another --out")
    created = [d for d in (path, *path.parents) if not d.exists()]  # innermost first
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create directory {str(path)!r}: {exc.strerror}; choose another --out") from None
    key = os.path.realpath(path)
    if key in _held:
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    fd = _acquire(path / LOCK)
    _held[key] = 1
    try:
        yield path
    finally:
        del _held[key]
        (path / LOCK).unlink(missing_ok=True)  # while still holding it: see _acquire
        os.close(fd)
        with contextlib.suppress(OSError):
            for made in created:
                made.rmdir()  # only succeeds when empty: nothing was written after all


def _acquire(lock: Path) -> int:
    """An open descriptor of ``lock`` holding its exclusive ``flock``.

    A holder removes the file before it lets go, so a process that locked the old file in
    between holds a lock nobody else can see: it checks that the file it locked is still
    the one at ``lock`` and tries again if not.
    """
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        except OSError as exc:
            raise UserError(f"cannot write to {str(lock.parent)!r}: {exc.strerror}; choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise UserError(
                f"{str(lock.parent)!r} is being written by another softmaxlab process{holder}; "
                "wait for it to finish or choose another --out"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def default_run_dir(name: str | None, root: str | Path = "runs") -> Path:
    """``runs/<name>``, or ``runs/<timestamp>`` when the config has no name."""
    return Path(root) / (name or datetime.now().strftime("%Y%m%d-%H%M%S"))


def is_finished(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run that ran to its end (it has a ``summary.json``)."""
    return (Path(run_dir) / SUMMARY).is_file()


def prepare_run_dir(run_dir: str | Path, overwrite: bool = False) -> Path:
    """Check that ``run_dir`` may receive a new run and create it.

    A directory that already holds a run is refused (:class:`UserError`) unless
    ``overwrite``; then only the run's own files are removed (with its report, the PNGs in
    ``figures/`` and the trackers' ``tensorboard/`` and ``mlflow.json``, so that a new run killed
    early never sits beside the old one's report or curves), nothing else. The run files go
    last, ``config.yaml`` the very last: until it is gone the directory still reads as the old run.
    """
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"output path {str(path)!r} is a file, not a directory; choose another --out")
    existing = [f for f in RUN_FILES if (path / f).exists()]
    if existing and not overwrite:
        what = "a finished run" if is_finished(path) else "an unfinished run"
        raise UserError(f"{str(path)!r} already holds {what}; choose another --out or pass --overwrite to replace it")
    if existing:
        for f in (*DERIVED_FILES, MLFLOW_FILE, *(p.relative_to(path) for p in (path / FIGURES).glob("*.png"))):
            (path / f).unlink(missing_ok=True)
        shutil.rmtree(path / TENSORBOARD_DIR, ignore_errors=True)  # the old run's curves, shown as this run's
        for f in sorted(existing, key=lambda name: name == CONFIG):
            (path / f).unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / FIGURES).mkdir(exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create run directory {str(path)!r}: {exc.strerror}; choose another --out") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"run directory {str(path)!r} is not writable; choose another --out")
    return path


def save_weights(
    run_dir: str | Path,
    model: torch.nn.Module,
    cfg: Any,
    classes: list[str],
    epoch: int,
    *,
    normalization: dict[str, list[float]] | None = None,
    coarse_of: torch.Tensor | None = None,
) -> None:
    """Write ``model.pt``: the state dict with the resolved config and the class names.

    ``normalization`` (``{"mean": [...], "std": [...]}`` per channel, on the [0, 1] scale,
    from the training images) and ``coarse_of`` (the class hierarchy) let a later command
    (``visualize``) feed new images to the model exactly as in training.
    Only tensors and plain Python values go in, so it loads with ``weights_only=True``.
    """
    payload = {
        "format": "softmaxlab-weights-1",
        "epoch": epoch,
        "config": cfg.to_dict(),
        "classes": list(classes),
        "normalization": normalization,
        "coarse_of": None if coarse_of is None else coarse_of.detach().cpu(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_torch_save(Path(run_dir) / WEIGHTS, payload)


def load_weights(run_dir: str | Path) -> dict[str, Any]:
    """Read ``model.pt`` of a run (``weights_only=True``) and check what it holds.

    Raises:
        UserError: no such file, a file that cannot be read (truncated, corrupt, a foreign
            pickle, never executed), or one that does not hold what softmaxlab writes there
            (see :func:`check_weights`).
    """
    path = Path(run_dir) / WEIGHTS
    if not path.exists() and not path.is_symlink():
        raise UserError(f"{str(path)!r} does not exist; is {str(run_dir)!r} a finished softmaxlab run directory?")
    try:
        payload = load_torch_file(path)
    except CorruptFileError:
        raise UserError(
            f"{str(path)!r} cannot be read (truncated or corrupt); train the run again or use another run directory"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != "softmaxlab-weights-1":
        raise UserError(
            f"{str(path)!r} is not a softmaxlab weights file; point at a run directory written by softmaxlab"
        )
    check_weights(payload, path)
    return payload


def check_weights(payload: dict[str, Any], path: Path) -> None:
    """A :class:`UserError` unless ``payload`` (of ``model.pt`` at ``path``) holds what
    :func:`save_weights` writes: a config mapping, a non-empty list of distinct class names,
    a state dict of tensors, and per-channel normalisation with finite means and positive
    standard deviations (a zero std would divide every pixel by zero)."""

    def refuse(what: str) -> None:
        raise UserError(f"{str(path)!r} {what}; it was not written by softmaxlab or was altered, train the run again")

    if not isinstance(payload.get("config"), dict):
        refuse("holds no config")
    classes = payload.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        refuse("holds no list of class names")
    if len(set(classes)) != len(classes):
        refuse("names a class twice")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        refuse("holds a state dict that is not a mapping of names to tensors")
    if any(v.is_complex() for v in state.values()):
        refuse("holds complex tensors")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        refuse(f"holds non-finite weights ({bad})")
    norm = payload.get("normalization")
    if norm is not None and not _valid_normalization(norm):
        refuse("holds a normalization that is not per-channel finite means and positive standard deviations")
    coarse = payload.get("coarse_of")
    if coarse is not None and not (torch.is_tensor(coarse) and coarse.shape == (len(classes),)):
        refuse("holds a class hierarchy that does not match its classes")


def _valid_normalization(norm: Any) -> bool:
    if not isinstance(norm, dict):
        return False
    mean, std = norm.get("mean"), norm.get("std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) >= 1):
        return False
    values = [*mean, *std]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return False
    return all(v > 0 for v in std)


def save_checkpoint(run_dir: str | Path, state: dict[str, Any], during_write: Callable[[], None] | None = None) -> None:
    """Write ``checkpoint.pt`` so that a crash at any moment leaves a complete checkpoint.

    The payload (tensors and plain values only, so it loads with ``weights_only=True``) goes
    to a temporary file that is fsynced; then the current checkpoint is renamed to
    ``checkpoint.prev.pt`` and the new one renamed into place. A crash before the renames
    leaves the old checkpoint; between them, the previous one (:func:`load_checkpoint` falls
    back to it). ``during_write`` is called halfway through writing the temporary file.
    """
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    data = buffer.getvalue()

    def write(f: IO[bytes]) -> None:
        f.write(data[: len(data) // 2])
        if during_write is not None:
            during_write()
        f.write(data[len(data) // 2 :])

    path, tmp = Path(run_dir), None
    try:
        fd, tmp = tempfile.mkstemp(dir=path, prefix=f".{CHECKPOINT}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if (path / CHECKPOINT).exists():
            os.replace(path / CHECKPOINT, path / CHECKPOINT_PREV)
        os.replace(tmp, path / CHECKPOINT)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        error = write_error(exc, path / CHECKPOINT) if isinstance(exc, OSError) else None
        if error is not None:
            raise error from None
        raise


class CorruptFileError(Exception):
    """A torch file that is there but cannot be read: truncated, corrupt, or not a torch file."""


#: Up to this many classes ``predictions.npz`` keeps every probability (10,000 test images:
#: 40 MB); beyond it, the :data:`TOP_PREDICTIONS` most probable classes of each image.
MAX_STORED_CLASSES = 1000
TOP_PREDICTIONS = 100


def save_predictions(
    path: str | Path, probs: torch.Tensor, targets: torch.Tensor, scores: torch.Tensor | None = None
) -> None:
    """Write ``predictions.npz`` (uncompressed NumPy arrays, atomically) for (N, K) test
    probabilities and (N,) targets, so that any analysis can be redone without retraining:

    * ``probs`` (N, K) float32, the head's probabilities before temperature scaling;
    * ``targets`` (N,) int64; ``index`` (N,) int64, the position of each image in the split;
    * ``scores`` (N, K) float32 when given: the scores of a head that is temperature-scaled
      on them (sparsemax, entmax-1.5, sigmoid), so its after-temperature numbers can be redone;
    * beyond :data:`MAX_STORED_CLASSES` classes, instead of ``probs`` and ``scores``:
      ``top_probs`` and ``top_classes`` (N, :data:`TOP_PREDICTIONS`), most probable first,
      ``target_probs`` (N,), ``predicted`` (N,) the arg max (ties broken as the metrics break
      them, which ``topk`` does not) and ``num_classes`` (a 0-d int64 array).
    """
    p = probs.detach().float().cpu()
    arrays: dict[str, np.ndarray] = {
        "targets": targets.detach().cpu().long().numpy(),
        "index": np.arange(p.shape[0], dtype=np.int64),
    }
    if p.shape[1] <= MAX_STORED_CLASSES:
        arrays["probs"] = p.numpy()
        if scores is not None:
            arrays["scores"] = scores.detach().float().cpu().numpy()
    else:
        top, classes = p.topk(min(TOP_PREDICTIONS, p.shape[1]), dim=1)
        arrays.update(top_probs=top.numpy(), top_classes=classes.numpy(), num_classes=np.array(p.shape[1]))
        arrays["target_probs"] = p.gather(1, targets.cpu().long()[:, None]).squeeze(1).numpy()
        arrays["predicted"] = p.argmax(dim=1).numpy()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def read_predictions(run_dir: str | Path, name: str = PREDICTIONS) -> dict[str, np.ndarray] | None:
    """The arrays of a run's ``predictions.npz`` (see :func:`save_predictions`) with
    ``predicted`` (N,) int64, the arg max of each image, added; None when there is none (an
    older run, an unfinished one). A file that is not such an archive is an
    :class:`UnreadableFileError`."""
    path = Path(run_dir) / name
    if not path.is_file():
        return None
    try:
        with np.load(untrusted.regular_file(path, "predictions", "re-run the training"), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, UserError) as exc:
        raise UnreadableFileError(path, f"{name} could not be read ({type(exc).__name__})") from None
    targets, scores = arrays.get("targets"), arrays.get("probs", arrays.get("top_classes"))
    if targets is None or scores is None or targets.ndim != 1 or scores.ndim != 2 or len(scores) != len(targets):
        raise UnreadableFileError(path, f"{name} does not hold (N, K) predictions and (N,) targets")
    if "probs" in arrays:
        arrays["predicted"] = arrays["probs"].argmax(axis=1)
    elif "predicted" not in arrays:
        arrays["predicted"] = arrays["top_classes"][:, 0]
    return arrays


def load_torch_file(path: str | Path) -> Any:
    """The payload of the torch file at ``path``: the one place that decides whether a weights
    file or checkpoint can be loaded.

    The file is read into memory first (so that an error opening or reading it is told
    apart from one in its content), then unpickled by ``torch.load(weights_only=True)``
    on the CPU.

    Raises:
        UserError: the path is not a regular file, cannot be opened, or holds a pickle
            payload other than tensors and plain values (refused, never executed).
        CorruptFileError: the bytes are not a complete torch file (any error of the loader,
            which reports truncation as RuntimeError, EOFError, OSError or UnpicklingError
            depending on where the file ends).
    """
    p = untrusted.regular_file(path, "file", "use a file written by softmaxlab")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UserError(
            f"cannot read {str(p)!r}: {exc.strerror or type(exc).__name__}; check its permissions"
        ) from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's safe unpickler says "Weights only load failed" for every failure; a file
        # that names a global (a class or function to call) is a foreign payload, anything
        # else (an unknown opcode: bytes that are no pickle at all) is a corrupt file.
        if "GLOBAL" not in str(exc) and "global" not in str(exc):
            raise CorruptFileError(str(p)) from None
        raise UserError(
            f"{str(p)!r} holds code or objects other than tensors and plain values and was not loaded; "
            "delete it and use a file written by softmaxlab"
        ) from None
    except Exception:  # truncated or corrupt, whatever the loader calls it
        raise CorruptFileError(str(p)) from None


def load_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    """The newest complete checkpoint of ``run_dir`` (``checkpoint.pt``, else
    ``checkpoint.prev.pt``), or None when there is none. An unreadable (truncated or
    corrupt) file is skipped in favour of the previous one; when every checkpoint there is
    unreadable, or a file holds a foreign pickle payload (never executed), it is a
    :class:`UserError`."""
    unreadable = []
    for name in (CHECKPOINT, CHECKPOINT_PREV):
        path = Path(run_dir) / name
        if not path.exists() and not path.is_symlink():
            continue
        try:
            untrusted.regular_file(path, "checkpoint", "")
        except UserError:  # a directory, a pipe, a dangling link: as unreadable as a truncated file
            unreadable.append(name)
            continue
        try:
            payload = load_torch_file(path)
        except CorruptFileError:  # fall back to the previous checkpoint
            unreadable.append(name)
            continue
        if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
            return payload
        raise UserError(f"{str(path)!r} is not a softmaxlab checkpoint; delete it or choose another run directory")
    if unreadable:
        # Starting over silently would throw away the training the checkpoints stood for.
        raise UserError(
            f"{' and '.join(unreadable)} in {str(run_dir)!r} cannot be read (truncated or corrupt); "
            "delete them to train the run from its start, or choose another run directory"
        )
    return None


#: What an atomic write killed between writing and renaming leaves:
#: ``.<name>.<8 random characters>.tmp``, tempfile.mkstemp's names.
ATOMIC_TMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_stale_tmp(directory: str | Path) -> list[Path]:
    """Remove the temporary files (:data:`ATOMIC_TMP`) that atomic writes killed mid-way left
    in a run or sweep directory and in its ``figures/``; returns the paths removed.

    Only while holding :func:`lock_dir` on ``directory``: every writer of it holds the lock,
    so no temporary file found then belongs to a live write. Directories below (the runs of
    a sweep) are left to their own writers.
    """
    removed = []
    for folder in (Path(directory), Path(directory) / FIGURES):
        if folder.is_symlink() or not folder.is_dir():
            continue
        for path in folder.iterdir():
            if ATOMIC_TMP.match(path.name) and path.is_file() and not path.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                removed.append(path)
    return removed


def remove_checkpoints(run_dir: str | Path) -> None:
    """Delete the checkpoints of a finished run (its weights are in ``model.pt``), and the
    temporary file of a checkpoint write that a crash interrupted."""
    for name in (CHECKPOINT, CHECKPOINT_PREV):
        (Path(run_dir) / name).unlink(missing_ok=True)
    for tmp in Path(run_dir).glob(f".{CHECKPOINT}.*.tmp"):
        tmp.unlink(missing_ok=True)


def load_state_checked(
    module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, hint: str = "use the run's own config"
) -> None:
    """``module.load_state_dict(state)``, or a one-line :class:`UserError` naming the keys missing
    from ``state``, the unexpected ones, and those whose shapes differ (at most 5 of each), then ``hint``."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = [
        f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shapes differ", shapes))
        if keys
    ]
    if parts:
        raise UserError(f"{source} does not fit this model ({'; '.join(parts)}); {hint}")
    module.load_state_dict(state)


def environment(device: torch.device, seed: int) -> dict[str, Any]:
    """Versions, device and seed: what a reader needs to reproduce or compare a number."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "softmaxlab": version(),
        "platform": platform.platform(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "seed": seed,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu"] = platform.processor() or platform.machine()
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - a dependency, but keep summaries writable
        pass
    return env
