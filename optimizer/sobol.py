"""Quasi-random initialization: scrambled Sobol points mapped onto a campaign's search space.

The initialization phase is ours, not Ax's, so that it is a pure function of the spec and a
position in one Sobol sequence: the point at position ``p`` is the same in every process, and
a campaign rebuilt from its log continues the sequence at ``max(recorded positions) + 1``
instead of starting it again.

The sampler maps onto the spec it is given, which is the campaign's *effective* spec (after
mid-campaign changes): narrowed or widened bounds change where a position lands, not which
positions come next, and a fixed parameter (``fixed_parameters``) takes its fixed value at
every position while keeping its dimension of the sequence (so fixing or freeing a parameter
neither restarts nor shifts the sequence).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import torch

from campaigns.errors import OptimizerError
from campaigns.events import ParameterValue
from campaigns.spec import CampaignSpec, ChoiceParameter, FloatParameter, IntParameter, LinearConstraint

__all__ = ["SobolPoint", "SobolSampler", "fixed_parameter_values"]



#: How many consecutive positions may be rejected before the search space is declared empty.
MAX_REJECTIONS = 20_000
_CHUNK = 64


class SobolPoint:
    """One accepted point of the sequence: its position and its parameters.

    Args:
        position: The point's position in the scrambled Sobol sequence (0-based).
        parameters: The point mapped onto the search space.
    """

    __slots__ = ("parameters", "position")

    def __init__(self, position: int, parameters: dict[str, ParameterValue]) -> None:
        self.position = position
        self.parameters = parameters

    def __repr__(self) -> str:
        return f"SobolPoint(position={self.position}, parameters={self.parameters})"


class SobolSampler:
    """Maps positions of a scrambled Sobol sequence onto a campaign's search space.

    Each parameter takes one dimension of the unit cube: a float parameter linearly (or
    linearly in log space when ``log_scale``), an int parameter by equal-width bins (in log
    space when ``log_scale``), a choice parameter by the index of its value; a fixed parameter
    takes its fixed value. Points that break a parameter constraint are skipped, and so are
    points a caller rejects (e.g. repeats).

    Args:
        spec: The campaign; its ``seed`` seeds the scrambling.
    """

    def __init__(self, spec: CampaignSpec) -> None:
        self._spec = spec
        self._constraints: list[LinearConstraint] = spec.parsed_parameter_constraints
        self._dimension = len(spec.parameters)
        self._fixed = fixed_parameter_values(spec)
        self._engine: torch.quasirandom.SobolEngine | None = None
        self._position = 0

    def point_at(self, position: int) -> dict[str, ParameterValue]:
        """The parameters at one position, whether or not they satisfy the constraints.

        Args:
            position: A position in the sequence, ``>= 0``.
        """
        return self._map(self._draw(position, 1)[0])

    def center(self) -> dict[str, ParameterValue] | None:
        """The centre of the search space (every dimension at 0.5), or None when it breaks a
        parameter constraint."""
        parameters = self._map([0.5] * self._dimension)
        return parameters if all(c.holds(parameters) for c in self._constraints) else None

    def next_points(
        self,
        start: int,
        n: int,
        accept: Callable[[Mapping[str, ParameterValue]], bool] | None = None,
    ) -> list[SobolPoint]:
        """The first ``n`` acceptable points at or after position ``start``.

        Args:
            start: The first position to look at.
            n: How many points to return.
            accept: An extra test a point must pass besides the parameter constraints. It is
                called once per candidate, in order, and a point is taken as soon as it returns
                True, so a test that rejects repeats can remember what it accepted.

        Raises:
            OptimizerError: ``MAX_REJECTIONS`` positions in a row were rejected.
        """
        out: list[SobolPoint] = []
        rejected = 0
        for position, parameters in self._walk(start):
            if len(out) == n:
                break
            if all(c.holds(parameters) for c in self._constraints) and (accept is None or accept(parameters)):
                out.append(SobolPoint(position, parameters))
                rejected = 0
                continue
            rejected += 1
            if rejected >= MAX_REJECTIONS:
                raise OptimizerError(
                    f"campaign {self._spec.name!r}: no new point satisfying the parameter constraints "
                    f"in {MAX_REJECTIONS} Sobol positions after position {position - rejected + 1}",
                    "loosen the parameter constraints, or widen the bounds (the feasible region "
                    "may be empty, or every point of a small discrete space may be taken)",
                )
        return out

    def _walk(self, start: int) -> Iterator[tuple[int, dict[str, ParameterValue]]]:
        position = start
        while True:
            for row in self._draw(position, _CHUNK):
                yield position, self._map(row)
                position += 1

    def _draw(self, start: int, n: int) -> list[list[float]]:
        if start < 0:
            raise ValueError("a Sobol position is >= 0")
        # One scrambled engine per sequence (building one costs ~10 ms); positions are reached
        # by fast-forwarding it, or resetting it first, so every draw equals a fresh engine's.
        if self._engine is None:
            self._engine = torch.quasirandom.SobolEngine(  # type: ignore[no-untyped-call]
                self._dimension, scramble=True, seed=self._spec.seed
            )
            self._position = 0
        if start < self._position:
            self._engine.reset()  # type: ignore[no-untyped-call]
            self._position = 0
        if start > self._position:
            self._engine.fast_forward(start - self._position)  # type: ignore[no-untyped-call]
        rows: list[list[float]] = self._engine.draw(n, dtype=torch.float64).tolist()
        self._position = start + n
        return rows

    def _map(self, row: list[float]) -> dict[str, ParameterValue]:
        out: dict[str, ParameterValue] = {}
        for u, p in zip(row, self._spec.parameters, strict=True):
            out[p.name] = self._fixed[p.name] if p.name in self._fixed else _map_one(u, p)
        return out


def fixed_parameter_values(spec: CampaignSpec) -> dict[str, ParameterValue]:
    """The spec's ``fixed_parameters``, each value in its parameter's Python type, in spec order.

    A fixed value read back from JSON or YAML may be ``3`` for a float parameter or ``3.0`` for
    an int one; Ax and the trial records want ``3.0`` and ``3``. A choice keeps the listed value
    (of the listed type). The spec has checked that each value is within bounds or listed.
    """
    out: dict[str, ParameterValue] = {}
    for p in spec.parameters:
        if p.name not in spec.fixed_parameters:
            continue
        v = spec.fixed_parameters[p.name]
        if isinstance(p, FloatParameter):
            out[p.name] = float(v)
        elif isinstance(p, IntParameter):
            out[p.name] = int(v)
        else:
            same = [c for c in p.values if c == v and type(c) is type(v)]
            out[p.name] = same[0] if same else next((c for c in p.values if c == v), v)
    return out


def _map_one(u: float, p: FloatParameter | IntParameter | ChoiceParameter) -> ParameterValue:
    if isinstance(p, ChoiceParameter):
        return p.values[min(int(u * len(p.values)), len(p.values) - 1)]
    if isinstance(p, FloatParameter):
        low, high = p.bounds
        if p.log_scale:
            value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
        else:
            value = low + u * (high - low)
        return min(max(value, low), high)
    ilow, ihigh = p.bounds
    if p.log_scale:
        # Bins of equal width in log space around each integer: [k - 0.5, k + 0.5].
        lo, hi = math.log(ilow - 0.5), math.log(ihigh + 0.5)  # ilow >= 1: the spec checks it
        k = round(math.exp(lo + u * (hi - lo)))
    else:
        k = ilow + int(u * (ihigh - ilow + 1))
    return min(max(int(k), ilow), ihigh)
