"""The softmax linter: softmax pitfalls in any ``nn.Module`` with its loss, found by running them.

:func:`lint` runs the model on a small batch (2 random images unless given one), then its
loss on fake targets, and then the model once more in eval mode without gradients (as
evaluation runs it), and watches every call into torch: a
:class:`torch.overrides.TorchFunctionMode` sees functional calls (``F.softmax``,
``torch.log``, ``Tensor.softmax``, ``x @ y``, ...) even in models that ``torch.fx`` cannot
trace, and forward hooks on every submodule say which module made each call. Checking
``grad_fn`` instead gives false negatives (pytorch/pytorch#55902): a ``.float()``, a view or
a dropout between the softmax and the loss hides it. Here each op's output is tagged with
where it came from (provenance), and the tag follows the tensor:

* a softmax, log_softmax or sigmoid output is tagged *exact* (it holds those values);
* ops that only move or copy values keep the tag as it is (``view``, ``reshape``, ``flatten``,
  ``squeeze``, ``permute``, ``transpose``, ``contiguous``, ``clone``, ``to``, ``float``,
  ``detach``, dropout; ``nn.Identity`` calls nothing), the normalised axis renumbered;
* so do ops whose every row along the normalised axis is still one of the input's rows (or
  a mean of such rows): selecting rows (``p[idx]``, ``p[:n]``, ``index_select``,
  ``narrow`` or ``select`` on another axis), ``torch.cat`` / ``torch.stack`` of tensors
  tagged alike along another axis, ``torch.where`` between them with a condition constant
  along it, ``F.interpolate`` (nearest, linear, area) or a reflect / replicate ``F.pad``
  over other axes, and the mean over a stack's axis (an ensemble,
  ``torch.stack(ps).mean(0)``) or over another axis but the batch (``(B, T, K)`` test-time
  augmentation, a spatial mean);
* arithmetic with a scalar (``p * 2``, ``p + 1e-8``, ``1 - p``, ``clamp``) makes it *scaled*,
  and so do ops that keep values in [0, 1] but break the rows' sum: the sum of two tensors
  tagged alike (``(p1 + p2) / 2``), a sum over another axis, slicing or gathering classes
  (``p[:, :k]``, ``p[:, 3]``, ``gather``), ``torch.cat`` along the normalised axis,
  ``torch.where`` / ``masked_fill`` with a scalar or a condition that varies along it, a
  zero ``F.pad`` of other axes, a bicubic ``F.interpolate``;
* pointwise activations (ReLU, GELU, ...), adding another tensor (a residual) and
  ``torch.where`` with an untagged tensor make it *mixed*: no longer probabilities, but
  still a softmax's output flowing on;
* every other op drops it: multiplying or dividing by another tensor (attention weighting
  values, gating, renormalising), ``matmul`` / ``bmm`` / ``einsum`` /
  ``scaled_dot_product_attention`` / ``nn.MultiheadAttention``, a ``cat`` or ``stack`` with
  untagged tensors, reductions over the normalised axis or the batch, ``chunk`` / ``split``
  / ``unbind``, and every op not named here.

The rules, one :class:`Finding` kind each (:data:`KINDS` gives the severities):

* ``double_softmax`` (error): softmax probabilities (exact or scaled) into
  ``F.cross_entropy`` / ``nn.CrossEntropyLoss``, which applies a second softmax.
* ``softmax_into_nll`` (error): probabilities, not log-probabilities (a softmax's or a
  sigmoid's, exact or scaled), into ``F.nll_loss`` / ``nn.NLLLoss``.
* ``sigmoid_into_cross_entropy`` (error): sigmoid outputs (exact or scaled) into cross-entropy.
* ``sigmoid_into_bce_with_logits`` (error): sigmoid outputs into
  ``F.binary_cross_entropy_with_logits`` / ``nn.BCEWithLogitsLoss``: a double sigmoid.
* ``softmax_into_bce_with_logits`` (error): softmax probabilities into BCE-with-logits.
* ``logits_into_nll`` (error): into ``F.nll_loss``, untagged values that are not
  log-probabilities: some positive, or rows whose logsumexp is not 0 (it checks the values,
  so ``z - z.logsumexp(1, keepdim=True)`` written by hand passes). The loss is then -z_y,
  unbounded below.
* ``softmax_into_kl_div`` (error): probabilities as the input of ``F.kl_div`` /
  ``nn.KLDivLoss``, which takes log-probabilities there.
* ``softmax_over_batch`` (error): a softmax or log_softmax over axis 0 of a tensor of two or
  more axes whose first axis has the batch's size (``F.softmax(z, dim=0)``, or
  ``nn.Softmax()`` without ``dim`` on a 3-D input), when its output reaches the model's
  output or a loss: images normalised against each other.
* ``constant_softmax`` (error): a softmax or log_softmax over an axis of size 1 (one logit
  for a binary task), when its output reaches the model's output or a loss: 1 (or 0)
  everywhere, no gradient. (Inside a model, axis 0 of the batch's size may be a stack of
  branches, and attention over a single token is constant by design: neither rule applies.)
* ``probabilities_in_eval`` (error): in eval mode (no gradients) the model outputs
  probabilities, or normalises probabilities again (a log_softmax head on them), where in
  training mode it outputs logits or log-probabilities
  (``return x if self.training else x.softmax(-1)``): an evaluation that applies a softmax
  or the training loss (softmaxlab's head with ``model.user_head: none``, a validation
  loss) normalises twice.
* ``log_of_softmax`` (warning): ``torch.log`` / ``Tensor.log`` (log2, log10) of softmax
  probabilities, exact or scaled (``log(p + eps)``, ``log(p.clamp(min=eps))``).
* ``log_of_sigmoid`` (warning): the log of sigmoid outputs (``F.logsigmoid`` is stable).
* ``intermediate_softmax`` (warning): a softmax whose output (exact, scaled or mixed)
  feeds a layer: convolution, linear, batch / layer / group / instance norm, pooling; the
  message names the axes ("over height and width of a (B, C, H, W) map", followed through
  the flatten / view / permute that led to the softmax) and the layer. Not when the layer
  is linear and its output then weights values: talking-heads attention (CaiT) mixes the
  heads' attention maps with a linear layer before the product with the values.
* ``log_probabilities_in_eval`` (warning): as ``probabilities_in_eval``, with
  log-probabilities in eval mode where training gives logits: harmless where evaluation
  takes a softmax (softmax(log_softmax(z)) = softmax(z)), wrong for a sigmoid, sparsemax or
  entmax head.
* ``log_softmax_into_cross_entropy`` (note): exact log-probabilities (``log_softmax``, or
  the log of a softmax) into cross-entropy: redundant but harmless.
* ``softmax_output`` (note, only when no loss is given): the model outputs softmax
  probabilities, which a cross-entropy loss would soften again.

Deliberately not findings: a softmax over attention scores that then weights values
(matmul, bmm, einsum, ``scaled_dot_product_attention``, ``nn.MultiheadAttention``, or an
elementwise product with another tensor: attention pooling, selective-kernel branches); a
sigmoid gate (squeeze-excitation multiplies by a sigmoid); the final softmax that produces
the model's output (only the loss decides whether it is a pitfall); ``F.gumbel_softmax``
(a sample, meant to feed layers); a hand-written ``exp / sum`` (not recognised).

Which module made an op is the innermost module whose forward was running (``where``:
``classifier.2``); an op of the model's own ``forward`` is named by itself (``torch.softmax``).
A finding's ``source`` is ``file.py:line`` of the innermost frame of the user's code
(outside torch, other installed libraries such as timm and torchvision, the standard
library and softmaxlab) on the way to the op: the line that made it, or that called the
library or the module that made it. Without one, it is the library's own line that made the
op (``timm/models/vision_transformer.py:97``, ``softmaxlab/heads/pitfalls.py:64``), or ""
when the op ran inside a torch module (an ``nn.Softmax`` in an ``nn.Sequential``). Models
with lazy modules not yet initialised are linted on a copy, so that the user's model stays
lazy. The cost is the model's forward twice (training and eval mode) plus a few
microseconds per torch call (``benchmarks/bench_lint.py``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import site
import sys
import sysconfig
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter, is_lazy
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from softmaxlab.errors import UserError, short_error
from softmaxlab.heads.check import DoubleSoftmaxWarning, SoftmaxNLLWarning, SoftmaxPitfallWarning
from softmaxlab.heads.pitfalls import double_softmax_floor
from softmaxlab.models.external import select_output

#: Every finding kind and its severity (the names are a contract: scripts match on them).
KINDS: dict[str, str] = {
    "double_softmax": "error",
    "softmax_into_nll": "error",
    "sigmoid_into_cross_entropy": "error",
    "sigmoid_into_bce_with_logits": "error",
    "softmax_into_bce_with_logits": "error",
    "softmax_into_kl_div": "error",
    "logits_into_nll": "error",
    "softmax_over_batch": "error",
    "constant_softmax": "error",
    "probabilities_in_eval": "error",
    "log_of_softmax": "warning",
    "log_of_sigmoid": "warning",
    "intermediate_softmax": "warning",
    "log_probabilities_in_eval": "warning",
    "log_softmax_into_cross_entropy": "note",
    "softmax_output": "note",
}
SEVERITIES = ("error", "warning", "note")
#: Images in the batch :func:`lint` makes when it is given none (BatchNorm needs more than one).
BATCH = 2


@dataclass(frozen=True)
class Finding:
    """One softmax pitfall: its ``kind`` (a key of :data:`KINDS`), ``severity`` ("error",
    "warning" or "note"), ``where`` (the module path of the op to change, e.g. ``classifier.2``,
    or the op itself, e.g. ``torch.softmax``, when the model's own forward called it), a
    one-sentence ``message``, the ``fix``, and ``source``: ``file.py:line`` of the Python
    call that made the op ("" when unknown)."""

    kind: str
    severity: str
    where: str
    message: str
    fix: str
    source: str = ""

    def to_dict(self) -> dict[str, str]:
        """The finding as a JSON-ready dict."""
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.kind} ({self.severity}) at {self.where}: {self.message}; fix: {self.fix}"


def has_errors(findings: Sequence[Finding]) -> bool:
    """Whether any finding has severity "error" (``softmaxlab lint`` then exits 4)."""
    return any(f.severity == "error" for f in findings)


# --------------------------------------------------------------------------- the ops by role


def _resolve(name: str) -> Any:
    """``"F.softmax"`` -> ``torch.nn.functional.softmax`` (None when this torch lacks it)."""
    head, _, rest = name.partition(".")
    obj: Any = {"F": F, "torch": torch, "Tensor": torch.Tensor}[head]
    for part in rest.split("."):
        obj = getattr(obj, part, None)
    return obj


def _names(*names: str) -> tuple[str, ...]:
    return names


#: What each op does to a tag (see the module docstring), by the name the findings use.
_ROLES: dict[str, tuple[str, ...]] = {
    "softmax": _names("F.softmax", "F.softmin", "torch.softmax", "Tensor.softmax", "torch.special.softmax"),
    "log_softmax": _names("F.log_softmax", "torch.log_softmax", "Tensor.log_softmax", "torch.special.log_softmax"),
    "sigmoid": _names("F.sigmoid", "torch.sigmoid", "Tensor.sigmoid", "Tensor.sigmoid_", "torch.special.expit"),
    "log": _names("torch.log", "Tensor.log", "Tensor.log_", "torch.log2", "Tensor.log2", "torch.log10", "Tensor.log10"),
    "reorder": _names("Tensor.permute", "torch.permute", "Tensor.transpose", "torch.transpose", "Tensor.swapaxes")
    + _names("Tensor.swapdims", "Tensor.t", "torch.t"),
    "keep": _names("Tensor.view", "Tensor.view_as", "Tensor.reshape", "Tensor.reshape_as", "torch.reshape")
    + _names("Tensor.flatten", "torch.flatten", "Tensor.unflatten", "torch.unflatten", "Tensor.squeeze")
    + _names("torch.squeeze", "Tensor.unsqueeze", "torch.unsqueeze", "Tensor.contiguous", "Tensor.clone")
    + _names("torch.clone", "Tensor.to", "Tensor.float", "Tensor.double", "Tensor.half", "Tensor.bfloat16")
    + _names("Tensor.type", "Tensor.type_as", "Tensor.detach", "torch.detach", "Tensor.cpu", "Tensor.cuda")
    + _names("F.dropout", "F.dropout1d", "F.dropout2d", "F.dropout3d", "F.alpha_dropout", "torch.dropout")
    + _names("F.feature_alpha_dropout"),
    "add": _names("torch.add", "Tensor.add", "Tensor.add_", "Tensor.__add__", "Tensor.__radd__", "Tensor.__iadd__")
    + _names("torch.sub", "Tensor.sub", "Tensor.sub_", "Tensor.__sub__", "Tensor.__rsub__", "Tensor.__isub__"),
    "scale": _names("torch.mul", "Tensor.mul", "Tensor.mul_", "Tensor.__mul__", "Tensor.__rmul__", "torch.div")
    + _names("Tensor.div", "Tensor.div_", "Tensor.__truediv__", "torch.true_divide", "Tensor.true_divide")
    + _names("torch.clamp", "Tensor.clamp", "Tensor.clamp_", "torch.clip", "Tensor.clip", "Tensor.clamp_min")
    + _names("Tensor.clamp_max", "torch.neg", "Tensor.neg", "Tensor.__neg__"),
    "pointwise": _names("F.relu", "F.relu_", "torch.relu", "Tensor.relu", "Tensor.relu_", "F.relu6", "F.gelu")
    + _names("F.silu", "F.elu", "F.leaky_relu", "F.hardswish", "F.mish", "torch.tanh", "Tensor.tanh", "F.tanh"),
    "select": _names("Tensor.__getitem__", "torch.index_select", "Tensor.index_select", "torch.narrow")
    + _names("Tensor.narrow", "torch.select", "Tensor.select", "torch.gather", "Tensor.gather"),
    "where": _names("torch.where", "Tensor.where", "torch.masked_fill", "Tensor.masked_fill", "Tensor.masked_fill_"),
    "join": _names("torch.cat", "torch.concat", "torch.concatenate", "torch.stack"),
    "reduce": _names("torch.mean", "Tensor.mean", "torch.sum", "Tensor.sum"),
    "resample": _names("F.interpolate", "F.pad"),
    "weight": _names("torch.matmul", "Tensor.matmul", "Tensor.__matmul__", "Tensor.__rmatmul__", "torch.bmm")
    + _names("Tensor.bmm", "torch.baddbmm", "Tensor.baddbmm", "torch.einsum", "F.scaled_dot_product_attention"),
    "layer": _names("F.conv1d", "F.conv2d", "F.conv3d", "F.conv_transpose1d", "F.conv_transpose2d", "F.linear")
    + _names("F.conv_transpose3d", "F.bilinear", "F.batch_norm", "F.instance_norm", "F.layer_norm", "F.group_norm")
    + _names("F.rms_norm", "F.local_response_norm", "F.max_pool1d", "F.max_pool2d", "F.max_pool3d", "F.avg_pool1d")
    + _names("F.avg_pool2d", "F.avg_pool3d", "F.adaptive_avg_pool1d", "F.adaptive_avg_pool2d", "F.lp_pool1d")
    + _names("F.adaptive_avg_pool3d", "F.adaptive_max_pool1d", "F.adaptive_max_pool2d", "F.adaptive_max_pool3d")
    + _names("F.lp_pool2d", "F.lp_pool3d"),
    "cross_entropy": _names("F.cross_entropy"),
    "nll": _names("F.nll_loss"),
    "bce_with_logits": _names("F.binary_cross_entropy_with_logits"),
    "kl_div": _names("F.kl_div"),
}


def _role_table() -> dict[Any, tuple[str, str]]:
    """{torch function: (role, name)}; the first name of a function wins (``F.conv2d`` is ``torch.conv2d``)."""
    table: dict[Any, tuple[str, str]] = {}
    for role, names in _ROLES.items():
        for name in names:
            func = _resolve(name)
            if func is not None and func not in table:
                table[func] = (role, name)
    return table


_TABLE = _role_table()
_EXACT, _SCALED, _MIXED = 0, 1, 2  # how far a tagged tensor is from the op's own output
_TORCH_DIR = os.path.dirname(torch.__file__)


# --------------------------------------------------------------------------- tags and axes


@dataclass(frozen=True)
class _Source:
    """The softmax, log_softmax or sigmoid that made a tagged tensor."""

    kind: str  # "softmax", "log_softmax" or "sigmoid"
    op: str  # e.g. "F.softmax"
    module: str  # the module path ("" = the model's own forward)
    by: str  # what made it, in words: "F.softmax in Softmax"
    site: str  # "file.py:12"
    axes: str  # "over height and width of a (B, C, H, W) map"
    shape: tuple[int, ...] = ()  # of the softmax's input
    dim: int | None = None  # the axis of the input it normalised over

    @property
    def where(self) -> str:
        return self.module or self.op


@dataclass(frozen=True)
class _Tag:
    source: _Source
    level: int  # _EXACT, _SCALED or _MIXED
    dim: int | None  # the normalised axis in this tensor (None: unknown, or a sigmoid)
    logged: bool = False  # the log of the source's output (log-probabilities)
    through_linear: bool = False  # a linear layer mixed the softmax's output (talking-heads attention)
    members: int | None = None  # the axis a torch.stack of tagged tensors made (an ensemble's members)
    pooled: bool = False  # a mean or sum of several rows (an ensemble): its log is no log_softmax
    renormalised: _Source | None = None  # the softmax or sigmoid whose probabilities this normaliser's input held

    def probabilities(self) -> bool:
        """Softmax or sigmoid values, at most scaled: what a loss on logits or log-probabilities must not get."""
        return self.level <= _SCALED and not self.logged and self.source.kind in ("softmax", "sigmoid")

    def log_probabilities(self) -> bool:
        return self.level == _EXACT and (self.logged or self.source.kind == "log_softmax")

    def family(self) -> str | None:
        """What the values are: "probabilities", "log-probabilities", or None (mixed, or scaled log-probabilities)."""
        return "probabilities" if self.probabilities() else "log-probabilities" if self.log_probabilities() else None


def _alike(tags: Sequence[_Tag]) -> _Tag | None:
    """The tag of a combination of tensors tagged alike (the same family of values from the same
    kind of normaliser, over the same axis), at the least exact level of them; None otherwise."""
    first = tags[0]
    key = (first.family(), first.source.kind, first.dim)
    if key[0] is None or any((t.family(), t.source.kind, t.dim) != key for t in tags):
        return None
    members = first.members if all(t.members == first.members for t in tags) else None
    return replace(first, level=max(t.level for t in tags), members=members, pooled=any(t.pooled for t in tags))


@dataclass(frozen=True)
class _Axes:
    """What each axis of a tensor holds, for a tensor reshaped from a (B, C, H, W) map."""

    names: tuple[tuple[str, ...], ...]  # the map's axes each spans: ("batch",), ("channels",), ("height", "width")
    base: str  # "(B, C, H, W) map"


_MAP_AXES = {
    4: _Axes((("batch",), ("channels",), ("height",), ("width",)), "(B, C, H, W) map"),
    5: _Axes((("batch",), ("channels",), ("depth",), ("height",), ("width",)), "(B, C, D, H, W) map"),
}


def regroup(src: Sequence[int], dst: Sequence[int]) -> list[tuple[int, ...]] | None:
    """For each axis of a ``dst``-shaped view of a ``src``-shaped tensor (same elements in
    row-major order), the axes of ``src`` it spans; None when the view is no merge or split
    of neighbouring axes. Axes of size 1 span nothing.

    >>> regroup((2, 3, 4, 5), (2, 3, 20))
    [(0,), (1,), (2, 3)]
    >>> regroup((2, 10, 1, 1), (2, 10)), regroup((2, 10), (2, 1, 10))
    ([(0,), (1,)], [(0,), (), (1,)])
    >>> regroup((2, 6), (2, 2, 3))
    [(0,), (1,), (1,)]
    """
    if 0 in src or 0 in dst:
        return None
    s = [i for i, n in enumerate(src) if n != 1]
    d = [j for j, n in enumerate(dst) if n != 1]
    out: list[tuple[int, ...]] = [() for _ in dst]
    i = j = 0
    while i < len(s) and j < len(d):
        spans, made = [s[i]], [d[j]]
        ps, pd = src[s[i]], dst[d[j]]
        while ps != pd:  # widen the smaller side until both cover the same elements
            if ps < pd:
                i += 1
                if i == len(s):
                    return None
                spans.append(s[i])
                ps *= src[s[i]]
            else:
                j += 1
                if j == len(d):
                    return None
                made.append(d[j])
                pd *= dst[d[j]]
        for k in made:
            out[k] = tuple(spans)
        i, j = i + 1, j + 1
    return out if i == len(s) and j == len(d) else None


def _moved_dim(mapping: list[tuple[int, ...]], dim: int | None) -> int | None:
    """Where axis ``dim`` went: the one output axis that spans it alone (None: merged, split or gone)."""
    if dim is None:
        return None
    spans = [k for k, g in enumerate(mapping) if dim in g]
    return spans[0] if len(spans) == 1 and mapping[spans[0]] == (dim,) else None


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _site() -> str:
    """``file.py:line`` of the innermost frame of the user's code on the way to the op (see
    :func:`_origin`); without one, ``package/path.py:line`` of the library or softmaxlab line
    that made the op itself; "" when a torch module made it (an ``nn.Softmax`` in an
    ``nn.Sequential``: the line that built it is not on the stack)."""
    frame = sys._getframe(1)
    fallback = ""
    in_module = False  # a torch module's __call__ ran between the op and this frame
    while frame is not None:
        code = frame.f_code
        origin = _origin(code.co_filename, frame.f_globals.get("__name__", ""))
        if origin == "linter" and code.co_name in _CALLERS:
            break  # reached the linter's own call of the model or the loss
        if origin == "user":
            return f"{os.path.basename(code.co_filename)}:{frame.f_lineno}"
        if origin == "torch":
            in_module = in_module or code.co_name in ("_call_impl", "_wrapped_call_impl")
        elif origin == "library" and not fallback and not in_module:
            fallback = f"{_package_path(code.co_filename, frame.f_globals.get('__name__', ''))}:{frame.f_lineno}"
        frame = frame.f_back
    return fallback


_CALLERS = ("_call_model", "_call_loss")
_OWN_DIR = os.path.dirname(os.path.abspath(__file__))
#: Where installed libraries and the standard library live: their frames are not the user's code.
_LIBRARY_DIRS = tuple(
    os.path.join(os.path.abspath(d), "")
    for d in {
        *(sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")),
        *site.getsitepackages(),
        site.getusersitepackages(),
    }
    if d
)
_LIBRARY_DIRS += (os.path.join(_OWN_DIR, ""),)  # softmaxlab's own files, wherever it is installed from
#: Top-level packages that are libraries even when installed from a source tree (pip install -e).
_LIBRARIES = ("softmaxlab", "timm", "torchvision")
_ORIGINS: dict[str, str] = {}


def _origin(filename: str, module: str) -> str:
    """Whose code ``filename`` (of module ``module``) is: "linter" (this file), "torch",
    "library" (softmaxlab, timm, torchvision, anything installed, the standard library) or
    "user" (the rest: the user's model and loss files, scripts, tests, notebooks)."""
    key = f"{filename}|{module}"
    origin = _ORIGINS.get(key)
    if origin is None:
        top = module.partition(".")[0]
        path = os.path.abspath(filename)
        if path == os.path.abspath(__file__):
            origin = "linter"
        elif top == "torch" or path.startswith(os.path.join(_TORCH_DIR, "")):
            origin = "torch"
        elif top in _LIBRARIES or path.startswith(_LIBRARY_DIRS) or filename.startswith("<frozen"):
            origin = "library"
        else:
            origin = "user"
        _ORIGINS[key] = origin
    return origin


def _package_path(filename: str, module: str) -> str:
    """``filename`` from its top package's folder on: ``timm/models/vision_transformer.py``."""
    top = module.partition(".")[0]
    parts = os.path.abspath(filename).split(os.sep)
    at = [i for i, part in enumerate(parts[:-1]) if part == top]
    return "/".join(parts[at[-1] :]) if top and at else os.path.basename(filename)


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (int, float, bool)) or (isinstance(x, Tensor) and x.numel() == 1)


def _arg(args: tuple, kwargs: dict, i: int, name: str) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


def _class_count(x: Tensor) -> int:
    """K of a cross-entropy input: (N, K, ...) or an unbatched (K,)."""
    return int(x.shape[1] if x.ndim >= 2 else x.shape[0])


class _LinterBug(RuntimeError):
    """An error of the linter itself while it watched an op (never reported as the model's)."""


# --------------------------------------------------------------------------- the trace


class _Trace(TorchFunctionMode):
    """Watches every torch call: tags what softmax, log_softmax and sigmoid make, carries the
    tags through the ops that keep them, and records a finding where a rule applies."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch
        self.tags: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> _Tag (weak: no id reuse, nothing kept alive)
        self.axes: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor reshaped from a map -> _Axes
        self.stack: list[tuple[str, str]] = []  # (path, class name) of the modules whose forward is running
        self.found: dict[tuple[str, str, str], Finding] = {}
        self.intermediate: dict[_Source, tuple[str, str, str]] = {}  # softmax -> key of its intermediate_softmax
        self.attention: set[_Source] = set()  # softmaxes whose output, mixed by a linear layer, weights values
        self.handlers: dict[str, Callable[[str, tuple, dict, Any], None]] = {
            "softmax": self._on_softmax,
            "log_softmax": self._on_log_softmax,
            "sigmoid": self._on_sigmoid,
            "log": self._on_log,
            "reorder": self._on_reorder,
            "keep": self._on_keep,
            "add": self._on_arithmetic,
            "scale": self._on_arithmetic,
            "pointwise": self._on_pointwise,
            "select": self._on_select,
            "where": self._on_where,
            "join": self._on_join,
            "reduce": self._on_reduce,
            "resample": self._on_resample,
            "layer": self._on_layer,
            "weight": self._on_weight,
            "cross_entropy": self._on_cross_entropy,
            "nll": self._on_nll,
            "bce_with_logits": self._on_bce_with_logits,
            "kl_div": self._on_kl_div,
        }

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # the mode is off inside: F.cross_entropy's own log_softmax is not seen
        entry = _TABLE.get(func)
        if entry is not None and isinstance(out, Tensor):
            role, name = entry
            try:
                self.handlers[role](name, args, kwargs, out)
            except Exception as exc:
                raise _LinterBug(f"softmaxlab's linter failed on {name}: {short_error(exc)}") from exc
        return out

    # ------------------------------------------------------------------ bookkeeping

    @property
    def module(self) -> str:
        return self.stack[-1][0] if self.stack else ""

    def by(self, name: str) -> str:
        """``name`` and the class of the module that called it: "F.cross_entropy in CrossEntropyLoss"."""
        return f"{name} in {self.stack[-1][1]}" if self.stack else name

    @contextlib.contextmanager
    def hooked(self, modules: dict[str, nn.Module]) -> Iterator[None]:
        """Forward hooks on every submodule of each ``{path prefix: module}``, so that each op
        knows the module that made it."""

        def enter(path: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any) -> None:
                self.stack.append((path, type(module).__name__))

            return hook

        def leave(module: nn.Module, args: Any, output: Any) -> None:
            self.stack.pop()

        handles = []
        for prefix, root in modules.items():
            for path, module in root.named_modules(prefix=prefix):
                handles.append(module.register_forward_pre_hook(enter(path)))
                handles.append(module.register_forward_hook(leave, always_call=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def find(self, kind: str, source: _Source, message: str, fix: str) -> tuple[str, str, str]:
        """Record a finding once per kind, place and call site; returns its key."""
        key = (kind, source.where, source.site)
        self.found.setdefault(key, Finding(kind, KINDS[kind], source.where, message, fix, source.site))
        return key

    def findings(self) -> list[Finding]:
        """The findings, errors first, each severity in the order the ops ran; without the
        intermediate softmaxes that turned out to be attention."""
        dropped = {self.intermediate[s] for s in self.attention if s in self.intermediate}
        kept = [f for key, f in self.found.items() if key not in dropped]
        return sorted(kept, key=lambda f: SEVERITIES.index(f.severity))

    def tag_of(self, x: Any) -> _Tag | None:
        return self.tags.get(x) if isinstance(x, Tensor) else None

    def axes_of(self, x: Tensor) -> _Axes | None:
        return self.axes.get(x) or _MAP_AXES.get(x.ndim)

    def describe(self, x: Tensor, dim: int | None) -> str:
        """The axis ``dim`` of ``x`` in words: "over height and width of a (B, C, H, W) map"."""
        if dim is None:
            return "over a named axis"
        axes = self.axes_of(x)
        if axes is not None:
            names = axes.names[dim]
            # An axis spanning no axis of the map has size 1 (a 1 x 1 map flattened): softmax makes it all 1.
            size_one = "an axis of size 1 (every output is exactly 1: the map passes no information on)"
            what = "the batch" if names == ("batch",) else _join(names) if names else size_one
            return f"over {what} of a {axes.base}"
        if x.ndim == 2:
            return f"over the {'batch' if dim == 0 else 'features'} of a (B, F) tensor"
        return f"over axis {dim} of a {tuple(x.shape)} tensor"

    # ------------------------------------------------------------------ what makes a tag

    def _on_softmax(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        self._normaliser("softmax", name, args, kwargs, out)

    def _on_log_softmax(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        tag = self.tag_of(_arg(args, kwargs, 0, "input"))
        if tag is not None and tag.probabilities():
            # log_softmax of probabilities is a second softmax, wherever it runs: inside a loss
            # such as label-smoothing or soft-target cross-entropy written with log_softmax.
            self._on_cross_entropy(name, args, kwargs, out)
        self._normaliser("log_softmax", name, args, kwargs, out)

    def _normaliser(self, kind: str, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """Tag a softmax's or log_softmax's output; the axis rules (over the batch, over one value)."""
        x, dim = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "dim")
        if not isinstance(x, Tensor):
            return
        n = x.ndim
        if dim is None:  # torch's implicit (deprecated) choice: axis 0 for 0-, 1- and 3-D inputs, else 1
            dim = 0 if n in (0, 1, 3) else 1
        axis = (dim % n if n else 0) if isinstance(dim, int) else None
        axes = self.describe(x, axis) if n else "over a scalar"
        source = _Source(kind, name, self.module, self.by(name), _site(), axes, tuple(x.shape), axis)
        before = self.tag_of(x)
        # A normaliser of probabilities (a log_softmax head on a model's softmax): what evaluation
        # compares with training (probabilities_in_eval) is the probabilities that reached it.
        again = (before.renormalised or before.source) if before is not None and before.probabilities() else None
        self.tags[out] = _Tag(source, _EXACT, axis, renormalised=again)

    def axis_rules(self, tag: _Tag | None) -> None:
        """``softmax_over_batch`` and ``constant_softmax``, for a softmax's output that reaches
        the model's output or a loss (inside the model, axis 0 of size B may be a stack of
        branches, and attention over a single token is constant by design)."""
        if tag is None or tag.source.kind not in ("softmax", "log_softmax"):
            return
        s = tag.source
        if s.dim == 0 and len(s.shape) >= 2 and s.shape[0] == self.batch:
            self.find(
                "softmax_over_batch",
                s,
                f"{s.kind} over axis 0, the batch, of a {s.shape} tensor ({s.by}): each image's output depends on "
                "the other images of its batch, and no image's classes are normalised",
                "normalise over the class axis: dim=1 or dim=-1 (nn.Softmax(dim=1)); nn.Softmax() without dim picks "
                "axis 0 for 0-, 1- and 3-D inputs",
            )
        if s.dim is not None and s.shape and s.shape[s.dim] == 1:
            self.find(
                "constant_softmax",
                s,
                f"{s.kind} {s.axes} ({s.by}) runs over a single value, so it is {1 if s.kind == 'softmax' else 0} "
                "everywhere: the output is constant and passes no gradient back",
                "with one logit per image use sigmoid and BCEWithLogitsLoss (or output two logits for "
                "cross-entropy); otherwise normalise over the class axis",
            )

    def _on_sigmoid(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        self.tags[out] = _Tag(_Source("sigmoid", name, self.module, self.by(name), _site(), ""), _EXACT, None)

    # ------------------------------------------------------------------ what carries a tag

    def _carry(self, x: Any, out: Tensor, mapping: list[tuple[int, ...]] | None) -> None:
        """``out`` holds the values of ``x`` moved by ``mapping`` (each out axis: the axes of ``x`` it spans)."""
        if not isinstance(x, Tensor) or out is x:
            return
        tag = self.tags.get(x)
        if tag is not None:
            dim, members = (_moved_dim(mapping, tag.dim), _moved_dim(mapping, tag.members)) if mapping else (None, None)
            self.tags[out] = replace(tag, dim=dim, members=members)
        axes = self.axes_of(x)
        if axes is not None and mapping is not None:
            names = tuple(tuple(n for i in g for n in axes.names[i]) for g in mapping)
            self.axes[out] = _Axes(names, axes.base)

    def _on_keep(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        x = _arg(args, kwargs, 0, "input")
        if not isinstance(x, Tensor) or (x not in self.tags and x.ndim not in _MAP_AXES and x not in self.axes):
            return  # the common case, kept cheap: nothing to carry
        same = out.shape == x.shape
        self._carry(x, out, [(i,) for i in range(x.ndim)] if same else regroup(x.shape, out.shape))

    def _on_reorder(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        x = _arg(args, kwargs, 0, "input")
        if not isinstance(x, Tensor) or (x not in self.tags and x.ndim not in _MAP_AXES and x not in self.axes):
            return
        perm = _permutation(name, args, kwargs, x.ndim)
        self._carry(x, out, None if perm is None else [(p,) for p in perm])

    def _on_arithmetic(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """With a scalar: scaled. Adding another tensor (a residual): mixed. Multiplying or
        dividing by another tensor weights it (attention, a gate, a renormalisation): dropped."""
        a, b = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other")
        ta, tb = self.tag_of(a), self.tag_of(b)
        if ta is None and tb is None:
            if isinstance(a, Tensor) and a in self.axes and out.shape == a.shape:
                self.axes[out] = self.axes[a]  # tokens of a map plus a position embedding
            return
        x, tag, other = (a, ta, b) if ta is not None else (b, tb, a)
        unary = "clamp" in name or "clip" in name or "neg" in name
        both = _alike([ta, tb]) if ta is not None and tb is not None else None
        alpha = kwargs.get("alpha", 1)
        if both is not None and both.probabilities() and "add" in name and _is_scalar(alpha) and float(alpha) > 0:
            # An ensemble's sum (p1 + p2, before / 2): values in [0, 2], rows that sum to 2.
            self._retag(x, out, both, _SCALED, pooled=True)
        elif unary or _is_scalar(other):
            self._retag(x, out, tag, _SCALED)
        elif name in _ROLES["add"]:
            self._retag(x, out, tag, _MIXED)
        elif tag.through_linear:  # a weighting by attention maps that a linear layer mixed
            self.attention.add(tag.source)

    def _on_pointwise(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        x = _arg(args, kwargs, 0, "input")
        tag = self.tag_of(x)
        if tag is not None:
            self._retag(x, out, tag, _MIXED)

    def _retag(self, x: Tensor, out: Tensor, tag: _Tag, level: int, pooled: bool = False) -> None:
        """``out`` holds the values of ``x`` (its shape, or broadcast) at ``level`` or less exact."""
        same = out.shape == x.shape
        self.tags[out] = replace(
            tag,
            level=max(tag.level, level),
            dim=tag.dim if same else None,
            members=tag.members if same else None,
            pooled=tag.pooled or pooled,
        )
        if x in self.axes and same:
            self.axes[out] = self.axes[x]

    def _reshaped(self, x: Tensor, out: Tensor, picked: Selection) -> None:
        """``out`` holds values of the tagged ``x``: each axis the one ``picked`` maps it to, some
        axes cut to some of their slices, some indexed away. The normalised axis cut or gone
        leaves probability-like values (scaled); any other keeps the rows."""
        mapping, parts, gone = picked
        tag = self.tags[x]
        cut = tag.dim is not None and tag.dim in parts | gone
        self._carry(x, out, mapping)
        carried = self.tags[out]
        self.tags[out] = replace(carried, level=max(tag.level, _SCALED) if cut else tag.level)

    def _on_select(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """Indexing, ``index_select``, ``narrow``, ``select``, ``gather`` (see :func:`_selection`)."""
        x = _arg(args, kwargs, 0, "input")
        if not isinstance(x, Tensor) or x not in self.tags:
            return  # the common case, kept cheap: nothing to carry
        picked = _selection(name, args, kwargs, x, out)
        if picked is None:
            return
        self._reshaped(x, out, picked)

    def _on_where(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """``torch.where(c, a, b)``, ``a.where(c, b)``, ``a.masked_fill(c, v)``: rows of tensors
        tagged alike stay; a scalar, or a condition that varies along the normalised axis,
        scales; an untagged tensor mixes."""
        if name == "torch.where":
            cond, a, b = (_arg(args, kwargs, i, k) for i, k in enumerate(("condition", "input", "other")))
        else:  # a.where(condition, other), a.masked_fill(mask, value)
            names = ("input", "condition", "other") if "where" in name else ("input", "mask", "value")
            a, cond, b = (_arg(args, kwargs, i, k) for i, k in enumerate(names))
        ta, tb = self.tag_of(a), self.tag_of(b)
        if ta is None and tb is None:
            return
        x, tag, other = (a, ta, b) if ta is not None else (b, tb, a)
        both = _alike([ta, tb]) if ta is not None and tb is not None else None
        if both is None and not _is_scalar(other):
            self._retag(x, out, tag, _MIXED)
            return
        tag = both or tag
        # Rows are kept whole when the condition is constant along the normalised axis (read on x's
        # own axes: a broadcast x counts as varying).
        along = x.shape != out.shape or (isinstance(cond, Tensor) and _size_along(cond, out, tag.dim) != 1)
        varies = tag.dim is not None and along
        self._retag(x, out, tag, _SCALED if varies or both is None else tag.level)

    def _on_join(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """``torch.cat`` / ``torch.stack`` of tensors tagged alike: the rows stay, along the
        normalised axis a cat scales (rows that sum to the count); with an untagged one, dropped."""
        parts = _arg(args, kwargs, 0, "tensors")
        if not isinstance(parts, (list, tuple)) or not parts:
            return
        tags = [self.tag_of(t) for t in parts]
        if any(t is None for t in tags):
            return  # partly tagged (a softmax beside features): dropped, as before, to keep false positives out
        tag = _alike([t for t in tags if t is not None])
        axis = _arg(args, kwargs, 1, "dim")
        axis = kwargs.get("axis", 0) if axis is None else axis
        if tag is None or not isinstance(axis, int):
            return
        if name == "torch.stack":
            d = axis % out.ndim
            shift = [(i,) for i in range(d)] + [()] + [(i,) for i in range(d, out.ndim - 1)]
            dim, members = _moved_dim(shift, tag.dim), d
            self.tags[out] = replace(tag, dim=dim, members=members)
            return
        d = axis % out.ndim
        self.tags[out] = replace(tag, level=max(tag.level, _SCALED) if d == tag.dim else tag.level)

    def _on_reduce(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """A mean over a stack's axis, or over an axis that is neither the normalised one nor the
        batch, keeps the rows (pooled); a sum scales them; every other reduction drops the tag."""
        x = _arg(args, kwargs, 0, "input")
        tag = self.tag_of(x)
        if tag is None:
            return
        axes = _axes_of(_arg(args, kwargs, 1, "dim"), x.ndim)
        if axes is None:
            return
        ensemble = axes == {tag.members}
        if not ensemble and (tag.dim is None or tag.dim in axes or 0 in axes or tag.members in axes):
            return
        keep = bool(_arg(args, kwargs, 2, "keepdim"))
        mapping = [() if i in axes else (i,) for i in range(x.ndim) if keep or i not in axes]
        level = tag.level if name.endswith("mean") else max(tag.level, _SCALED)
        self._carry(x, out, mapping)
        self.tags[out] = replace(self.tags[out], level=level, pooled=True)

    def _on_resample(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """``F.interpolate`` (a convex combination of neighbours, but bicubic) over axes other
        than the normalised one keeps the rows; ``F.pad`` keeps them when it repeats rows
        (reflect, replicate, circular) or adds zero classes; otherwise both scale."""
        x = _arg(args, kwargs, 0, "input")
        tag = self.tag_of(x)
        if tag is None:
            return
        spatial = set(range(2, x.ndim))
        if name == "F.interpolate":
            kept = _arg(args, kwargs, 3, "mode") in _CONVEX and tag.dim not in spatial
        else:
            mode, value = _arg(args, kwargs, 2, "mode") or "constant", _arg(args, kwargs, 3, "value")
            padded = _padded_axes(_arg(args, kwargs, 1, "pad"), x.ndim)
            if padded is None:
                return
            zero_classes = mode == "constant" and not value and set(padded) == {tag.dim} and min(padded[tag.dim]) >= 0
            kept = not padded or zero_classes or (mode != "constant" and tag.dim not in padded)
            spatial = set(padded)
        self._carry(x, out, [(i,) for i in range(x.ndim)])
        carried = self.tags[out]
        members = None if carried.members in spatial else carried.members
        self.tags[out] = replace(carried, level=tag.level if kept else max(tag.level, _SCALED), members=members)

    # ------------------------------------------------------------------ the rules

    def _on_log(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """``log_of_softmax`` / ``log_of_sigmoid``; the log of a softmax is log-probabilities from then on."""
        tag = self.tag_of(_arg(args, kwargs, 0, "input"))
        if tag is None or not tag.probabilities():
            return
        s = tag.source
        sigmoid = s.kind == "sigmoid"
        if tag.pooled:  # the log of a mean of probabilities (an ensemble) is a logsumexp of the members' logs
            member = "F.logsigmoid(z_i)" if sigmoid else "F.log_softmax(z_i, dim)"
            fix = (
                f"average in log space: torch.logsumexp(torch.stack([{member} for each member]), 0) - math.log(M), "
                "the same values computed stably"
            )
        elif sigmoid:
            fix = "use F.logsigmoid(z) (nn.LogSigmoid), or BCEWithLogitsLoss on the logits"
        else:
            fix = "use log_softmax(z, dim) (F.log_softmax, nn.LogSoftmax): the same values, computed stably"
        if sigmoid:
            self.find(
                "log_of_sigmoid",
                s,
                f"log of sigmoid outputs ({s.by}, then {name}) underflows to -inf for logits below about -100 "
                "(float32; -17 in float16) and loses precision well before",
                fix,
            )
            return
        self.find(
            "log_of_softmax",
            s,
            f"log of softmax probabilities ({s.by}, then {name}) is -inf wherever a probability underflows to 0 "
            "(logits about 100 apart in float32, 17 in float16), and an added epsilon only hides it",
            fix,
        )
        self.tags[out] = _Tag(s, _EXACT, tag.dim, logged=True)

    def _on_layer(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """``intermediate_softmax``: a softmax's output (even scaled or mixed) as a layer's input.

        Unless the layer is linear and its output then weights values (matmul, einsum, a
        product with another tensor): talking-heads attention (CaiT) mixes the attention maps
        of its heads with a linear layer between the softmax and the product with the values.
        """
        tag = self.tag_of(_arg(args, kwargs, 0, "input"))
        if tag is None or tag.logged or tag.source.kind != "softmax" or tag.through_linear:
            return
        s = tag.source
        if name == "F.linear":
            self.tags[out] = _Tag(s, _MIXED, None, through_linear=True)
        self.intermediate[s] = self.find(
            "intermediate_softmax",
            s,
            f"softmax {s.axes} ({s.by}) feeds {self.by(name)}: as a hidden activation it makes each slice "
            "sum to 1 (mean 1/n over its n values), and its Jacobian damps the gradients of every layer below it",
            "use a pointwise activation there (ReLU, GELU); to attend, let the softmax weight values (multiply or "
            "matmul) instead of feeding a layer",
        )

    def _on_weight(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """A matmul-like product: a softmax mixed by a linear layer that weights values is attention."""
        operands = [*args, *kwargs.values()]
        for x in [*operands, *(y for o in operands if isinstance(o, (list, tuple)) for y in o)]:
            tag = self.tag_of(x)
            if tag is not None and tag.through_linear:
                self.attention.add(tag.source)

    def _on_cross_entropy(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """``double_softmax``, ``sigmoid_into_cross_entropy``, ``log_softmax_into_cross_entropy``."""
        x = _arg(args, kwargs, 0, "input")
        tag = self.tag_of(x)
        self.axis_rules(tag)
        if tag is None:
            return
        s, loss = tag.source, self.by(name)
        k = _class_count(x)
        floor = f"ln(1 + (K-1)/e) = {double_softmax_floor(k):.2f} for K = {k}"
        # Scaled probabilities (c * softmax(z)) span [0, c]: the floor holds only for the exact ones.
        effect = f"loss stuck above {floor}, damped gradients" if tag.level == _EXACT else "damped gradients"
        if tag.probabilities() and s.kind == "softmax":
            self.find(
                "double_softmax",
                s,
                f"softmax probabilities ({s.by}) go into {loss}, which applies a second softmax: the double-softmax "
                f"pitfall ({effect})",
                "for a mean of probabilities (an ensemble, test-time augmentation) output its log computed stably "
                "(torch.logsumexp of log_softmax over the averaged axis, minus the log of its size) and use NLLLoss, "
                "or train on each member's logits with cross-entropy"
                if tag.pooled
                else "remove the softmax and pass the logits to cross-entropy (softmax only for inference), or take "
                "log_softmax and use NLLLoss",
            )
        elif tag.probabilities():
            self.find(
                "sigmoid_into_cross_entropy",
                s,
                f"sigmoid outputs ({s.by}), squashed into (0, 1), go into {loss}, which applies a softmax"
                + (f": logits that span at most 1 ({effect})" if tag.level == _EXACT else f" ({effect})"),
                "pass the logits before the sigmoid to cross-entropy (one label per image), or use "
                "BCEWithLogitsLoss on them (several labels per image)",
            )
        elif tag.log_probabilities():
            self.find(
                "log_softmax_into_cross_entropy",
                s,
                f"log-probabilities ({s.by}{', then log' if tag.logged else ''}) go into {loss}, which applies "
                "log_softmax again: redundant but harmless, since log_softmax(log_softmax(z)) = log_softmax(z)",
                "pass the logits to cross-entropy, or keep the log_softmax and use NLLLoss (one pass fewer)",
            )

    def _on_nll(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """``softmax_into_nll``: probabilities where NLLLoss wants log-probabilities;
        ``logits_into_nll``: untagged values that are not log-probabilities."""
        x = _arg(args, kwargs, 0, "input")
        tag = self.tag_of(x)
        self.axis_rules(tag)
        if tag is None and isinstance(x, Tensor) and not _log_probabilities(x):
            source = _Source("logits", name, self.module, self.by(name), _site(), "")
            self.find(
                "logits_into_nll",
                source,
                f"values that are not log-probabilities (positive ones, or rows whose logsumexp is not 0) go into "
                f"{self.by(name)}: the loss is -z_y, unbounded below, and the model learns to grow one logit",
                "apply log_softmax before NLLLoss (nn.LogSoftmax(dim=1)), or pass the logits to cross-entropy",
            )
        if tag is None or not tag.probabilities():
            return
        s = tag.source
        self.find(
            "softmax_into_nll",
            s,
            f"{s.kind} probabilities ({s.by}) go into {self.by(name)}, which expects log-probabilities: the "
            "softmax-into-NLL pitfall (loss -p_y, whose gradient vanishes where the model is wrong)",
            "use F.logsigmoid instead of the sigmoid before NLLLoss, or pass the logits to cross-entropy"
            if s.kind == "sigmoid"
            else "use log_softmax instead of softmax before NLLLoss, or pass the logits to cross-entropy",
        )

    def _on_bce_with_logits(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """``sigmoid_into_bce_with_logits`` (a double sigmoid), ``softmax_into_bce_with_logits``."""
        tag = self.tag_of(_arg(args, kwargs, 0, "input"))
        self.axis_rules(tag)
        if tag is None or not tag.probabilities():
            return
        s, loss = tag.source, self.by(name)
        what = "a double sigmoid" if s.kind == "sigmoid" else "probabilities where logits belong"
        self.find(
            f"{s.kind}_into_bce_with_logits",
            s,
            f"{s.kind} outputs ({s.by}) go into {loss}, which applies its own sigmoid: {what}, so every predicted "
            "probability stays in (0.5, 0.73), the loss cannot approach 0 and the gradients are damped",
            f"remove the {s.kind} and pass the logits to BCEWithLogitsLoss"
            + (" (or keep it and use BCELoss, less stable)" if s.kind == "sigmoid" else ""),
        )

    def _on_kl_div(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """``softmax_into_kl_div``: KLDivLoss's input must be log-probabilities."""
        tag = self.tag_of(_arg(args, kwargs, 0, "input"))
        self.axis_rules(tag)
        if tag is None or not tag.probabilities():
            return
        s = tag.source
        self.find(
            "softmax_into_kl_div",
            s,
            f"{s.kind} probabilities ({s.by}) are the input of {self.by(name)}, which takes log-probabilities "
            "there (and probabilities as the target): the loss is not the KL divergence and its gradients are wrong",
            "pass log_softmax(z) as the input (the target stays probabilities, or log-probabilities with "
            "log_target=True)",
        )

    def output_rules(self, output: Tensor, loss_given: bool) -> None:
        """The axis rules on the model's output; without a loss, ``softmax_output`` when it is
        softmax probabilities."""
        tag = self.tag_of(output)
        self.axis_rules(tag)
        if not loss_given and tag is not None and tag.probabilities() and tag.source.kind == "softmax":
            s = tag.source
            self.find(
                "softmax_output",
                s,
                f"the model outputs softmax probabilities ({s.by}); nn.CrossEntropyLoss on them would be a double "
                "softmax",
                "train on logits with cross-entropy and apply the softmax only for inference, or output log_softmax "
                "for NLLLoss; lint with the loss (--loss) to check the pairing",
            )

    def eval_rules(self, trained: _Tag | None, evaluated: _Tag | None) -> None:
        """``probabilities_in_eval`` / ``log_probabilities_in_eval``: the tags of the model's
        output in training mode and in eval mode disagree about what the values are."""
        before, _ = _values(trained)
        after, s = _values(evaluated)
        if s is None or after == before or before == "probabilities":  # probabilities in training: rules above
            return
        then = f", then {evaluated.source.by}" if evaluated is not None and evaluated.renormalised else ""
        if after == "probabilities":
            self.find(
                "probabilities_in_eval",
                s,
                f"in eval mode the model outputs {s.kind} probabilities ({s.by}{then}) where in training mode it "
                f"outputs {before}: an evaluation that applies a softmax or a loss to the outputs (softmaxlab's head "
                "with model.user_head: none, a validation loss with the training criterion) normalises them twice, "
                "so its metrics are wrong",
                "return the same values in both modes (the logits; no `if not self.training` or "
                "`torch.is_grad_enabled()` softmax) and apply the softmax where probabilities are needed: "
                "softmaxlab's head applies it at evaluation",
            )
        elif before == "logits":
            self.find(
                "log_probabilities_in_eval",
                s,
                f"in eval mode the model outputs log-probabilities ({s.by}) where in training mode it outputs logits: "
                "harmless where evaluation takes a softmax (softmax(log_softmax(z)) = softmax(z)), wrong for a "
                "sigmoid, sparsemax or entmax head, which then gets log p instead of the logits",
                "return the logits in both modes and take log_softmax where log-probabilities are needed",
            )


def _values(tag: _Tag | None) -> tuple[str, _Source | None]:
    """What a model's output holds, by its tag: "probabilities" (also a normaliser of
    probabilities: a log_softmax head on them), "log-probabilities" or "logits"; and the
    normaliser that made them."""
    if tag is not None and tag.renormalised is not None:
        return "probabilities", tag.renormalised
    family = tag.family() if tag is not None else None
    return (family, tag.source) if family is not None and tag is not None else ("logits", None)


def _permutation(name: str, args: tuple, kwargs: dict, n: int) -> list[int] | None:
    """The source axis of each output axis of a permute, transpose or t; None when unreadable (named axes)."""
    try:
        if name.endswith(".t"):
            return [1, 0] if n == 2 else list(range(n))
        if name.endswith("permute"):
            dims = kwargs.get("dims", args[1:])
            if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
                dims = dims[0]
            return [int(d) % n for d in dims]
        a, b = int(_arg(args, kwargs, 1, "dim0")) % n, int(_arg(args, kwargs, 2, "dim1")) % n
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    perm = list(range(n))
    perm[a], perm[b] = b, a
    return perm


#: The modes of ``F.interpolate`` whose outputs are convex combinations of the input's values.
_CONVEX = (None, "nearest", "nearest-exact", "linear", "bilinear", "trilinear", "area")


def _size_along(x: Tensor, out: Tensor, dim: int) -> int:
    """The size of ``x``, broadcast against ``out``, along ``out``'s axis ``dim`` (1 where it broadcasts)."""
    k = dim - (out.ndim - x.ndim)
    return int(x.shape[k]) if 0 <= k < x.ndim else 1


def _axes_of(dim: Any, n: int) -> set[int] | None:
    """The axes a reduction's ``dim`` names in an ``n``-axis tensor; None for all of them or unreadable ones."""
    dims = [dim] if isinstance(dim, int) else list(dim) if isinstance(dim, (list, tuple)) else []
    if n == 0 or not dims or not all(isinstance(d, int) for d in dims):
        return None
    return {d % n for d in dims}


def _padded_axes(pad: Any, n: int) -> dict[int, tuple[int, int]] | None:
    """The axes ``F.pad(x, pad)`` pads (pairs from the last axis backwards) and by how much; None when unreadable."""
    if not isinstance(pad, (list, tuple)) or len(pad) % 2 or len(pad) // 2 > n:
        return None
    try:
        pairs = [(int(pad[2 * k]), int(pad[2 * k + 1])) for k in range(len(pad) // 2)]
    except (TypeError, ValueError):
        return None
    return {n - 1 - k: pair for k, pair in enumerate(pairs) if pair != (0, 0)}


Selection = tuple[list[tuple[int, ...]], set[int], set[int]]


def _selection(name: str, args: tuple, kwargs: dict, x: Tensor, out: Tensor) -> Selection | None:
    """What a selection of ``x`` keeps: the input axis of each output axis, the axes cut to some
    of their slices, and the axes indexed away (see :func:`_index_axes`); None when unreadable.
    ``gather`` counts as cutting every axis: its rows mix values of several input rows."""
    n = x.ndim
    if name == "Tensor.__getitem__":
        return _index_axes(tuple(x.shape), args[1] if len(args) > 1 else None)
    axis = _arg(args, kwargs, 1, "dim")
    if not isinstance(axis, int) or n == 0 or out.ndim not in (n, n - 1):
        return None
    d, same = axis % n, [(i,) for i in range(n)]
    if name.endswith("gather"):
        return same, set(range(n)), set()
    if name.endswith("index_select"):
        return same, {d}, set()
    if name.endswith("narrow"):
        return same, set() if out.shape[d] == x.shape[d] else {d}, set()
    return [(i,) for i in range(n) if i != d], set(), {d}  # select(dim, i)


def _index_axes(shape: tuple[int, ...], index: Any) -> Selection | None:
    """For ``x[index]`` with ``x`` of ``shape``: each output axis's input axis (``()`` for a
    new one), the axes a slice or an index tensor cuts, and those an integer indexes away.
    None for what it does not read: several index tensors, or one beside an integer (NumPy
    then moves the axes), a mask over several axes, an index tensor of two or more axes."""
    items = index if isinstance(index, tuple) else (index,)
    n = len(shape)
    rest = n - sum(1 for it in items if it is not None and it is not Ellipsis)
    mapping: list[tuple[int, ...]] = []
    parts: set[int] = set()
    gone: set[int] = set()
    i = tensors = 0
    for it in items:
        if it is None:
            mapping.append(())
            continue
        if it is Ellipsis:
            mapping += [(j,) for j in range(i, i + rest)]
            i += max(rest, 0)
            continue
        if i >= n or isinstance(it, bool):
            return None
        if isinstance(it, int) or (isinstance(it, Tensor) and it.ndim == 0 and it.dtype != torch.bool):
            gone.add(i)
        elif isinstance(it, slice):
            mapping.append((i,))
            if it.indices(shape[i]) != (0, shape[i], 1):
                parts.add(i)
        elif (isinstance(it, Tensor) and it.ndim == 1) or (isinstance(it, list) and _flat(it)):
            tensors += 1
            mapping.append((i,))
            parts.add(i)
        else:
            return None
        i += 1
    if rest < 0 or tensors > 1 or (tensors and gone):
        return None
    return mapping + [(j,) for j in range(i, n)], parts, gone


def _flat(items: list) -> bool:
    return all(isinstance(v, (int, bool)) for v in items)


# --------------------------------------------------------------------------- lint


def lint(
    model: nn.Module,
    loss: Callable[..., Any] | None = None,
    example: Tensor | None = None,
    *,
    target: Tensor | None = None,
    output: int | str | None = None,
) -> list[Finding]:
    """The softmax pitfalls of ``model`` paired with ``loss``, errors first (see the module
    docstring for the rules and what is deliberately not a finding).

    The model runs on ``example`` (default: 2 random (3, 32, 32) images on the model's device
    and dtype) in training mode with gradients on, as the loss sees it (nothing is
    backpropagated); then ``loss(output, target)`` runs on its output (a tuple's first tensor,
    a dict's ``logits`` or ``out``, an object's ``.logits``); then the model runs once more in
    eval mode without gradients, as evaluation runs it, and what its output holds is compared
    (``probabilities_in_eval``). Without ``target`` the fake targets are tried in turn: int64
    class indices in [0, K) (K the output's axis 1, its axis 0 when 1-D), as cross-entropy and
    NLL take them, then 0/1 floats of the output's shape, as BCE takes them; the loss's
    warnings about them are silenced. Every module's training flag, every buffer (BatchNorm
    statistics) and the random number generators are as they were after; a model with lazy
    modules not yet initialised is linted on a deep copy, so that it stays lazy.

    Args:
        model: any ``nn.Module``; functional calls inside its forward are seen too.
        loss: a loss module (``nn.CrossEntropyLoss()``) or a function ``loss(output, target)``;
            None checks the model alone (a final softmax is then a ``softmax_output`` note).
        example: the input batch (its first axis is the batch).
        target: the targets to call the loss with, instead of fake ones.
        output: which entry of a tuple or dict output the loss takes (an index or a key, as
            ``model.output`` in training); None: the first tensor, a dict's ``logits`` or ``out``.

    Raises:
        UserError: the model fails on ``example`` (in either mode), returns no tensor, or the
            loss cannot be called on the output; a lazy model cannot be copied.
    """
    loss_modules = {"loss": loss} if isinstance(loss, nn.Module) else {}
    choice, model = output, _materialisable(model)
    with _untouched(model):
        x = example if example is not None else random_batch(model)
        trace = _Trace(int(x.shape[0]) if x.ndim else 1)
        # Gradients on, as in training: a model may branch on torch.is_grad_enabled() (a softmax for
        # inference only); nothing is backpropagated.
        with torch.enable_grad(), trace.hooked({"": model, **loss_modules}), trace:
            output = _output_tensor(_call_model(model, x), choice=choice)
            trace.output_rules(output, loss is not None)
            if loss is not None:
                _call_loss(loss, output, target)
        trace.eval_rules(trace.tag_of(output), _eval_output_tag(model, x, trace.batch, choice))
    return trace.findings()


def _eval_output_tag(model: nn.Module, x: Tensor, batch: int, choice: int | str | None = None) -> _Tag | None:
    """The tag of the model's output in eval mode without gradients, as evaluation runs it
    (a model may return probabilities only there: ``x if self.training else x.softmax(-1)``).
    A trace of its own: only what the output holds is compared, no rule runs twice."""
    model.eval()  # _untouched restores every module's flag
    trace = _Trace(batch)
    with torch.no_grad(), trace.hooked({"": model}), trace:
        output = _output_tensor(_call_model(model, x, " in eval mode"), " in eval mode", choice)
    return trace.tag_of(output)


def _materialisable(model: nn.Module) -> nn.Module:
    """``model``, or a deep copy of it when it holds lazy parameters or buffers not yet
    initialised: a forward would materialise them on the user's model (and turn its
    ``nn.LazyLinear`` into an ``nn.Linear``). The copy gets fresh uninitialised ones."""
    lazy = [t for t in (*model.parameters(), *model.buffers()) if is_lazy(t)]
    if not lazy:
        return model
    # deepcopy refuses uninitialised tensors: put their copies in its memo beforehand.
    memo: dict[int, Any] = {
        id(t): UninitializedBuffer(t.requires_grad, t.device, t.dtype, getattr(t, "persistent", True))
        if isinstance(t, UninitializedBuffer)
        else UninitializedParameter(t.requires_grad, t.device, t.dtype)
        for t in lazy
    }
    try:
        return copy.deepcopy(model, memo)
    except Exception as exc:
        raise UserError(
            f"the model has lazy modules that are not initialised yet and cannot be copied to lint "
            f"({short_error(exc)}); run it once on a batch of the data before linting it"
        ) from None


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Training mode inside; every module's training flag, every buffer and the CPU and CUDA
    random states as they were after."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers() if not is_lazy(b)]
    cuda = {t.device for t in (*model.parameters(), *model.buffers()) if t.device.type == "cuda"}
    devices = [d.index if d.index is not None else torch.cuda.current_device() for d in cuda]
    with torch.random.fork_rng(devices=devices):
        model.train()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)


def random_batch(model: nn.Module, shape: Sequence[int] = (3, 32, 32), batch: int = BATCH) -> Tensor:
    """``batch`` random images of ``shape`` (standard normal) on the device and in the floating
    dtype of the model's first parameter (or buffer)."""
    first = next(iter((*model.parameters(), *model.buffers())), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    return torch.randn(batch, *shape, device=device, dtype=dtype)


def _log_probabilities(x: Tensor) -> bool:
    """Whether ``x`` (N, C, ...) holds log-probabilities over axis 1: none positive and every
    row's logsumexp 0, to float32 rounding (an integer or empty tensor is not checked)."""
    if not x.is_floating_point() or x.ndim < 2 or x.numel() == 0:
        return True
    v = x.detach().float()
    return bool((v <= 1e-4).all() and (torch.logsumexp(v, dim=1).abs() <= 1e-3).all())


def _call_model(model: nn.Module, x: Tensor, when: str = "") -> Any:
    """``model(x)``; a UserError when the model fails (``when``: " in eval mode", or "")."""
    try:
        return model(x)
    except (_LinterBug, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        fix = (
            "make its eval-mode forward take what its training-mode forward takes (evaluation runs it)"
            if when
            else "give it an input of the shape it takes (softmaxlab lint --input-shape C,H,W)"
        )
        shape = tuple(x.shape)
        raise UserError(f"the model fails{when} on a batch of shape {shape} ({short_error(exc)}); {fix}") from None


def _output_tensor(output: Any, when: str = "", choice: int | str | None = None) -> Tensor:
    """The logits in what a model returns: the tensor itself, a tuple's or list's first tensor,
    a dict's ``logits`` or ``out`` (else its first tensor), an object's ``.logits``; with
    ``choice``, the entry it names (:func:`~softmaxlab.models.external.select_output`)."""
    if isinstance(output, Tensor):
        return output
    if choice is not None:
        return select_output(output, choice, model=f"the model{when}", option="--output")
    if isinstance(output, dict):
        keyed = [output[k] for k in ("logits", "out") if k in output]
        candidates: list[Any] = [*keyed, *output.values()]
    elif isinstance(output, (tuple, list)):
        candidates = list(output)
    else:
        candidates = [getattr(output, "logits", None)]
    for c in candidates:
        if isinstance(c, Tensor):
            return c
    raise UserError(
        f"the model returned a {type(output).__name__} without a tensor{when}; return the logits (or a tuple or dict "
        "holding them)"
    )


def _call_loss(loss: Callable[..., Any], output: Tensor, target: Tensor | None) -> None:
    """``loss(output, target)``, with the fake targets of :func:`lint` in turn when none is given."""
    targets = [target] if target is not None else _fake_targets(output)
    failures: list[BaseException] = []
    for t in targets:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # about the fake targets (a size that broadcasts), not the model
                loss(output, t)
            return
        except (_LinterBug, torch.OutOfMemoryError):
            raise
        except Exception as exc:
            failures.append(exc)
    tried = "the given targets" if target is not None else "int64 class indices or 0/1 float targets"
    raise UserError(
        f"the loss cannot be called as loss(output, target) on the model's {tuple(output.shape)} output with {tried} "
        f"({short_error(failures[0])}); pass a loss that takes logits and class indices (or float targets of the "
        "output's shape)"
    )


def _fake_targets(output: Tensor) -> list[Tensor]:
    """Class indices in [0, K) (shape (N, d1, ...) for an (N, K, d1, ...) output), then 0/1 floats like the output."""
    if output.ndim == 0:
        return [torch.zeros((), device=output.device, dtype=output.dtype)]
    k = _class_count(output)
    shape = (*output.shape[:1], *output.shape[2:]) if output.ndim >= 2 else ()
    classes = torch.randint(0, k, shape, device=output.device)
    labels = torch.randint(0, 2, output.shape, device=output.device).to(output.dtype)
    return [classes, labels]


#: The warning each finding kind is issued as by :func:`warn_findings` (fit's first-batch check).
WARNINGS: dict[str, type[SoftmaxPitfallWarning]] = {
    "double_softmax": DoubleSoftmaxWarning,
    "probabilities_in_eval": DoubleSoftmaxWarning,  # evaluation applies a second softmax
    "softmax_into_nll": SoftmaxNLLWarning,
}


def warn_findings(findings: Sequence[Finding], stacklevel: int = 2) -> None:
    """Issue each finding as one warning: :class:`~softmaxlab.heads.DoubleSoftmaxWarning` for
    ``double_softmax`` and ``probabilities_in_eval`` (evaluation's second softmax),
    :class:`~softmaxlab.heads.SoftmaxNLLWarning` for ``softmax_into_nll``,
    :class:`~softmaxlab.heads.check.SoftmaxPitfallWarning` for the other kinds."""
    for finding in findings:
        warnings.warn(str(finding), WARNINGS.get(finding.kind, SoftmaxPitfallWarning), stacklevel=stacklevel + 1)


__all__ = [
    "BATCH",
    "KINDS",
    "SEVERITIES",
    "WARNINGS",
    "Finding",
    "has_errors",
    "lint",
    "random_batch",
    "regroup",
    "short_error",
    "warn_findings",
]
