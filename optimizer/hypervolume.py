"""Hypervolume of observed objective values, trial after trial (BoTorch's utilities).

A campaign of several objectives has no single "best so far"; the hypervolume dominated by
its observed Pareto front, above a reference point, is the one number that grows as the front
improves. The reference point (``reference_point``) is the spec's objective thresholds where
it gives them (as Ax uses them), and elsewhere BoTorch's ``infer_reference_point`` on the
observed front: its worst value on each objective, moved a tenth of the front's range further
out. Campaigns compared on one plot share one reference point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from botorch.utils.multi_objective.hypervolume import Hypervolume, infer_reference_point
from botorch.utils.multi_objective.pareto import is_non_dominated

__all__ = ["hypervolume_trace", "reference_point"]


def _maximized(points: Sequence[Sequence[float]], minimize: Sequence[bool]) -> torch.Tensor:
    signs = torch.tensor([-1.0 if m else 1.0 for m in minimize], dtype=torch.double)
    return torch.tensor([list(p) for p in points], dtype=torch.double).reshape(-1, len(minimize)) * signs


def reference_point(points: Sequence[Sequence[float]], minimize: Sequence[bool],
                    thresholds: Sequence[float | None]) -> list[float]:
    """The reference point, in the objectives' own units and directions.

    Args:
        points: Observed objective vectors (one per feasible completed trial, of every
            campaign that shares the plot).
        minimize: Each objective's direction.
        thresholds: Each objective's threshold from the spec (``None`` where it has none).
    """
    given = [t is not None for t in thresholds]
    if all(given) or not points:
        return [float(t) if t is not None else 0.0 for t in thresholds]
    y = _maximized(points, minimize)
    front = y[is_non_dominated(y)]
    inferred = infer_reference_point(front)
    signs = [-1.0 if m else 1.0 for m in minimize]
    return [float(t) if t is not None else float(inferred[i]) * signs[i] for i, t in enumerate(thresholds)]


def hypervolume_trace(points: Sequence[Sequence[float]], minimize: Sequence[bool],
                      reference: Sequence[float]) -> list[float]:
    """The hypervolume dominated by the first ``k`` points, for ``k = 1 .. len(points)``.

    Points that do not improve on the reference point on every objective add nothing.
    """
    if not points:
        return []
    signs = [-1.0 if m else 1.0 for m in minimize]
    ref = torch.tensor([r * s for r, s in zip(reference, signs, strict=True)], dtype=torch.double)
    y = _maximized(points, minimize)
    hv = Hypervolume(ref_point=ref)
    out: list[float] = []
    front = y[:0]
    for row in y:
        if bool((row > ref).all()):
            front = torch.cat([front, row.unsqueeze(0)])
            front = front[is_non_dominated(front)]
        out.append(float(hv.compute(front)) if len(front) else 0.0)
    return [v if math.isfinite(v) else 0.0 for v in out]
