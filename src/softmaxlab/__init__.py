"""softmaxlab: study softmax in CNN image classifiers.

Output normalisers ("heads"), softmax as an intermediate activation, and how the variants
compare on accuracy, calibration, gradient flow and cost. The flat public API::

    from softmaxlab import load_config, fit
    result = fit(load_config("experiment.yaml", ["head.name=log_softmax"]))
"""

from __future__ import annotations

__version__ = "0.1.0"

from softmaxlab.activations import ACTIVATIONS, build_activation
from softmaxlab.config import Config, load_config
from softmaxlab.data import DATASETS, ImageData, Split, TensorLoader, load_data
from softmaxlab.errors import DivergedError, UserError
from softmaxlab.heads import HEADS, DoubleSoftmaxWarning, Head, build_head, check_logits
from softmaxlab.inference import evaluate_run, predict_images
from softmaxlab.metrics import classification_metrics, fit_temperature
from softmaxlab.models import MODELS, Classifier, build_model
from softmaxlab.registry import Registry
from softmaxlab.report import write_report
from softmaxlab.train import FitResult, evaluate, fit, train_one_epoch

__all__ = [
    "ACTIVATIONS",
    "DATASETS",
    "HEADS",
    "MODELS",
    "Classifier",
    "Config",
    "DivergedError",
    "DoubleSoftmaxWarning",
    "FitResult",
    "Head",
    "ImageData",
    "Registry",
    "Split",
    "TensorLoader",
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
    "load_config",
    "load_data",
    "predict_images",
    "train_one_epoch",
    "write_report",
]
