"""The fast engine's search space: float, int and choice parameters and linear constraints.

``Space`` maps a campaign's parameters to the model's unit cube and back: a float parameter
takes one column (log-scaled ones in log space); an int parameter and an ordered choice (its
index) one column each, relaxed to a continuous range and rounded when a point is decoded;
an unordered choice one column per value (one-hot, as Ax's ``OneHot`` transform). The linear
parameter constraints become ``A u <= b`` on the unit cube.

``maximize_mixed`` optimizes an acquisition over that space: every combination of the free
unordered choices' values in turn (BoTorch's ``optimize_acqf_mixed`` enumerates fixed features
the same way; a campaign with more than ``MAX_COMBINATIONS`` goes to Ax: ``optimizer.engines``);
within one, the continuous relaxation by ``acquisition.maximize`` (L-BFGS-B) or, under linear
constraints, by SLSQP from feasible raw samples (BoTorch's ``gen_candidates_scipy`` with
``inequality_constraints``: all starts as one problem, their acquisition values summed); then
the int columns of the best end points are rounded down and up (every combination for up to
``ROUNDINGS_UP_TO`` int columns, else nearest and one column flipped at a time) and the best
rounded point that satisfies the constraints and is not taken wins. Every point it returns is
in the space and satisfies the constraints.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from botorch.optim.batched_lbfgs_b import fmin_l_bfgs_b_batched
from botorch.optim.initializers import initialize_q_batch
from scipy.optimize import minimize

from campaigns.events import ParameterValue
from campaigns.spec import CampaignSpec, ChoiceParameter, FloatParameter, IntParameter
from optimizer.acquisition import Acquisition
from optimizer.engines import MAX_COMBINATIONS

__all__ = ["ENUMERATE_UP_TO", "POLISHED", "ROUNDINGS_UP_TO", "Space", "maximize_mixed"]

#: Int and ordered-choice columns are enumerated (each value fixed in turn, with every
#: combination of the choices) when that makes at most this many combinations; else relaxed
#: and rounded. Ax enumerates up to ``ALTERNATING_OPTIMIZER_THRESHOLD`` (10) and alternates beyond.
ENUMERATE_UP_TO = 16
#: How many of the best rounded points get their continuous columns optimized again.
POLISHED = 4
#: Up to this many int columns, every floor/ceil combination of an end point is scored.
ROUNDINGS_UP_TO = 6
_TOL = 1e-9  # feasibility tolerance of ``A u <= b`` on the unit cube
_MARGIN = 1e-7  # SLSQP is given ``b - _MARGIN``: its end points hold the constraints strictly


class Space:
    """A campaign's parameters <-> the unit cube of its model (see the module docstring)."""

    def __init__(self, spec: CampaignSpec) -> None:
        self.params = list(spec.parameters)
        self.columns: list[list[int]] = []  # each parameter's columns
        self.rounded: list[int] = []  # int and ordered-choice columns
        self.onehot: list[list[int]] = []  # each unordered choice's columns
        self.names: list[str] = []  # per column: the parameter's name
        col = 0
        for p in self.params:
            width = len(p.values) if isinstance(p, ChoiceParameter) and not p.is_ordered else 1
            cols = list(range(col, col + width))
            self.columns.append(cols)
            self.names += [p.name] * width
            if width > 1:
                self.onehot.append(cols)
            elif not isinstance(p, FloatParameter):
                self.rounded.append(col)
            col += width
        self.d = col
        self.discrete = bool(self.rounded or self.onehot)
        by_name = {p.name: i for i, p in enumerate(self.params)}
        rows, bounds = [], []
        for c in spec.parsed_parameter_constraints:  # float and int parameters, linear scale
            row, bound = np.zeros(self.d), c.bound
            for name, coef in c.coefficients.items():
                p = self.params[by_name[name]]
                low, high = p.bounds  # type: ignore[union-attr]
                row[self.columns[by_name[name]][0]] += coef * (high - low)
                bound -= coef * low
            rows.append(row)
            bounds.append(bound)
        self.A, self.b = np.array(rows).reshape(-1, self.d), np.array(bounds, dtype=float)
        self._constraints = spec.parsed_parameter_constraints

    # ------------------------------------------------------------------ encoding
    @staticmethod
    def _unit(p: FloatParameter | IntParameter, v: float) -> float:
        low, high = p.bounds
        if p.log_scale:
            return (math.log(v) - math.log(low)) / (math.log(high) - math.log(low)) if v > 0 else 0.0
        return (v - low) / (high - low)

    @staticmethod
    def _value(p: FloatParameter | IntParameter, u: float) -> float:
        low, high = p.bounds
        if p.log_scale:
            return math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
        return low + u * (high - low)

    def to_unit(self, parameters: Mapping[str, ParameterValue]) -> list[float]:
        """A point's unit-cube row (a value no longer listed, or outside the bounds, kept as is)."""
        out = [0.0] * self.d
        for p, cols in zip(self.params, self.columns, strict=True):
            v = parameters[p.name]
            if isinstance(p, ChoiceParameter):
                index = next((i for i, c in enumerate(p.values) if c == v), None)
                if p.is_ordered:
                    out[cols[0]] = 0.5 if index is None else index / (len(p.values) - 1)
                elif index is not None:
                    out[cols[index]] = 1.0
            else:
                out[cols[0]] = self._unit(p, float(v))  # type: ignore[arg-type]
        return out

    def from_unit(self, u: np.ndarray) -> dict[str, ParameterValue]:
        """The parameters at a unit-cube row: ints rounded, a choice by its largest column."""
        out: dict[str, ParameterValue] = {}
        for p, cols in zip(self.params, self.columns, strict=True):
            x = min(max(float(u[cols[0]]), 0.0), 1.0)
            if isinstance(p, ChoiceParameter):
                index = round(x * (len(p.values) - 1)) if p.is_ordered else int(np.argmax(u[cols]))
                out[p.name] = p.values[index]
            elif isinstance(p, IntParameter):
                out[p.name] = min(max(round(self._value(p, x)), p.bounds[0]), p.bounds[1])
            else:
                out[p.name] = min(max(self._value(p, x), p.bounds[0]), p.bounds[1])
        return out

    def fixed_columns(self, fixed: Mapping[str, ParameterValue]) -> dict[int, float]:
        """The columns a fixed parameter holds, with their unit values."""
        out: dict[int, float] = {}
        for p, cols in zip(self.params, self.columns, strict=True):
            if p.name in fixed:
                row = self.to_unit({q.name: fixed.get(q.name, _any_value(q)) for q in self.params})
                out.update({c: row[c] for c in cols})
        return out

    def holds(self, parameters: Mapping[str, ParameterValue]) -> bool:
        """Whether a decoded point satisfies every parameter constraint (in its own units)."""
        return all(c.holds(parameters) for c in self._constraints)

    def feasible(self, U: np.ndarray, tol: float = _TOL) -> np.ndarray:
        """Which rows of ``U`` satisfy ``A u <= b`` (all, without constraints)."""
        if not len(self.b):
            return np.ones(len(U), dtype=bool)
        return (U @ self.A.T <= self.b + tol).all(1)

    # ------------------------------------------------------------------ rounding
    def _snap_int(self, u: float, p: IntParameter | ChoiceParameter, up: bool | None) -> float:
        """The unit value of the integer (or ordered index) below, above or nearest ``u``."""
        if isinstance(p, ChoiceParameter):
            k = len(p.values) - 1
            x = min(max(u, 0.0), 1.0) * k
            return (math.floor(x) if up is False else math.ceil(x) if up else round(x)) / k
        x = self._value(p, min(max(u, 0.0), 1.0))
        i = math.floor(x) if up is False else math.ceil(x) if up else round(x)
        return self._unit(p, min(max(i, p.bounds[0]), p.bounds[1]))

    def roundings(self, U: np.ndarray) -> np.ndarray:
        """Each row of ``U`` with its int columns rounded every way (see the module docstring)."""
        if not self.rounded:
            return U.copy()
        by_col = {self.columns[i][0]: p for i, p in enumerate(self.params) if not isinstance(p, FloatParameter)}
        if len(self.rounded) <= ROUNDINGS_UP_TO:
            patterns: list[tuple[bool | None, ...]] = list(itertools.product((False, True), repeat=len(self.rounded)))
        else:
            nearest: tuple[bool | None, ...] = (None,) * len(self.rounded)
            patterns = [nearest] + [nearest[:j] + (s,) + nearest[j + 1:] for j in range(len(self.rounded))
                                    for s in (False, True)]
        out = np.repeat(U, len(patterns), axis=0)
        for r, row in enumerate(U):
            for k, pattern in enumerate(patterns):
                for col, up in zip(self.rounded, pattern, strict=True):
                    out[r * len(patterns) + k, col] = self._snap_int(float(row[col]), by_col[col], up)  # type: ignore[arg-type]
        return out

    def _grid(self, col: int) -> list[float]:
        """The unit values of an int or ordered-choice column's integers (indices)."""
        p = self.params[next(i for i, cols in enumerate(self.columns) if cols[0] == col)]
        if isinstance(p, ChoiceParameter):
            return [i / (len(p.values) - 1) for i in range(len(p.values))]
        return [self._unit(p, i) for i in range(p.bounds[0], p.bounds[1] + 1)]  # type: ignore[arg-type]

    def _cardinality(self, col: int) -> int:
        p = self.params[next(i for i, cols in enumerate(self.columns) if cols[0] == col)]
        return len(p.values) if isinstance(p, ChoiceParameter) else p.bounds[1] - p.bounds[0] + 1  # type: ignore[union-attr]

    def combinations(self, fixed: Mapping[int, float]) -> tuple[list[dict[int, float]], bool]:
        """Every combination of the free unordered choices' values, as fixed columns, and with
        them every value of the free int and ordered-choice columns if all of them together
        make at most ``ENUMERATE_UP_TO`` combinations (then True: nothing is left to round)."""
        free = [cols for cols in self.onehot if cols[0] not in fixed]
        rounded = [c for c in self.rounded if c not in fixed]
        total = math.prod(len(cols) for cols in free) * math.prod(self._cardinality(c) for c in rounded)
        enumerated = bool(rounded) and total <= ENUMERATE_UP_TO
        grids = [self._grid(c) for c in rounded] if enumerated else []
        out = []
        for picks in itertools.product(*[range(len(cols)) for cols in free]):
            combo = {}
            for cols, pick in zip(free, picks, strict=True):
                combo.update({c: float(i == pick) for i, c in enumerate(cols)})
            for values in itertools.product(*grids):
                out.append(combo | dict(zip(rounded if enumerated else [], values, strict=True)))
        return out, enumerated


def _any_value(p: FloatParameter | IntParameter | ChoiceParameter) -> ParameterValue:
    return p.values[0] if isinstance(p, ChoiceParameter) else p.bounds[0]


def maximize_mixed(
    acquisition: Acquisition,
    space: Space,
    fixed: Mapping[int, float],
    settings: Mapping[str, float],
    seed: int,
    warm: np.ndarray | None,
    taken: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The best point found that is in the space, satisfies the constraints and is not
    ``taken`` (if every candidate is taken: the best one), and the other end points, best
    first (snapped to the space: to warm-start the next candidate).

    The raw samples are pooled over the combinations (each gets ``raw_samples / n`` Sobol
    points and its share of the samples around the best trial), BoTorch's start heuristic
    picks ``num_restarts`` starts from the pool, and one batched local ascent moves each
    start's continuous columns with its combination fixed: the cost of one continuous
    optimization, however many combinations.
    """
    combos, enumerated = space.combinations(fixed)
    assert len(combos) <= max(MAX_COMBINATIONS, ENUMERATE_UP_TO), "optimizer.engines sends such a campaign to Ax"
    d = space.d
    held = set(fixed) | {c for combo in combos for c in combo}
    moving = [c for c in range(d) if c not in held]
    n_raw, n_starts = int(settings["raw_samples"]), int(settings["num_restarts"])
    per = max(32, n_raw // len(combos)) if moving else 1  # nothing continuous: each combination once
    engine = torch.quasirandom.SobolEngine(max(1, len(moving)), scramble=True, seed=seed)  # type: ignore[no-untyped-call]
    rng = np.random.default_rng(seed)
    around, B = int(settings.get("around_best", 0)) // len(combos), acquisition.B
    chunks = []
    for _ in range(16 if len(space.b) else 1):  # under constraints: rejection, up to 16 x the samples
        draw = engine.draw(per, dtype=torch.float64).numpy()[:, : len(moving)]
        for combo in combos:
            raw = np.empty((per, d))
            raw[:, moving] = draw
            for c, v in {**fixed, **combo}.items():
                raw[:, c] = v
            chunks.append(raw[space.feasible(raw, -_MARGIN)])
        if sum(len(c) for c in chunks) >= n_raw:
            break
    extra = []
    if moving and around and B is not None and len(B):  # around the best trial, in every combination
        extra.append(np.clip(B[rng.integers(0, len(B), around * len(combos))]
                             + rng.normal(0.0, settings["around_sd"], (around * len(combos), d)), 0.0, 1.0))
    if moving and len(space.b) and len(taken):  # the trials held the constraints when they were suggested
        extra.append(np.repeat(taken, 1, axis=0))
    for rows in extra:
        for k, combo in enumerate(combos):
            part = rows[k::len(combos)].copy()
            for c, v in {**fixed, **combo}.items():
                part[:, c] = v
            chunks.append(part[space.feasible(part, -_MARGIN)])
    raw = np.concatenate(chunks)
    if not len(raw):
        raise ValueError("no raw sample satisfies the parameter constraints")
    values = acquisition.screen(raw)
    if not moving:  # nothing continuous: the pool is every point there is to score
        ends = raw
    else:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            starts_t, _ = initialize_q_batch(torch.from_numpy(raw), torch.from_numpy(values), n=min(n_starts, len(raw)))
        starts = starts_t.numpy()
        if warm is not None and len(warm):  # the previous candidate's ends, where still feasible
            starts = np.concatenate([warm[space.feasible(warm, -_MARGIN)][: max(1, n_starts // 2)], starts])
        ends = np.concatenate([_local(acquisition, space, starts, moving, settings), starts])
    if enumerated or not space.rounded:
        points = _ranked(acquisition, space, ends)
    else:
        points = _ranked(acquisition, space, space.roundings(ends))
        top = points[:POLISHED]  # the continuous columns again, with the best roundings' ints fixed
        still = [c for c in moving if c not in space.rounded]
        if still:
            points = _ranked(acquisition, space, np.concatenate([_local(acquisition, space, top, still, settings), points]))
    fresh = np.ones(len(points), dtype=bool)
    if len(taken):
        fresh = np.abs(points[:, None, :] - taken[None, :, :]).max(-1).min(-1) > 1e-9
    best = points[int(np.argmax(fresh))] if fresh.any() else points[0]
    return best, points[:64]


def _ranked(acquisition: Acquisition, space: Space, points: np.ndarray) -> np.ndarray:
    """The rows of ``points`` that hold the constraints (in the parameters' own units too),
    best acquisition value first."""
    points = points[space.feasible(points)]
    if not len(points):  # cannot happen with feasible raw samples; the caller falls back to Sobol
        raise ValueError("no point of the acquisition optimizer satisfies the parameter constraints")
    values = acquisition(points, grad=False)[0]
    points = points[np.argsort(-np.where(np.isfinite(values), values, -np.inf), kind="stable")]
    points = points[[space.holds(space.from_unit(u)) for u in points]]
    if not len(points):
        raise ValueError("no rounded point satisfies the parameter constraints")
    return points


def _local(acquisition: Acquisition, space: Space, starts: np.ndarray, moving: Sequence[int],
           settings: Mapping[str, float]) -> np.ndarray:
    """Where a local ascent of the ``moving`` columns from each row of ``starts`` ends (the
    other columns as they are): L-BFGS-B, or under ``A u <= b`` SLSQP with every start as one
    problem (their values summed; BoTorch's ``gen_candidates_scipy``)."""
    k, m = len(starts), len(moving)
    moving = list(moving)

    def full(z: np.ndarray) -> np.ndarray:
        out = starts.copy()
        out[:, moving] = z.reshape(k, m)
        return out

    if not len(space.b):
        def negative_each(z: np.ndarray, batch_indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
            rows = starts[batch_indices].copy()  # the starts still running
            rows[:, moving] = z
            value, slope = acquisition(rows)
            return -value, -slope[:, moving]  # type: ignore[index]

        xs, _, _ = fmin_l_bfgs_b_batched(negative_each, starts[:, moving], bounds=[(0.0, 1.0)] * m,
                                         maxiter=int(settings["maxiter"]), factr=settings["factr"],
                                         pass_batch_indices=True)
        return full(np.clip(np.atleast_2d(xs), 0.0, 1.0))

    def negative(z: np.ndarray) -> tuple[float, np.ndarray]:
        value, slope = acquisition(full(z))
        value = np.where(np.isfinite(value), value, -1e6)
        return -float(value.sum()), -np.nan_to_num(slope[:, moving]).reshape(-1)  # type: ignore[index]

    still = [c for c in range(space.d) if c not in moving]
    blocks = np.kron(np.eye(k), space.A[:, moving])
    limits = (space.b - _MARGIN - starts[:, still] @ space.A[:, still].T).reshape(-1)  # per start
    result = minimize(negative, starts[:, moving].reshape(-1), jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * (k * m),
                      constraints=[{"type": "ineq", "fun": lambda z: limits - blocks @ z, "jac": lambda z: -blocks}],
                      options={"maxiter": int(settings["maxiter"])})
    return full(np.clip(result.x, 0.0, 1.0))
