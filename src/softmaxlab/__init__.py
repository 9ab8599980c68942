"""softmaxlab: study softmax in CNN image classifiers.

Output normalisers ("heads"), softmax as an intermediate activation, and how the variants
compare on accuracy, calibration, gradient flow and cost. The flat public API::

    from softmaxlab import load_config, run_experiment
    result = run_experiment(load_config("experiment.yaml", ["head.name=log_softmax"]), "runs/try")
    result.summary["test"]["accuracy"], result.report

``fit`` is the training alone (the run directory without its report and figures).
"""

from __future__ import annotations

from softmaxlab.activations import ACTIVATIONS, build_activation
from softmaxlab.checkpoint import TrainingState, load_trained
from softmaxlab.config import Config, load_config, load_run_config
from softmaxlab.data import DATASETS, DataOptions, ImageData, Split, TensorLoader, load_data
from softmaxlab.errors import DivergedError, UserError
from softmaxlab.experiment import run_experiment
from softmaxlab.heads import HEADS, DoubleSoftmaxWarning, Head, SoftmaxNLLWarning, build_head, check_logits
from softmaxlab.inference import evaluate_run, predict_images
from softmaxlab.linting import Finding, lint
from softmaxlab.metrics import classification_metrics, fit_temperature
from softmaxlab.models import MODELS, Classifier, build_model
from softmaxlab.registry import Options, Registry
from softmaxlab.report import write_report
from softmaxlab.runs import version as _version
from softmaxlab.train import FitResult, Hook, evaluate, fit, train_one_epoch

__version__ = _version()

__all__ = [
    "ACTIVATIONS",
    "DATASETS",
    "HEADS",
    "MODELS",
    "Classifier",
    "Config",
    "DataOptions",
    "DivergedError",
    "DoubleSoftmaxWarning",
    "Finding",
    "FitResult",
    "Head",
    "Hook",
    "ImageData",
    "Options",
    "Registry",
    "SoftmaxNLLWarning",
    "Split",
    "TensorLoader",
    "TrainingState",
    "UserError",
    "__version__",
    "build_activation",
    "build_head",
    "build_model",
    "check_logits",
    "classification_metrics",
    "evaluate",
    "evaluate_run",
    "fit",
    "fit_temperature",
    "lint",
    "load_config",
    "load_data",
    "load_run_config",
    "load_trained",
    "predict_images",
    "run_experiment",
    "train_one_epoch",
    "write_report",
]
