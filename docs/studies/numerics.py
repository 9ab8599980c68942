"""Where ``log(softmax(z))`` fails and ``log_softmax(z)`` does not: measured, not asserted.

Two logits z = (0, -s): the log-probability of the second class is
-s - log(1 + e^-s) exactly. For gaps s on a fine grid, in float32, bfloat16 and float16
(on the CPU), this finds the first s at which

* ``torch.log(torch.softmax(z))`` returns -inf (the softmax underflowed to 0), and at which
  its gradient with respect to z stops being finite (the log's backward, 1/p, overflows);
* its value is off by more than 1 % of the float64 reference (before -inf: precision lost
  in the subnormal range);
* ``torch.log_softmax(z)`` does either (it never should: it computes z - logsumexp(z));
* ``exp(z) / sum exp(z)`` without the max shift (the ``naive_softmax`` head) returns NaN for
  the logits (s, 0): exp overflows and inf / inf is NaN.

Each is a pure function of the dtype's range, so it is computed here when the docs are built.
"""

from __future__ import annotations

import math

import torch

#: The gaps scanned: 0.01 steps from 0.01 to 200 (float32's smallest subnormal is e^-103.3).
GAPS = torch.arange(1, 20001, dtype=torch.float64) / 100
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _first(mask: torch.Tensor) -> float | None:
    hits = mask.nonzero()
    return float(GAPS[hits[0, 0]]) if len(hits) else None


def _log_prob_and_grad(fn, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of the second class and d log p / d z_2 for every gap, in ``dtype``."""
    z = torch.stack([torch.zeros_like(GAPS), -GAPS], dim=1).to(dtype).requires_grad_(True)
    y = fn(z)[:, 1]
    y.sum().backward()
    return y.detach().double(), z.grad[:, 1].double()


def failure_points(dtype: torch.dtype) -> dict[str, float | None]:
    """The first gap s of each failure of the module docstring (None: not within s <= 200)."""
    reference = -GAPS - torch.log1p(torch.exp(-GAPS))
    out: dict[str, float | None] = {}
    for name, fn in (
        ("log_softmax_of", lambda z: torch.log(torch.softmax(z, dim=1))),
        ("log_softmax", lambda z: torch.log_softmax(z, dim=1)),
    ):
        value, grad = _log_prob_and_grad(fn, dtype)
        out[f"{name}_inf"] = _first(~torch.isfinite(value))
        out[f"{name}_grad"] = _first(~torch.isfinite(grad))
        out[f"{name}_off"] = _first(~torch.isfinite(value) | ((value - reference).abs() > 0.01 * reference.abs()))
    z = torch.stack([GAPS, torch.zeros_like(GAPS)], dim=1).to(dtype)
    e = z.exp()
    out["naive_nan"] = _first(torch.isnan((e / e.sum(dim=1, keepdim=True)).double()).any(dim=1))
    return out


def numerics_table() -> str:
    """The Markdown table of :func:`failure_points` for each dtype."""

    def cell(v: float | None) -> str:
        return "never (s <= 200)" if v is None else f"s = {v:g}"

    rows = {name: failure_points(dtype) for name, dtype in DTYPES.items()}
    lines = [
        "| dtype (first logit gap s at which ...) | log(softmax(z)) = -inf | its gradient non-finite "
        "| it is off by > 1 % | log_softmax(z) fails | exp(z)/sum exp(z) is NaN (no max shift) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        stable = [r["log_softmax_inf"], r["log_softmax_grad"], r["log_softmax_off"]]
        lines.append(
            f"| {name} | {cell(r['log_softmax_of_inf'])} | {cell(r['log_softmax_of_grad'])} | "
            f"{cell(r['log_softmax_of_off'])} | {cell(min((v for v in stable if v is not None), default=None))} | "
            f"{cell(r['naive_nan'])} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(numerics_table())
    tiny = float(torch.finfo(torch.float32).smallest_normal) * 2**-23
    print(f"(float32's smallest subnormal is e^{math.log(tiny):.1f})")
