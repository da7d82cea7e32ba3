"""Float comparisons with tolerances scaled to the values' dtype and magnitude, so that CI never flakes on rounding.

Two computations of the same floats in another order (another kernel, batch size, memory layout, BatchNorm folded
or not, the datasets cache's round trip) differ by rounding: some units of the dtype's resolution (``eps``: 1.19e-7
for float32), relative to the *magnitude of the values involved* — also for elements near zero, which come out of
sums of larger terms. A fixed ``atol=1e-6`` is 8 float32 steps at magnitude 1 and fails at magnitude 10. Here:

    rtol = ulps * eps(dtype),  atol = ulps * eps(dtype) * scale

with ``scale`` the largest magnitude of the compared tensors (or the operands' magnitude, given, where the expected
value is a cancellation to ~0). ``ulps`` says how much rounding a comparison allows; a wrong result is off by far
more. Bit-exact comparisons stay ``torch.equal``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SAME_OPS", "OTHER_KERNELS", "rounding", "tolerances", "assert_close", "max_error_ulps"]

SAME_OPS = 16
"""The same operations over the same values, regrouped (a sum split differently, a float32 round trip, a
normalisation computed in float32 against float64). Measured: at most 1.3."""
OTHER_KERNELS = 256
"""The same network computed by other kernels (BN folded into the conv, channels_last, another batch size, a
converted checkpoint against its source, a few training steps taken on two such paths). Measured on this suite's
comparisons: at most 12 (the fast path against the plain one: 6; cached features against direct ones: 4); 50 where a
trainable BatchNorm normalises by a batch of 4's statistics (given 4x)."""


def _eps(*tensors: torch.Tensor) -> float:
    dtypes = [t.dtype for t in tensors if t.is_floating_point()]
    return max(torch.finfo(d).eps for d in dtypes) if dtypes else torch.finfo(torch.float32).eps


def _magnitude(*tensors: torch.Tensor) -> float:
    return max((float(t.detach().abs().max()) for t in tensors if t.numel()), default=0.0)


def rounding(*values: Any, ulps: float = OTHER_KERNELS, scale: float | None = None) -> float:
    """An absolute bound for rounding differences among `values`: ``ulps * eps(dtype) * scale``."""
    tensors = [torch.as_tensor(v) for v in values]
    return ulps * _eps(*tensors) * (_magnitude(*tensors) if scale is None else float(scale))


def tolerances(actual: Any, expected: Any, *, ulps: float = OTHER_KERNELS, scale: float | None = None) -> dict:
    """``{"rtol", "atol"}`` for comparing `actual` with `expected` (see the module docstring)."""
    a, e = torch.as_tensor(actual), torch.as_tensor(expected)
    return {"rtol": ulps * _eps(a, e), "atol": rounding(a, e, ulps=ulps, scale=scale)}


def assert_close(actual: Any, expected: Any, *, ulps: float = OTHER_KERNELS, scale: float | None = None,
                 msg: Any = None) -> None:
    """`torch.testing.assert_close` with `tolerances` (dtypes, shapes and devices must match, as there)."""
    torch.testing.assert_close(actual, expected, msg=msg, **tolerances(actual, expected, ulps=ulps, scale=scale))


def max_error_ulps(actual: Any, expected: Any, *, scale: float | None = None) -> float:
    """The largest difference, in units of ``eps(dtype) * scale`` (how far from bit-equal a comparison is)."""
    a, e = torch.as_tensor(actual), torch.as_tensor(expected)
    magnitude = _magnitude(a, e) if scale is None else float(scale)
    diff = float((a.double() - e.double()).abs().max()) if a.numel() else 0.0
    return diff / (_eps(a, e) * magnitude) if magnitude else (0.0 if diff == 0 else float("inf"))
