"""The softmax linter: softmax pitfalls in any ``nn.Module`` with its loss, found by running it once.

:func:`lint` runs the model on a small batch (2 random images unless given one), then its
loss on fake targets, and watches every call into torch: a
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
* arithmetic with a scalar (``p * 2``, ``p + 1e-8``, ``1 - p``, ``clamp``) makes it *scaled*;
* pointwise activations (ReLU, GELU, ...) and adding another tensor (a residual) make it
  *mixed*: no longer probabilities, but still a softmax's output flowing on;
* every other op drops it: multiplying or dividing by another tensor (attention weighting
  values, gating, renormalising), ``matmul`` / ``bmm`` / ``einsum`` /
  ``scaled_dot_product_attention`` / ``nn.MultiheadAttention``, indexing, ``cat``, reductions.

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
* ``log_of_softmax`` (warning): ``torch.log`` / ``Tensor.log`` (log2, log10) of softmax
  probabilities, exact or scaled (``log(p + eps)``, ``log(p.clamp(min=eps))``).
* ``log_of_sigmoid`` (warning): the log of sigmoid outputs (``F.logsigmoid`` is stable).
* ``intermediate_softmax`` (warning): a softmax whose output (exact, scaled or mixed)
  feeds a layer: convolution, linear, batch / layer / group / instance norm, pooling; the
  message names the axes ("over height and width of a (B, C, H, W) map", followed through
  the flatten / view / permute that led to the softmax) and the layer. Not when the layer
  is linear and its output then weights values: talking-heads attention (CaiT) mixes the
  heads' attention maps with a linear layer before the product with the values.
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
A finding's ``source`` is the ``file.py:line`` that called the op, when Python code outside
torch did. The cost is the model's forward plus a few microseconds per torch call
(``benchmarks/bench_lint.py``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from softmaxlab.errors import UserError, short_error
from softmaxlab.heads.check import DoubleSoftmaxWarning, SoftmaxNLLWarning, SoftmaxPitfallWarning
from softmaxlab.heads.pitfalls import double_softmax_floor

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
    "log_of_softmax": "warning",
    "log_of_sigmoid": "warning",
    "intermediate_softmax": "warning",
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

    def probabilities(self) -> bool:
        """Softmax or sigmoid values, at most scaled: what a loss on logits or log-probabilities must not get."""
        return self.level <= _SCALED and not self.logged and self.source.kind in ("softmax", "sigmoid")

    def log_probabilities(self) -> bool:
        return self.level == _EXACT and (self.logged or self.source.kind == "log_softmax")


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
    """``file.py:line`` of the innermost Python frame outside torch and this module: the line
    of the model's (or the loss's) code that made the op; "" when torch's own modules made it
    (an ``nn.Softmax`` in an ``nn.Sequential``)."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_filename == __file__ and code.co_name in _CALLERS:
            return ""  # reached the linter's own call of the model or the loss
        if not code.co_filename.startswith(_TORCH_DIR) and code.co_filename != __file__:
            return f"{os.path.basename(code.co_filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


_CALLERS = ("_call_model", "_call_loss")


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
        self.tags[out] = _Tag(source, _EXACT, axis)

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
            dim = _moved_dim(mapping, tag.dim) if mapping is not None else None
            self.tags[out] = _Tag(tag.source, tag.level, dim, tag.logged, tag.through_linear)
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
        if unary or _is_scalar(other):
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

    def _retag(self, x: Tensor, out: Tensor, tag: _Tag, level: int) -> None:
        dim = tag.dim if out.shape == x.shape else None
        self.tags[out] = _Tag(tag.source, max(tag.level, level), dim, tag.logged, tag.through_linear)
        if x in self.axes and out.shape == x.shape:
            self.axes[out] = self.axes[x]

    # ------------------------------------------------------------------ the rules

    def _on_log(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """``log_of_softmax`` / ``log_of_sigmoid``; the log of a softmax is log-probabilities from then on."""
        tag = self.tag_of(_arg(args, kwargs, 0, "input"))
        if tag is None or not tag.probabilities():
            return
        s = tag.source
        if s.kind == "sigmoid":
            self.find(
                "log_of_sigmoid",
                s,
                f"log of sigmoid outputs ({s.by}, then {name}) underflows to -inf for logits below about -100 "
                "(float32; -17 in float16) and loses precision well before",
                "use F.logsigmoid(z) (nn.LogSigmoid), or BCEWithLogitsLoss on the logits",
            )
            return
        self.find(
            "log_of_softmax",
            s,
            f"log of softmax probabilities ({s.by}, then {name}) is -inf wherever a probability underflows to 0 "
            "(logits about 100 apart in float32, 17 in float16), and an added epsilon only hides it",
            "use log_softmax(z, dim) (F.log_softmax, nn.LogSoftmax): the same values, computed stably",
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
                "remove the softmax and pass the logits to cross-entropy (softmax only for inference), or take "
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


# --------------------------------------------------------------------------- lint


def lint(
    model: nn.Module,
    loss: Callable[..., Any] | None = None,
    example: Tensor | None = None,
    *,
    target: Tensor | None = None,
) -> list[Finding]:
    """The softmax pitfalls of ``model`` paired with ``loss``, errors first (see the module
    docstring for the rules and what is deliberately not a finding).

    The model runs once on ``example`` (default: 2 random (3, 32, 32) images on the model's
    device and dtype), in training mode, as the loss sees it, without gradients; then
    ``loss(output, target)`` runs on its output (a tuple's first tensor, a dict's ``logits``
    or ``out``, an object's ``.logits``). Without ``target`` the fake targets are tried in
    turn: int64 class indices in [0, K) (K the output's axis 1, its axis 0 when 1-D), as
    cross-entropy and NLL take them, then 0/1 floats of the output's shape, as BCE takes
    them; the loss's warnings about them are silenced. Every module's training flag, every
    buffer (BatchNorm statistics) and the random number generators are as they were after.

    Args:
        model: any ``nn.Module``; functional calls inside its forward are seen too.
        loss: a loss module (``nn.CrossEntropyLoss()``) or a function ``loss(output, target)``;
            None checks the model alone (a final softmax is then a ``softmax_output`` note).
        example: the input batch (its first axis is the batch).
        target: the targets to call the loss with, instead of fake ones.

    Raises:
        UserError: the model fails on ``example``, returns no tensor, or the loss cannot be
            called on the output.
    """
    loss_modules = {"loss": loss} if isinstance(loss, nn.Module) else {}
    with _untouched(model):
        x = example if example is not None else random_batch(model)
        trace = _Trace(int(x.shape[0]) if x.ndim else 1)
        # Gradients on, as in training: a model may branch on torch.is_grad_enabled() (a softmax for
        # inference only); nothing is backpropagated.
        with torch.enable_grad(), trace.hooked({"": model, **loss_modules}), trace:
            output = _output_tensor(_call_model(model, x))
            trace.output_rules(output, loss is not None)
            if loss is not None:
                _call_loss(loss, output, target)
    return trace.findings()


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Training mode inside; every module's training flag, every buffer and the CPU and CUDA
    random states as they were after."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
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


def _call_model(model: nn.Module, x: Tensor) -> Any:
    try:
        return model(x)
    except (_LinterBug, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        raise UserError(
            f"the model fails on a batch of shape {tuple(x.shape)} ({short_error(exc)}); give it an input of the "
            "shape it takes (softmaxlab lint --input-shape C,H,W)"
        ) from None


def _output_tensor(output: Any) -> Tensor:
    """The logits in what a model returns: the tensor itself, a tuple's or list's first tensor,
    a dict's ``logits`` or ``out`` (else its first tensor), an object's ``.logits``."""
    if isinstance(output, Tensor):
        return output
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
        f"the model returned a {type(output).__name__} without a tensor; return the logits (or a tuple or dict "
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
    "softmax_into_nll": SoftmaxNLLWarning,
}


def warn_findings(findings: Sequence[Finding], stacklevel: int = 2) -> None:
    """Issue each finding as one warning: :class:`~softmaxlab.heads.DoubleSoftmaxWarning` for
    ``double_softmax``, :class:`~softmaxlab.heads.SoftmaxNLLWarning` for ``softmax_into_nll``,
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
