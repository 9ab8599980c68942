"""The run directory: the one reader and writer of its files.

A run directory holds ``config.yaml`` (fully resolved), ``metrics.jsonl`` (one JSON object
per epoch), ``summary.json``, ``model.pt`` (weights), ``checkpoint.pt`` while it trains and
``figures/``. Every file is written to a temporary file in the same directory and renamed
over the target, so a crash never leaves a half-written file behind. Reading:

* :func:`read_config`, :func:`read_summary`, :func:`read_history`: one file each, strict
  (a file that is there but cannot be read is a :class:`UserError` naming it);
* :func:`read_run`: all three as a :class:`RunRecord`, lenient (what cannot be read is
  listed in ``problems``), for reports over many runs; :func:`find_run_dirs` finds them;
* :func:`load_weights`, :func:`load_checkpoint`: ``model.pt`` and the checkpoints.

The config is read as the plain mapping on disk: validating it is the config's job.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import torch
import yaml

from softmaxlab.errors import UserError, write_error

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
WEIGHTS = "model.pt"
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_PREV = "checkpoint.prev.pt"
RUN_FILES = (CONFIG, METRICS, SUMMARY, WEIGHTS, CHECKPOINT, CHECKPOINT_PREV)
CHECKPOINT_FORMAT = "softmaxlab-checkpoint-1"
_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, fsync it, rename it over ``path``.

    A full disk or an unwritable directory is a :class:`UserError` naming ``path``; the
    temporary file is removed and ``path`` keeps its old content (or stays absent).
    """
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
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise UnreadableFileError(path, f"{path.name} could not be read ({type(exc).__name__})") from None
    if not isinstance(value, kind):
        raise UnreadableFileError(path, f"{path.name} does not hold a {kind.__name__}")
    return value


def _jsonl(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The mapping in ``config.yaml`` (as written, not validated), or None when there is none."""
    return _read_file(Path(run_dir) / CONFIG, yaml.safe_load, dict)


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


def default_run_dir(name: str | None, root: str | Path = "runs") -> Path:
    """``runs/<name>``, or ``runs/<timestamp>`` when the config has no name."""
    return Path(root) / (name or datetime.now().strftime("%Y%m%d-%H%M%S"))


def is_finished(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run that ran to its end (it has a ``summary.json``)."""
    return (Path(run_dir) / SUMMARY).is_file()


def prepare_run_dir(run_dir: str | Path, overwrite: bool = False) -> Path:
    """Check that ``run_dir`` may receive a new run and create it.

    A directory that already holds a run is refused (:class:`UserError`) unless
    ``overwrite``; then only the run's own files are removed, nothing else.
    """
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"output path {str(path)!r} is a file, not a directory; choose another --out")
    existing = [f for f in RUN_FILES if (path / f).exists()]
    if existing and not overwrite:
        what = "a finished run" if is_finished(path) else "an unfinished run"
        raise UserError(f"{str(path)!r} already holds {what}; choose another --out or pass --overwrite to replace it")
    for f in existing:
        (path / f).unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / "figures").mkdir(exist_ok=True)
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
    """Read ``model.pt`` of a run (``weights_only=True``); a missing or foreign file is a UserError."""
    path = Path(run_dir) / WEIGHTS
    if not path.is_file():
        raise UserError(f"{str(path)!r} does not exist; is {str(run_dir)!r} a finished softmaxlab run directory?")
    try:
        payload = safe_load(path)  # a foreign pickle payload: refused, never executed
    except (UserError, OSError):
        raise
    except Exception as exc:  # zip and torch errors mean "not our file"
        raise UserError(
            f"{str(path)!r} cannot be read ({type(exc).__name__}); it is corrupt or not a weights file"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != "softmaxlab-weights-1":
        raise UserError(
            f"{str(path)!r} is not a softmaxlab weights file; point at a run directory written by softmaxlab"
        )
    return payload


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


def safe_load(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU.

    Raises:
        UserError: the file holds a pickle payload other than tensors and plain values (it
            is refused, never executed).
        Exception: other read errors (a truncated or corrupt file) pass through.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's safe unpickler says "Weights only load failed" for every failure; a file
        # that names a global (a class or function to call) is a foreign payload, anything
        # else (an unknown opcode: bytes that are no pickle at all) is a corrupt file.
        if "GLOBAL" not in str(exc) and "global" not in str(exc):
            raise
        raise UserError(
            f"{str(path)!r} holds code or objects other than tensors and plain values and was not loaded; "
            "delete it and use a file written by softmaxlab"
        ) from None


def load_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    """The newest complete checkpoint of ``run_dir`` (``checkpoint.pt``, else
    ``checkpoint.prev.pt``), or None when there is none. An unreadable (partial) file is
    skipped in favour of the previous one; when every checkpoint there is unreadable, or a
    file holds a foreign pickle payload (never executed), it is a :class:`UserError`."""
    unreadable = []
    for name in (CHECKPOINT, CHECKPOINT_PREV):
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        try:
            payload = safe_load(path)
        except (UserError, OSError):  # a foreign pickle; a file that cannot be opened is not corrupt
            raise
        except Exception:  # truncated or corrupt: fall back to the previous checkpoint
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


def remove_checkpoints(run_dir: str | Path) -> None:
    """Delete the checkpoints of a finished run (its weights are in ``model.pt``), and the
    temporary file of a checkpoint write that a crash interrupted."""
    for name in (CHECKPOINT, CHECKPOINT_PREV):
        (Path(run_dir) / name).unlink(missing_ok=True)
    for tmp in Path(run_dir).glob(f".{CHECKPOINT}.*.tmp"):
        tmp.unlink(missing_ok=True)


def load_state_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(state)``, or a :class:`UserError` naming the keys missing from
    ``state``, the unexpected ones, and those whose shapes differ (at most 5 of each)."""
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
        raise UserError(f"{source} does not fit this model ({'; '.join(parts)}); use the run's own config")
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
