"""Two-level hierarchical softmax over a class tree of groups (coarse classes) and classes.

Every fine class k belongs to one group g(k). With group logits c = V f + d (B, G) and class
logits z = W f + b (B, K),

    p(k | x) = p(g(k) | x) * p(k | g(k), x)
             = softmax(c)_{g(k)} * exp(z_k) / sum_{j : g(j) = g(k)} exp(z_j)

The loss -log p(y | x) needs only the G group logits and the logits of the classes in the
target's group: O(G + M) dot products per image instead of K (M = the largest group), about
2 sqrt(K) for balanced groups. The groups are laid out as a padded (G, M) table of class
indices, so both the loss and the full distribution are a few gathers and a masked
log-sum-exp, with no Python loop over samples or groups.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softmaxlab.errors import UserError
from softmaxlab.heads.base import HEADS, Head, Reduce, at_least_float32
from softmaxlab.registry import Options


def balanced_groups(num_classes: int, num_groups: int | None = None) -> Tensor:
    """(K,) group of each class: contiguous runs of sizes differing by at most 1.

    ``num_groups`` defaults to round(sqrt(K)).

    >>> balanced_groups(10).tolist()
    [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    """
    g = num_groups or max(1, round(math.sqrt(num_classes)))
    return torch.arange(num_classes) * g // num_classes


def group_table(group_of: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The padded layout of the groups of ``group_of`` (K,) with ids 0..G-1.

    Returns ``members`` (G, M) long, the classes of each group padded with class 0,
    ``valid`` (G, M) bool, False on the padding, and ``position`` (K,) long, the column of
    each class in its group's row.

    >>> members, valid, position = group_table(torch.tensor([1, 0, 1, 1]))
    >>> members.tolist(), valid.tolist(), position.tolist()
    ([[1, 0, 0], [0, 2, 3]], [[True, False, False], [True, True, True]], [0, 0, 1, 2])
    """
    k = group_of.shape[0]
    num_groups = int(group_of.max()) + 1
    counts = torch.bincount(group_of, minlength=num_groups)  # (G,)
    order = torch.argsort(group_of, stable=True)  # classes sorted by group
    starts = counts.cumsum(0) - counts  # (G,) first sorted index of each group
    position = torch.empty(k, dtype=torch.long)
    position[order] = torch.arange(k) - starts[group_of[order]]
    members = torch.zeros(num_groups, int(counts.max()), dtype=torch.long)
    valid = torch.zeros(num_groups, int(counts.max()), dtype=torch.bool)
    members[group_of, position] = torch.arange(k)
    valid[group_of, position] = True
    return members, valid, position


class _GroupLogits(torch.autograd.Function):
    """z[b, m] = W[rows[b, m]] . f[b] without materialising the (B, M, F) gathered weights on the CPU.

    The straightforward ``torch.bmm(W[rows], f)`` copies B*M rows of W (166 MB for
    K = 100,000, B = 256, F = 512) and its backward writes an equally large tensor of outer
    products before scattering it into W's gradient; on a CPU those fresh allocations and
    copies cost more than the arithmetic. Here the CPU forward is a sampled dense-dense
    product (``torch.sparse.sampled_addmm`` on the CSR pattern ``rows``), and the backward
    is dW = A f with A the (K, B) sparse matrix of the output gradients (``torch.sparse.mm``)
    and df = sum_m g[b, m] W[rows[b, m]] (``F.embedding_bag``). On other devices, where the
    copies are cheap and sparse kernels may ask the host for sizes, it gathers (no sync).
    """

    @staticmethod
    def forward(ctx: Any, f: Tensor, weight: Tensor, rows: Tensor) -> Tensor:
        b, m = rows.shape  # f (B, F), weight (K, F), rows (B, M)
        ctx.save_for_backward(f, weight, rows)
        ctx.sparse = f.device.type == "cpu" and weight.dtype in (torch.float32, torch.float64)
        if ctx.sparse:
            crow = torch.arange(0, b * m + 1, m, device=f.device)
            with warnings.catch_warnings():  # "sparse CSR support is in beta": these two ops are tested
                warnings.simplefilter("ignore", UserWarning)
                pattern = torch.sparse_csr_tensor(
                    crow, rows.reshape(-1), f.new_zeros(b * m), (b, len(weight)), check_invariants=False
                )
            return torch.sparse.sampled_addmm(pattern, f, weight.t()).values().view(b, m)
        return torch.bmm(weight.index_select(0, rows.reshape(-1)).view(b, m, -1), f.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        f, weight, rows = ctx.saved_tensors
        b, m = rows.shape
        grad_f = grad_w = None
        if ctx.sparse:
            if ctx.needs_input_grad[0]:
                grad_f = F.embedding_bag(rows, weight, mode="sum", per_sample_weights=grad)  # (B, F)
            if ctx.needs_input_grad[1]:
                cols = torch.arange(b, device=f.device).repeat_interleave(m)
                index = torch.stack([rows.reshape(-1), cols])
                a = torch.sparse_coo_tensor(index, grad.reshape(-1), (len(weight), b), check_invariants=False)
                grad_w = torch.sparse.mm(a, f)  # (K, F), padding entries carry zero gradient
            return grad_f, grad_w, None
        w = weight.index_select(0, rows.reshape(-1)).view(b, m, -1)  # (B, M, F)
        if ctx.needs_input_grad[0]:
            grad_f = torch.bmm(grad.unsqueeze(1), w).squeeze(1)
        if ctx.needs_input_grad[1]:
            outer = (grad.unsqueeze(-1) * f.unsqueeze(1)).reshape(b * m, -1)  # (B*M, F)
            grad_w = torch.zeros_like(weight).index_add_(0, rows.reshape(-1), outer)
        return grad_f, grad_w, None


def group_logits(f: Tensor, weight: Tensor, bias: Tensor, rows: Tensor) -> Tensor:
    """(B, M) logits z[b, m] = W[rows[b, m]] . f[b] + bias[rows[b, m]] of the classes in ``rows``.

    ``f`` (B, F) is cast to the weight's dtype (the head's layer stays in float32 under AMP).
    """
    flat = rows.reshape(-1)
    z = _GroupLogits.apply(f.to(weight.dtype), weight, rows)
    return z + bias.index_select(0, flat).view(rows.shape)


def hierarchical_log_probs(
    coarse_logits: Tensor, logits: Tensor, group_of: Tensor, members: Tensor, valid: Tensor
) -> Tensor:
    """(B, K) log p(k) = log_softmax(c)_{g(k)} + z_k - logsumexp_{j in g(k)} z_j.

    ``coarse_logits`` (B, G), ``logits`` (B, K); the group layout from :func:`group_table`.
    """
    log_pg = F.log_softmax(coarse_logits, dim=-1)  # (B, G)
    in_group = logits[:, members].masked_fill(~valid, float("-inf"))  # (B, G, M)
    lse = torch.logsumexp(in_group, dim=-1)  # (B, G)
    return log_pg[:, group_of] + logits - lse[:, group_of]


@HEADS.register("hierarchical")
class HierarchicalSoftmaxHead(Head):
    """Two-level softmax p(class) = p(group) p(class | group); groups = coarse labels or ~sqrt(K).

    The groups are the dataset's coarse classes when it has them (``shapes``: the shape;
    CIFAR-100: the 20 superclasses), otherwise a balanced split of the classes into about
    sqrt(K) contiguous groups. Loss = -log p(y) = -log p(g(y)) - log p(y | g(y)), which
    evaluates only the group logits and the target group's class logits.

    The scores are the features: the loss picks the rows of the output layer it needs.
    :meth:`coarse_accuracy` measures the group prediction arg max_g p(g); in evaluation mode
    the loss also tallies it on the device, and ``fit`` logs the tally of the validation
    pass each epoch as ``val_coarse_acc``.
    """

    maps_logits = False  # its output layers are its own: it cannot take a model's logits
    temperature_note = (
        "the two-level distribution is no single softmax, so T rescales its log-probabilities: "
        "p_T = softmax(log p / T), proportional to p^(1/T), which keeps every prediction"
    )

    def __init__(
        self, in_features: int, num_classes: int, options: Options | None = None, coarse_of: Tensor | None = None
    ) -> None:
        super().__init__(in_features, num_classes, options, coarse_of)
        if coarse_of is not None:
            coarse_of = torch.as_tensor(coarse_of, dtype=torch.long)
            if coarse_of.shape != (num_classes,):
                raise ValueError(f"coarse_of must have shape ({num_classes},), got {tuple(coarse_of.shape)}")
            group_of = torch.unique(coarse_of, return_inverse=True)[1]  # ids 0..G-1, order kept
        else:
            group_of = balanced_groups(num_classes)
        members, valid, position = group_table(group_of)
        if members.shape[0] < 2 or members.shape[1] < 2:
            # One group, or one class per group: a single softmax in disguise, not two levels.
            raise UserError(
                f"head.name=hierarchical needs classes that form at least 2 groups, one of them with 2 or more "
                f"classes; these {num_classes} classes form {members.shape[0]} group(s) of at most "
                f"{members.shape[1]}: use head.name=softmax, or data with more classes"
            )
        # Buffers follow the head to its device and go into the saved weights, so loading
        # weights into a head built with another hierarchy fails loudly (shape mismatch).
        self.register_buffer("group_of", group_of)  # (K,)
        self.register_buffer("members", members)  # (G, M)
        self.register_buffer("valid", valid)  # (G, M)
        self.register_buffer("position", position)  # (K,)
        self.num_groups = members.shape[0]
        self.coarse = nn.Linear(in_features, self.num_groups)
        self._coarse_tally: Tensor | None = None  # (2,) correct, seen, in evaluation mode

    def forward(self, features: Tensor) -> Tensor:
        """The (B, F) features themselves; the layers are applied in :meth:`loss` / :meth:`log_probs`."""
        return features

    def loss(self, scores: Tensor, target: Tensor) -> Tensor:
        """-mean log p(y): group log-softmax plus a log-softmax over the target's group only."""
        f = scores
        log_pg = F.log_softmax(at_least_float32(self.coarse(f)), dim=-1)  # (B, G)
        group = self.group_of[target]  # (B,)
        rows = self.members[group]  # (B, M) classes of each sample's target group
        z = group_logits(f, self.fc.weight, self.fc.bias, rows)  # (B, M)
        z = at_least_float32(z).masked_fill(~self.valid[group], float("-inf"))
        z_y = z.gather(1, self.position[target, None]).squeeze(1)  # (B,)
        log_p = log_pg.gather(1, group[:, None]).squeeze(1) + z_y - torch.logsumexp(z, dim=-1)
        if not self.training:
            self._tally(log_pg, group)
        return -log_p.mean()

    def log_probs(self, scores: Tensor) -> Tensor:
        """(B, K) log p(k) for every class (see :func:`hierarchical_log_probs`)."""
        c = at_least_float32(self.coarse(scores))
        z = at_least_float32(self.fc(scores))
        return hierarchical_log_probs(c, z, self.group_of, self.members, self.valid)

    def coarse_log_probs(self, scores: Tensor) -> Tensor:
        """(B, G) log p(group)."""
        return F.log_softmax(at_least_float32(self.coarse(scores)), dim=-1)

    def coarse_accuracy(self, scores: Tensor, target: Tensor) -> Tensor:
        """Fraction of samples whose group arg max_g p(g) is the target's group (0-d tensor)."""
        hit = self.coarse_log_probs(scores).argmax(dim=-1) == self.group_of[target]
        return hit.float().mean()

    def _tally(self, log_pg: Tensor, group: Tensor) -> None:
        hits = (log_pg.argmax(dim=-1) == group).sum()
        batch = torch.stack([hits, torch.full_like(hits, group.shape[0])])  # no host-device copy
        self._coarse_tally = batch if self._coarse_tally is None else self._coarse_tally + batch

    def train(self, mode: bool = True) -> HierarchicalSoftmaxHead:
        """Entering training mode drops the evaluation tally (so each epoch's starts afresh)."""
        if mode:
            self._coarse_tally = None
        return super().train(mode)

    def epoch_record(self, reduce: Reduce | None = None) -> dict[str, Any]:
        """Coarse accuracy over the samples evaluated since training last ran (one host read).

        With several processes each tallies its shard of the validation split: the (correct,
        seen) sums go through ``reduce`` (a sum over the processes) before the division.
        Every process must call it, also one whose shard was empty.
        """
        tally = self._coarse_tally
        self._coarse_tally = None
        if reduce is not None:
            local = tally if tally is not None else self.coarse.weight.new_zeros(2, dtype=torch.long)
            tally = reduce(local)
        if tally is None:
            return {}
        correct, seen = tally.tolist()
        return {"val_coarse_acc": correct / max(seen, 1)} if seen else {}
