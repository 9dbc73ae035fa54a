"""What keeps data a device may legally send from stopping the optimizer.

A measurement is any finite float (``campaigns.events.Measurement``): 1e200 and -1e300 are
legal, and so are constant, repeated and heavy-tailed values. Two defences:

- **Safety clipping** (``safety_cutoffs``): before a model sees a metric, values beyond
  ``median ± OUTLIER_SPREAD x scale`` (``scale``: the interquartile range, or ``max(|median|,
  1)`` when that is 0) are clipped to that range, itself kept within ``±MAX_MAGNITUDE``.
  Ordinary data never reaches it (Ax's winsorization clips the bad tail at 1.5 IQR; this
  range is 100 IQR wide on each side), but a 1e200 reading would otherwise overflow the
  standardization (its square is not a float) and leave the model nothing but NaN. A bound
  of an outcome constraint or threshold stays inside the range, so feasibility is unchanged.
- **A fallback** (``numerical_failure``): a model fit or acquisition that still fails with a
  *numerical* error (an overflow, a matrix that is not positive definite, NaN probabilities)
  is named in one line, and ``AxOptimizer`` suggests points of its Sobol sequence instead,
  with the reason in the trial's generator. Other exceptions (``TypeError``, ``KeyError``:
  bugs) are not classified: they stop the call as before.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import numpy as np
import torch
from botorch.exceptions.errors import ModelFittingError
from gpytorch.utils.errors import NanError, NotPSDError

from campaigns.spec import CampaignSpec

__all__ = [
    "MAX_MAGNITUDE",
    "NUMERICAL_ERRORS",
    "OUTLIER_SPREAD",
    "ModelFailure",
    "metric_bounds",
    "numerical_failure",
    "safety_cutoffs",
]

#: How many scales (interquartile ranges) from the median a value may lie before it is clipped.
OUTLIER_SPREAD = 100.0
#: No value reaches a model beyond this magnitude: squares and sums of such values stay finite.
MAX_MAGNITUDE = 1e100

#: Exceptions that are numerical failures whatever their message.
NUMERICAL_ERRORS: tuple[type[BaseException], ...] = (
    OverflowError,
    FloatingPointError,
    ZeroDivisionError,
    np.linalg.LinAlgError,
    torch.linalg.LinAlgError,
    ModelFittingError,
    NotPSDError,
    NanError,
)

# RuntimeError or ValueError messages of torch, NumPy, SciPy and BoTorch numerics.
_NUMERIC_MESSAGE = re.compile(
    r"\b(inf|nan|infs|nans)\b|`inf`|`nan`|positive[- ]definite|singular|cholesky|overflow|"
    r"not finite|non-finite|math range|ill-conditioned",
    re.IGNORECASE,
)


class ModelFailure(Exception):
    """A model fit or acquisition failed numerically; ``AxOptimizer`` falls back and never lets
    it out (``reason``: one line naming the error)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def numerical_failure(exc: BaseException) -> str | None:
    """One line naming ``exc`` if it (or an exception it was raised from) is a numerical
    failure of a model fit or an acquisition, else None.

    Args:
        exc: What a fit or a generation raised.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        numeric = isinstance(current, NUMERICAL_ERRORS) or (
            isinstance(current, RuntimeError | ValueError) and _NUMERIC_MESSAGE.search(str(current)) is not None
        )
        if numeric:
            detail = " ".join(str(current).split()) or type(current).__name__
            line = f"{type(current).__name__}: {detail}"
            return line if len(line) <= 120 else line[:117] + "..."
        current = current.__cause__ or current.__context__
    return None


def safety_cutoffs(values: Iterable[float], keep: Iterable[float] = ()) -> tuple[float, float]:
    """The range ``[low, high]`` a metric's values are clipped to before a model sees them.

    Args:
        values: The metric's measured values (finite floats).
        keep: Values the range must contain (bounds of the metric's outcome constraints or
            objective threshold).
    """
    y = np.asarray(list(values), dtype=float)
    if y.size == 0:
        return -MAX_MAGNITUDE, MAX_MAGNITUDE
    # Quantiles in a scaled copy: no intermediate result overflows, whatever the values.
    unit = float(np.max(np.abs(y))) or 1.0
    q1, median, q3 = (float(q) * unit for q in np.percentile(y / unit, [25, 50, 75]))
    scale = q3 - q1
    if not scale > 0:
        scale = max(abs(median), 1.0)
    spread = min(OUTLIER_SPREAD * scale, MAX_MAGNITUDE)
    centre = min(max(median, -MAX_MAGNITUDE), MAX_MAGNITUDE)
    low = max(centre - spread, -MAX_MAGNITUDE)
    high = min(centre + spread, MAX_MAGNITUDE)
    for bound in keep:
        if math.isfinite(bound):
            bound = min(max(bound, -MAX_MAGNITUDE), MAX_MAGNITUDE)
            low, high = min(low, bound), max(high, bound)
    return low, high


def metric_bounds(spec: CampaignSpec, metric: str) -> list[float]:
    """The bounds of a metric's outcome constraints and objective threshold (kept by the clip)."""
    out = [c.bound for c in spec.parsed_outcome_constraints if c.metric == metric]
    return out + [o.threshold for o in spec.objectives if o.name == metric and o.threshold is not None]
