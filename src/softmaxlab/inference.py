"""Use a trained run: its metrics on any dataset with the same classes, its predictions for
image files, and its feature maps for one image.

* :func:`evaluate_run` (``softmaxlab evaluate``): every metric of :mod:`softmaxlab.metrics`
  on a split of a dataset given as a spec (``shapes``, ``npz:PATH``, ...), the same keys as
  ``summary.json``'s ``test`` section. The dataset's class names must be the run's, in any
  order (labels are mapped by name), and its images are resized and normalised as in
  training.
* :func:`predict_images` (``softmaxlab predict``): the top-k classes of each image with
  their probabilities.
* :func:`visualize_run` (``softmaxlab visualize``): each block's feature maps for one image.

Both rebuild the model from ``model.pt`` and use the temperature that training fitted on the
validation split (``summary.json``'s ``temperature``), when there is one: the metrics gain
their ``*_after_temperature`` values and the predictions are p_T (``softmax(log p / T)``, or
the head's mapping of z / T: see :mod:`softmaxlab.metrics`).
"""

from __future__ import annotations

import csv
import io
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from softmaxlab import runs
from softmaxlab.checkpoint import load_trained
from softmaxlab.config import Config, DataConfig, validate_config
from softmaxlab.data import Normalize, TensorLoader, load_data, parse_data_spec
from softmaxlab.data.imagefolder import IMAGE_EXTENSIONS
from softmaxlab.diagnostics import blocks_of, feature_maps
from softmaxlab.distributed import World, resolve_device
from softmaxlab.errors import UserError
from softmaxlab.metrics import after_temperature, classification_metrics, temperature_scaled_probs, validate_probs
from softmaxlab.models import Classifier
from softmaxlab.models.external import is_factory_spec
from softmaxlab.progress import CountProgress
from softmaxlab.report.figures import feature_map_figure, save_png
from softmaxlab.train import evaluate, flip_averaged
from softmaxlab.untrusted import regular_file

#: The splits ``evaluate_run`` accepts; ``all`` is train + validation + test.
SPLITS = ("test", "val", "all")
#: The scalar metrics of the short table ``softmaxlab evaluate`` prints, in order.
TABLE_METRICS = (
    "accuracy",
    "top5",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "nll",
    "brier",
    "ece",
    "mce",
    "entropy",
)


@dataclass
class TrainedRun:
    """A run directory's model (eval mode, CPU) with what is needed to feed and calibrate it."""

    run_dir: Path
    model: Classifier
    cfg: Config
    classes: list[str]
    normalization: dict[str, list[float]]  # {"mean": [...], "std": [...]} per channel, [0, 1] scale
    temperature: float | None  # fitted on the validation split at the end of training, or None
    temperature_note: str  # summary.json's temperature_note, or why there is no temperature


def load_trained_run(run_dir: str | Path) -> TrainedRun:
    """The trained run in ``run_dir`` (``model.pt`` and, for the temperature, ``summary.json``).

    Raises:
        UserError: missing, foreign or corrupt weights; a summary.json that is not JSON.
    """
    model, cfg, payload = load_trained(run_dir)
    temperature, note = _run_temperature(Path(run_dir), cfg.head.name)
    return TrainedRun(Path(run_dir), model, cfg, list(payload["classes"]), payload["normalization"], temperature, note)


def _run_temperature(run_dir: Path, head: str) -> tuple[float | None, str]:
    path = run_dir / runs.SUMMARY
    summary = runs.read_summary(run_dir)
    if summary is None:
        return None, f"{head}: no summary.json (the run did not finish), so no temperature was fitted"
    if summary.get("status") == "diverged":
        return None, f"{head}: the run diverged, so no temperature was fitted"
    if "temperature" not in summary:
        return None, f"{head}: summary.json records no temperature (an older run); retrain it to fit one"
    t = summary["temperature"]
    if t is not None and not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise UserError(f"{str(path)!r} has temperature {t!r}, not a positive number; re-run the training")
    return (None if t is None else float(t)), str(summary.get("temperature_note") or "")


# --------------------------------------------------------------------------- evaluate


def data_config(run_cfg: Config, spec: str) -> Config:
    """The run's config with its data section pointed at the dataset ``spec``.

    The run's data options that also apply to the new dataset are kept (``image_size``,
    which the model needs, the split seed and fractions, ...) but ``max_train_images``, which
    only thins the training split; those that do not (e.g.
    ``num_classes`` of ``shapes`` when the spec is ``npz:PATH``) are dropped, and so are
    the run's data location options (``root``, ``cache_dir``, ``download``) when the spec
    names another kind of dataset: an image folder's root is not where CIFAR lives. With the
    run's own dataset everything is kept, so ``shapes`` gives back the run's splits.
    """
    overrides = parse_data_spec(spec)
    run_data = run_cfg.data.model_dump(mode="json")
    other_kind = overrides["name"] != run_cfg.data.name
    applies = type(DataConfig(name=overrides["name"])).model_fields  # the new dataset's options
    kept = {
        k: v
        for k, v in run_data.items()
        if k in applies and k not in _TRAINING_ONLY and not (other_kind and k in _LOCATION)
    }
    raw = run_cfg.to_dict()
    raw["data"] = {**kept, **overrides}
    return validate_config(raw, source=f"--data {spec}")


_LOCATION = ("root", "cache_dir", "download")  # where a dataset lives: not carried to another kind
#: Options of the run's training split only: evaluation reads the validation and test splits,
#: which they never change (a subset of another dataset's training images could not even exist).
_TRAINING_ONLY = ("name", "max_train_images")


def class_mapping(run_classes: list[str], data_classes: list[str], spec: str) -> torch.Tensor | None:
    """None when the dataset's classes are the run's in the same order; else the (K,) run
    label of each dataset label (same names, other order).

    Raises:
        UserError: the names differ, listing the difference.
    """
    if data_classes == run_classes:
        return None
    missing = [c for c in run_classes if c not in data_classes]
    extra = [c for c in data_classes if c not in run_classes]
    if missing or extra or len(set(data_classes)) != len(data_classes):
        parts = [f"{len(data_classes)} classes, the run {len(run_classes)}"]
        if missing:
            parts.append(f"missing {_names(missing)}")
        if extra:
            parts.append(f"not in the run {_names(extra)}")
        raise UserError(
            f"the class names of --data {spec} do not match the run's ({'; '.join(parts)}); "
            "evaluate on a dataset with the classes the run was trained on"
        )
    return torch.tensor([run_classes.index(c) for c in data_classes])


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def evaluate_run(
    run_dir: str | Path, spec: str, split: str = "test", device: str = "auto", keep_predictions: bool = False
) -> dict[str, Any]:
    """Every metric of the run in ``run_dir`` on ``split`` of the dataset ``spec``.

    Returns ``{"run_dir", "data" (the spec), "dataset", "split", "images", "head",
    "classes", "temperature", "temperature_note", "metrics"}``; ``metrics`` has the keys of
    ``summary.json``'s ``test`` section (the ``*_after_temperature`` ones use the run's
    temperature, null without one). ``device``: auto (CUDA when available), cpu or cuda.
    With ``keep_predictions`` the result also holds ``"predictions": {"probs", "targets"}``
    (tensors, for :func:`write_evaluation` to write ``predictions.npz`` beside the JSON).

    Raises:
        UserError: an unknown split or spec, a dataset that cannot be loaded, other class
            names or channel count than the run's, missing or corrupt weights.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    run = load_trained_run(run_dir)
    cfg = data_config(run.cfg, spec)
    data = load_data(cfg.data)
    channels = len(run.normalization["mean"])
    if data.image_shape[0] != channels:
        raise UserError(
            f"--data {spec} has {data.image_shape[0]}-channel images but the run was trained on {channels}-channel "
            "images; evaluate on images of the same kind"
        )
    mapping = class_mapping(run.classes, data.classes, spec)
    parts = [data.train, data.val, data.test] if split == "all" else [getattr(data, split)]
    x = torch.cat([s.x for s in parts])  # (N, C, S, S) uint8
    y = torch.cat([s.y for s in parts])  # (N,) dataset labels
    if mapping is not None:
        y = mapping[y]  # run labels
    target = resolve_device(device, "device")
    model = run.model.to(target)
    norm = Normalize(run.normalization["mean"], run.normalization["std"], target)
    loader = TensorLoader(x.to(target), y.to(target), cfg.train.eval_batch_size, norm)
    out = evaluate(model, loader, World(), keep_probs=True, flip=run.cfg.train.eval_flip)
    head = run.cfg.head.name
    metrics = classification_metrics(out["probs"], out["targets"], source=f"head {head!r}")
    metrics.update(after_temperature(out["probs"], out["targets"], run.temperature, model.head, out.get("scores")))
    kept = {"predictions": {k: out[k] for k in ("probs", "targets", "scores") if k in out}} if keep_predictions else {}
    return {
        "run_dir": str(run.run_dir),
        "data": spec,
        "dataset": cfg.data.name,
        "split": split,
        "images": len(y),
        "head": head,
        "classes": run.classes,
        "temperature": run.temperature,
        "temperature_note": run.temperature_note,
        "metrics": {"loss": out["loss"], **metrics},
        **kept,
    }


def default_evaluation_path(run_dir: str | Path, spec: str, split: str) -> Path:
    """``RUN_DIR/evaluate-<dataset>-<split>.json``, the dataset named after its spec.

    >>> default_evaluation_path("runs/a", "npz:data/intel64-test.npz", "test").as_posix()
    'runs/a/evaluate-npz-intel64-test-test.json'
    >>> default_evaluation_path("runs/a", "cifar100:coarse", "all").name
    'evaluate-cifar100-coarse-all.json'
    """
    name, _, arg = spec.strip().partition(":")
    where = Path(arg.rstrip("/\\")).name.removesuffix(".npz") if arg else ""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{name}-{where}" if where else name).strip("-.")
    return Path(run_dir) / f"evaluate-{slug or 'data'}-{split}.json"


def predictions_path(out: str | Path) -> Path:
    """Where the predictions of the evaluation written to ``out`` go: beside it.

    >>> predictions_path("runs/a/evaluate-shapes-test.json").as_posix()
    'runs/a/evaluate-shapes-test.predictions.npz'
    """
    path = Path(out)
    return path.with_name(f"{path.name.removesuffix('.json')}.predictions.npz")


def write_evaluation(result: dict[str, Any], out: str | Path) -> Path:
    """Write ``result`` as indented JSON to ``out`` atomically; returns the path. A result
    with ``predictions`` (``evaluate_run(..., keep_predictions=True)``) also gets them written
    to :func:`predictions_path` (``runs.save_predictions``) first, and the JSON names that file."""
    path = Path(out)
    result = dict(result)
    kept = result.pop("predictions", None)
    npz = predictions_path(path)
    runs.check_replaceable(path)  # both destinations before either is written
    try:
        if kept is not None:
            runs.check_replaceable(npz)
            runs.save_predictions(npz, kept["probs"], kept["targets"], kept.get("scores"))
            result["predictions_file"] = npz.name
        runs.atomic_write_json(path, result)
    except OSError as exc:
        raise UserError(f"cannot write {str(path)!r} ({exc.strerror}); choose another --out") from None
    return path


# --------------------------------------------------------------------------- predict


#: Above this many images ``predict`` shows a progress bar.
PROGRESS_FROM = 256


def expand_images(paths: Sequence[str | Path]) -> list[Path]:
    """``paths`` with each folder replaced by the image files under it (the suffixes an image
    folder dataset reads, :data:`~softmaxlab.data.imagefolder.IMAGE_EXTENSIONS`; recursively,
    sorted by path; hidden files and folders skipped); files are kept as given, in order.

    Raises:
        UserError: no path, or a folder that holds no image file.
    """
    if not paths:
        raise UserError("no image given; pass one or more PNG or JPEG files or folders of them")
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            found.append(path)  # read_image names a missing or unreadable file
            continue
        inside = sorted(
            f
            for f in path.rglob("*")
            if f.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in f.relative_to(path).parts)
            and f.is_file()
        )
        if not inside:
            raise UserError(
                f"folder {str(path)!r} holds no image ({', '.join(IMAGE_EXTENSIONS)}; searched recursively); pass a "
                "folder of images"
            )
        found.extend(inside)
    return found


@torch.no_grad()
def predict_images(
    run_dir: str | Path,
    images: Sequence[str | Path],
    top_k: int = 5,
    progress: CountProgress | None = None,
) -> dict[str, Any]:
    """The ``top_k`` most probable classes (capped at the class count) of each image file, or
    of each PNG / JPEG under a folder (:func:`expand_images`).

    The images are read, resized and normalised as in training, ``train.eval_batch_size`` at
    a time; the probabilities are the head's, after temperature scaling when the run fitted
    a temperature. Returns ``{"run_dir", "head", "temperature", "temperature_note", "top_k",
    "predictions": [{"image", "top": [{"class", "index", "probability"}, ...]}, ...]}``, most
    probable first. ``progress`` (more than :data:`PROGRESS_FROM` images) counts the images.

    Raises:
        UserError: ``top_k`` < 1, no images, a folder without images, a missing or unreadable
            image, missing or corrupt weights.
    """
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    files = expand_images(images)
    run = load_trained_run(run_dir)
    batch = run.cfg.train.eval_batch_size
    shown = progress if progress is not None and len(files) > PROGRESS_FROM else CountProgress()
    shown.start(len(files))
    try:
        probs = torch.cat([_predict_batch(run, files[i : i + batch], shown) for i in range(0, len(files), batch)])
    finally:
        shown.stop()
    k = min(top_k, probs.shape[1])
    values, indices = probs.topk(k, dim=1)  # (N, k) each, most probable first
    predictions = [
        {
            "image": str(image),
            "top": [{"class": run.classes[i], "index": i, "probability": v} for v, i in zip(vs, idx, strict=True)],
        }
        for image, vs, idx in zip(files, values.tolist(), indices.tolist(), strict=True)
    ]
    return {
        "run_dir": str(run.run_dir),
        "head": run.cfg.head.name,
        "temperature": run.temperature,
        "temperature_note": run.temperature_note,
        "top_k": k,
        "predictions": predictions,
    }


def _predict_batch(run: TrainedRun, files: Sequence[Path], progress: CountProgress) -> torch.Tensor:
    """(len(files), K) probabilities of one batch of image files (temperature-scaled when fitted)."""
    x = torch.cat([model_input(image, run.cfg.data.image_size, run.normalization) for image in files])
    head = run.model.head
    scores = (flip_averaged(run.model, x)[0] if run.cfg.train.eval_flip else run.model(x)).float()
    probs = head.probs(scores).float()
    validate_probs(probs, source=f"head {run.cfg.head.name!r}")
    if run.temperature is not None:
        probs = temperature_scaled_probs(head, probs, run.temperature, scores)
    progress.advance(len(files))
    return probs


def predictions_csv(result: dict[str, Any]) -> str:
    """``predict``'s result as CSV: one row per image, ``image, class_1, probability_1, ...,
    class_k, probability_k`` (most probable first)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    k = result["top_k"]
    writer.writerow(["image", *(f"{what}_{r}" for r in range(1, k + 1) for what in ("class", "probability"))])
    for item in result["predictions"]:
        writer.writerow([item["image"], *(v for c in item["top"] for v in (c["class"], f"{c['probability']:.6g}"))])
    return buffer.getvalue()


# --------------------------------------------------------------------------- images and feature maps


def read_image(path: str | Path, size: int, channels: int) -> torch.Tensor:
    """The image file at ``path`` as (1, channels, size, size) uint8, resized bilinearly.

    An image whose header claims more than PIL's ``Image.MAX_IMAGE_PIXELS`` pixels is
    refused before it is decoded (PIL itself only warns up to twice that): a few kilobytes
    of PNG can claim 30000x30000 pixels, gigabytes once decoded.

    Raises:
        UserError: a missing file, a folder or pipe in its place, an image too large to
            decode safely, or a file that is not a readable image.
    """
    # A directory or a FIFO is named as such; opening a FIFO would block forever.
    p = regular_file(path, "image file", "pass the path of a PNG or JPEG image")
    if channels not in (1, 3):
        raise UserError(f"the run's images have {channels} channels; only 1 (grey) or 3 (RGB) can be read from files")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                img = img.convert("RGB" if channels == 3 else "L").resize((size, size), Image.Resampling.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(
            f"image file {str(p)!r} is too large to decode safely ({str(exc).rstrip('.')}); pass a smaller image"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"cannot read {str(p)!r} as an image ({type(exc).__name__}); pass a PNG or JPEG file") from None
    x = torch.from_numpy(array.copy())  # (H, W, C) or (H, W)
    x = x[:, :, None] if x.ndim == 2 else x
    return x.permute(2, 0, 1)[None].contiguous()  # (1, C, H, W)


def model_input(image: str | Path, image_size: int, normalization: dict[str, list[float]]) -> torch.Tensor:
    """The image file at ``image`` as the (1, C, S, S) float batch a trained run's model takes:
    resized to ``image_size`` and normalised with the run's training ``normalization``
    (``{"mean": [...], "std": [...]}`` per channel, as saved in ``model.pt``).

    Raises:
        UserError: a missing or unreadable image (see :func:`read_image`).
    """
    x = read_image(image, image_size, len(normalization["mean"]))
    return Normalize(normalization["mean"], normalization["std"])(x)


def visualize_run(run_dir: str | Path, image: str | Path, out: str | Path | None = None, channels: int = 16) -> Path:
    """Draw each block's feature maps (first ``channels`` channels) of a trained run for one
    image, resized and normalised as in training; returns the PNG's path.

    ``out`` defaults to ``RUN_DIR/figures/feature_maps-<image name>.png``.

    Raises:
        UserError: a run directory without (valid) weights, a missing / unreadable image, or a
            model with no stages whose output is a (C, H, W) map (nothing is written then).
    """
    if channels < 1:
        raise UserError(f"--channels must be at least 1, got {channels}")
    model, cfg, payload = load_trained(run_dir)
    if not blocks_of(model):  # before the image is read: no image would give this model maps
        raise UserError(_no_stages_message(cfg.model.name))
    x = model_input(image, cfg.data.image_size, payload["normalization"])  # (1, C, S, S), as in training
    out = Path(out) if out is not None else Path(run_dir) / "figures" / f"feature_maps-{Path(image).stem}.png"
    maps = feature_maps(model, x)
    if not maps:  # stages that output no maps (a ViT's tokens): an empty figure would be a blank PNG
        raise UserError(
            f"the stages of model {cfg.model.name!r} output no (C, H, W) feature maps (tokens or vectors), so there "
            "are none to show; feature maps need a convolutional model"
        )
    return save_png(feature_map_figure([m for _, m in maps], [n for n, _ in maps], channels), out)


def _no_stages_message(model_name: str) -> str:
    """Why a model without stages (``backbone.blocks`` empty) has no feature maps, and what to do."""
    what = f"model {model_name!r} exposes no stages, so it has no feature maps to show"
    if is_factory_spec(model_name):
        # A plain list registers nothing, so the run's state dict, and its weights, stay as they are.
        return (
            f"{what}; give the network your factory returns a `blocks` attribute, a plain list of its stage modules "
            "(self.blocks = [self.stage1, self.stage2]), and run visualize again: the trained weights still load"
        )
    return f"{what}; choose a model with stages (simple_cnn, resnet12, a timm or torchvision CNN)"
