"""The fast engine's acquisition functions and their maximizer, in NumPy.

Each takes points of the unit cube ``(m, d)`` and returns its value per point and, when
asked, the gradient, written out (``FastGP.predict``): an acquisition optimizer calls them
hundreds of times per candidate, and autograd costs more than the arithmetic here.

- ``Acquisition``: log expected improvement of one objective (analytic) + log P(each outcome
  constraint holds);
- ``LogNEI``: log noisy expected improvement: the EI above the best of joint
  quasi-random draws of the objective at the trials that may be the best (``baseline``) and
  the pending points, averaged over the draws (BoTorch's ``qLogNEI``, Ax's default, with
  sequential-greedy pending points and its QMC sampler);
- ``LogEHVI``: log expected hypervolume improvement of several objectives (analytic);
- ``maximize``: raw Sobol samples and samples around the baseline, BoTorch's
  ``initialize_q_batch`` for the starts (and the previous candidate's end points), L-BFGS-B.

``tests/unit/test_fastgp.py`` checks them against BoTorch's own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from botorch.optim.batched_lbfgs_b import fmin_l_bfgs_b_batched
from botorch.optim.initializers import initialize_q_batch
from botorch.sampling.qmc import NormalQMCEngine
from botorch.utils.multi_objective.box_decompositions.non_dominated import FastNondominatedPartitioning
from botorch.utils.multi_objective.hypervolume import infer_reference_point
from scipy.special import erfcx, log_ndtr, ndtr

from campaigns.spec import CampaignSpec
from optimizer.fastgp import EXACT, FastGP

__all__ = ["Acquisition", "LogEHVI", "LogNEI", "baseline", "feasible", "hypercells", "incumbent", "log_h", "maximize"]

_MIN_VAR = 1e-10  # posterior variance floor, relative to the output variance
_FD_STEP = 1e-6  # forward-difference step in the unit cube (log EHVI's gradient)
SCREEN_DRAWS = 32  # LogNEI's draws used to rank the raw samples (all of them after)
PRUNE_DRAWS = 2048  # joint draws that decide ``baseline`` (BoTorch's ``prune_inferior_points``)
_PRUNE_Z = 6.0  # ``baseline`` draws only at points within this many sd of the best lower bound
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_SQRT_HALF_PI = math.sqrt(math.pi / 2.0)


def log_h(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``log(phi(u) + u Phi(u))`` (log EI of a unit normal above ``-u``) and its derivative.

    The derivative of ``h`` is ``Phi(u)``. Below ``u = -1``, ``h = phi(u) (1 - |u| R(|u|))``
    with Mills' ratio ``R = sqrt(pi / 2) erfcx(|u| / sqrt(2))``; below -30 the asymptotic
    ``1 - |u| R ~ u**-2 (1 - 3 u**-2 + 15 u**-4)`` avoids the cancellation. Agrees with
    BoTorch's ``_log_ei_helper`` (``tests/unit/test_fastgp.py``).
    """
    u = np.asarray(u, dtype=float)
    value, slope = np.empty_like(u), np.empty_like(u)
    high, mid, low = u > -1.0, (u <= -1.0) & (u > -30.0), u <= -30.0
    if high.any():
        v = u[high]
        cdf = ndtr(v)
        h = np.exp(-0.5 * v * v) / _SQRT_2PI + v * cdf
        value[high], slope[high] = np.log(h), cdf / h
    log_phi = -0.5 * u * u - math.log(_SQRT_2PI)
    if mid.any():
        a = -u[mid]
        mills = _SQRT_HALF_PI * erfcx(a / math.sqrt(2.0))
        rest = 1.0 - a * mills
        value[mid], slope[mid] = log_phi[mid] + np.log(rest), mills / rest
    if low.any():
        a2 = u[low] ** -2
        rest = a2 * (1.0 - 3.0 * a2 + 15.0 * a2 * a2)
        value[low], slope[low] = log_phi[low] + np.log(rest), (-1.0 / u[low]) * (1.0 - a2 + 3.0 * a2 * a2) / rest
    return value, slope


def _log_cdf(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``log Phi(u)`` and its derivative ``phi(u) / Phi(u)``."""
    value = log_ndtr(u)
    return value, np.exp(-0.5 * u * u - math.log(_SQRT_2PI) - value)


class Acquisition:
    """log EI of the objective (none without an incumbent) + log P(each condition holds).

    ``objective`` and each condition are ``(model, sign)``: the quantity is ``sign * metric``,
    to maximize; a condition holds when it is at least its bound. Takes and returns NumPy
    arrays; ``x`` is ``(m, d)`` in the unit cube.
    """

    #: The best trial (``LogNEI``'s baseline): ``maximize`` draws raw samples around it too.
    B: np.ndarray | None = None

    def __init__(
        self,
        objective: tuple[FastGP, float],
        best: float | None,
        conditions: Sequence[tuple[FastGP, float, float]],
    ) -> None:
        self.objective, self.best, self.conditions = objective, best, list(conditions)

    @staticmethod
    def _standardized(model: FastGP, sign: float, level: float, x: np.ndarray, grad: bool) -> tuple[np.ndarray, ...]:
        """``u = (sign * mean - level) / sd``, ``sd`` and, with ``grad``, their gradients."""
        if not grad:
            mean, var = model.predict(x, grad=False)
            sd = np.sqrt(np.maximum(var, _MIN_VAR * model.output_scale**2))
            return (sign * mean - level) / sd, sd
        mean, var, dmean, dvar = model.predict(x)
        sd = np.sqrt(np.maximum(var, _MIN_VAR * model.output_scale**2))
        u = (sign * mean - level) / sd
        dsd = dvar / (2.0 * sd[:, None])
        du = (sign * dmean - u[:, None] * dsd) / sd[:, None]
        return u, sd, du, dsd

    def objective_term(self, x: np.ndarray, grad: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """log EI of the objective at the rows of ``x`` (0 without an incumbent)."""
        if self.best is None:
            return np.zeros(len(x)), np.zeros_like(x) if grad else None
        model, sign = self.objective
        parts = self._standardized(model, sign, self.best, x, grad)
        value, dvalue = log_h(parts[0])
        if not grad:
            return value + np.log(parts[1]), None
        return value + np.log(parts[1]), dvalue[:, None] * parts[2] + parts[3] / parts[1][:, None]

    def __call__(self, x: np.ndarray, grad: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """The acquisition value at each row of ``x`` and, with ``grad``, its gradient."""
        total, slope = self.objective_term(x, grad)
        more, more_slope = self.conditions_term(x, grad)
        return total + more, None if slope is None else slope + more_slope

    def conditions_term(self, x: np.ndarray, grad: bool) -> tuple[np.ndarray, np.ndarray]:
        """The log probability that every condition holds, and its gradient (zeros without grad)."""
        total, slope = np.zeros(len(x)), np.zeros_like(x)
        for model, sign, bound in self.conditions:
            parts = self._standardized(model, sign, sign * bound, x, grad)
            value, dvalue = _log_cdf(parts[0])
            total += value
            if grad:
                slope += dvalue[:, None] * parts[2]
        return total, slope

    def screen(self, x: np.ndarray) -> np.ndarray:
        """The value at the rows of ``x``, for ranking raw samples as starts."""
        return self(x, grad=False)[0]


class LogNEI(Acquisition):
    """log E[max(f(x) - max f(B u P), 0)], over joint draws of f at the points B and P.

    ``B`` is the baseline: the trials that may be the best (``baseline``); ``P`` the
    pending trials and the batch's earlier candidates. For each of ``samples`` joint draws of
    the latent objective at ``B`` and ``P`` (scrambled Sobol normals, as BoTorch's
    ``SobolQMCNormalSampler`` draws), the model conditioned on them exactly (the same kernel
    matrix for every draw: one Cholesky factor; only the weights ``alpha`` differ) gives an
    analytic EI above that draw's best; their mean is BoTorch's ``qLogNEI`` value of the
    candidate given ``P`` (Ax's default), up to its smoothing. The incumbent is drawn, not a
    posterior mean: at a tried point the improvement is ~0, where an EI above a fixed
    incumbent still sees the inferred noise's variance there and spends trials re-measuring it.
    """

    def __init__(
        self,
        objective: tuple[FastGP, float],
        B: np.ndarray,
        P: np.ndarray,
        conditions: Sequence[tuple[FastGP, float, float]],
        generator: torch.Generator,
        samples: int = 128,
    ) -> None:
        super().__init__(objective, None, conditions)
        self.B = B
        model, sign = objective
        points = torch.from_numpy(np.concatenate([B, P.reshape(-1, B.shape[1])]))
        mean, cov = model.mean_and_covariance(points)
        jitter = 1e-8 * model.output_scale**2 * torch.eye(len(points), dtype=torch.float64)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        normal = NormalQMCEngine(len(points), seed=seed, inv_transform=True).draw(samples, dtype=torch.float64)
        draws = mean + normal @ torch.linalg.cholesky(cov + jitter).T  # (S, k)
        self.best_s = (sign * draws).max(-1).values.numpy()  # (S,)
        self.cond = model.condition_on(points, mean, noise=EXACT)
        self.alpha = self.cond.weights(torch.cat([model.train_y.expand(samples, -1), draws], -1))  # (n + k, S)

    def objective_term(self, x: np.ndarray, grad: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The log mean EI over the draws at the rows of ``x``, and its gradient."""
        return self._log_mean_ei(x, grad, self.alpha, self.best_s)

    def screen(self, x: np.ndarray) -> np.ndarray:
        """The value on the first ``SCREEN_DRAWS`` draws only: for ranking raw samples as starts."""
        total, _ = self.conditions_term(x, False)
        return total + self._log_mean_ei(x, False, self.alpha[:, :SCREEN_DRAWS], self.best_s[:SCREEN_DRAWS])[0]

    def _log_mean_ei(
        self, x: np.ndarray, grad: bool, alpha: np.ndarray, best_s: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        cond, sign = self.cond, self.objective[1]
        if not grad:
            mean, var = cond.predict(x, grad=False, weights=alpha)
        else:
            mean, var, dvar, k = cond.predict_draws(x, alpha)
        sd = np.sqrt(np.maximum(var, _MIN_VAR * cond.output_scale**2))
        u = (sign * mean - best_s) / sd[:, None]  # (m, S)
        value, dvalue = log_h(u)
        value = value + np.log(sd)[:, None]
        top = value.max(-1, keepdims=True)
        weights = np.exp(value - top)
        total = weights.sum(-1)
        out = np.log(total) + top[:, 0] - math.log(value.shape[-1])
        if not grad:
            return out, None
        # d out / dx = sum_s p_s h'(u_s) du_s + dsd / sd, with p the softmax over the draws and
        # du_s = (sign dmean_s - u_s dsd) / sd: the draws' mean gradients enter only as their
        # sum weighted by c_s = p_s h'(u_s) sign / sd (FastGP.mean_gradient).
        c = (weights / total[:, None]) * dvalue  # (m, S)
        dsd = dvar / (2.0 * sd[:, None])  # (m, d)
        dmean = cond.mean_gradient(x, k, (c @ alpha.T) * sign)  # (m, d)
        return out, (dmean - (c * u).sum(1)[:, None] * dsd) / sd[:, None] + dsd / sd[:, None]


class LogEHVI(Acquisition):
    """log expected hypervolume improvement (analytic, Yang et al. 2019) + the conditions.

    ``objectives`` are ``(model, sign)`` pairs (``sign * metric`` maximized), independent;
    ``cells`` the lower and upper bounds of the hyperrectangles that make up the region a new
    point would add to the hypervolume (BoTorch's ``NondominatedPartitioning``). The formula
    is BoTorch's ``ExpectedHypervolumeImprovement``; its gradient is taken by forward
    differences, all in one vectorized call.
    """

    def __init__(
        self,
        objectives: Sequence[tuple[FastGP, float]],
        cells: tuple[np.ndarray, np.ndarray],
        conditions: Sequence[tuple[FastGP, float, float]],
    ) -> None:
        super().__init__(objectives[0], None, conditions)
        self.objectives, (self.lower, self.upper) = list(objectives), cells

    def _value(self, x: np.ndarray) -> np.ndarray:
        mus, sds = [], []
        for model, sign in self.objectives:
            mean, var = model.predict(x, grad=False)
            mus.append(sign * mean)
            sds.append(np.sqrt(np.maximum(var, _MIN_VAR * model.output_scale**2)))
        mu, sd = np.stack(mus, -1)[:, None, :], np.stack(sds, -1)[:, None, :]  # (m, 1, k)
        lower, upper = self.lower[None], self.upper[None]  # (1, cells, k)

        def psi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            z = (b - mu) / sd
            return sd * np.exp(-0.5 * z * z) / _SQRT_2PI + (mu - a) * ndtr(-z)

        nu = (upper - lower) * ndtr(-(upper - mu) / sd)
        ehvi = (psi(lower, lower) - psi(lower, upper) + nu).prod(-1).sum(-1)
        return np.log(np.maximum(ehvi, 1e-300))

    def objective_term(self, x: np.ndarray, grad: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """log EHVI at the rows of ``x`` and its forward-difference gradient."""
        if not grad:
            return self._value(x), None
        m, d = x.shape
        shifted = np.repeat(x[None], d + 1, axis=0)  # (d + 1, m, d): x, then x + h e_j
        shifted[np.arange(1, d + 1), :, np.arange(d)] += _FD_STEP
        values = self._value(shifted.reshape(-1, d)).reshape(d + 1, m)
        return values[0], ((values[1:] - values[0]) / _FD_STEP).T


def maximize(
    acquisition: Acquisition,
    d: int,
    fixed: Mapping[int, float],
    settings: Mapping[str, float],
    seed: int,
    warm: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The best point found, and where every start ended (to warm-start the next candidate).

    Raw Sobol samples, and ``around_best`` more drawn around the acquisition's baseline
    (normal, ``around_sd`` in the unit cube; BoTorch's ``sample_around_best``: once a
    campaign is near an optimum, the acquisition's peak is a small region next to the best
    trial that few Sobol samples fall in), BoTorch's start heuristic, then L-BFGS-B from
    each start (BoTorch's batched L-BFGS-B: the starts' evaluations go in one call). With
    ``warm`` (the previous candidate's end points, best first), half the starts are those and
    half come from a quarter of the Sobol samples: the batch's next candidate's acquisition
    differs from the previous one's only near the points added since, so its other local
    optima are still good starts, and they converge in a few iterations.
    """
    free = [i for i in range(d) if i not in fixed]
    n_raw, n_starts = int(settings["raw_samples"]), int(settings["num_restarts"])
    if warm is not None and len(warm):
        n_raw, n_starts = max(n_raw // 4, n_starts), max(1, n_starts // 2)
    engine = torch.quasirandom.SobolEngine(len(free), scramble=True, seed=seed)  # type: ignore[no-untyped-call]
    raw = np.empty((n_raw, d))
    raw[:, free] = engine.draw(n_raw, dtype=torch.float64).numpy()
    for i, v in fixed.items():
        raw[:, i] = v
    around, B = int(settings.get("around_best", 0)), acquisition.B
    if around and B is not None and len(B):  # the same again around the baseline (refinement)
        rng = np.random.default_rng(seed)
        near = B[rng.integers(0, len(B), around)] + rng.normal(0.0, settings["around_sd"], (around, d))
        for i, v in fixed.items():
            near[:, i] = v
        raw = np.concatenate([raw, np.clip(near, 0.0, 1.0)])
    values = acquisition.screen(raw)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        starts_t, _ = initialize_q_batch(torch.from_numpy(raw), torch.from_numpy(values), n=n_starts)
    starts = starts_t.numpy()
    if warm is not None and len(warm):
        starts = np.concatenate([warm[: int(settings["num_restarts"]) - n_starts], starts])
    best_x = raw[int(np.argmax(values))]
    best_value = float(acquisition(best_x[None, :], grad=False)[0][0])  # screened on fewer draws
    template = best_x.copy()

    def negative(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # every start still running at once
        full = np.repeat(template[None, :], len(z), axis=0)
        full[:, free] = z
        value, slope = acquisition(full)
        return -value, -slope[:, free]  # type: ignore[index]

    # BoTorch's batched L-BFGS-B: one L-BFGS-B per start, their evaluations in one call.
    xs, fs, _ = fmin_l_bfgs_b_batched(negative, starts[:, free], bounds=[(0.0, 1.0)] * len(free),
                                      maxiter=int(settings["maxiter"]), factr=settings["factr"])
    xs, fs = np.atleast_2d(xs), np.atleast_1d(fs)
    ends = np.repeat(template[None, :], len(xs), axis=0)
    ends[:, free] = np.clip(xs, 0.0, 1.0)
    for x, f in zip(ends, fs, strict=True):
        if np.isfinite(f) and -f > best_value:
            best_value, best_x = -float(f), x.copy()
    order = np.argsort(np.where(np.isfinite(fs), fs, np.inf), kind="stable")
    return best_x, ends[order]


def feasible(x: np.ndarray, conditions: Sequence[tuple[FastGP, float, float]]) -> np.ndarray:
    """Which rows of ``x`` meet every condition by posterior means."""
    feasible = np.ones(len(x), dtype=bool)
    for model, sign, bound in conditions:
        feasible &= sign * model.predict(x, grad=False)[0] >= sign * bound
    return feasible


def incumbent(objective: tuple[FastGP, float], conditions: Sequence[tuple[FastGP, float, float]]) -> float | None:
    """The best posterior mean among the objective's data points feasible by posterior means
    (``Acquisition``'s ``best``): the mean at ``baseline``; None if no point is feasible."""
    model, sign = objective
    B = baseline(objective, conditions)
    return None if B is None else float(sign * model.predict(B, grad=False)[0][0])


def baseline(
    objective: tuple[FastGP, float], conditions: Sequence[tuple[FastGP, float, float]], seed: int | None = None
) -> np.ndarray | None:
    """``LogNEI``'s baseline, ``(k, d)``: the data points, feasible by posterior means, that are
    the best in at least one of ``PRUNE_DRAWS`` joint posterior draws of the objective, the one
    with the best posterior mean first (with ``seed`` None: that one alone); None if none is
    feasible.

    This is BoTorch's ``prune_inferior_points``, the baseline of Ax's default ``qLogNEI``: with
    noise, several trials near the optimum may be the best, and the improvement is measured
    against the best of their joint draws, not against one trial that may be a lucky reading.
    Without noise, only trials within the inferred noise of the best one join it, often none.
    Points more than ``_PRUNE_Z`` sd below another's lower bound are left out
    before drawing (they win no draw; the draws cost O(n^2) per point).
    """
    model, sign = objective
    x = model.X.numpy()
    x = x[feasible(x, conditions)]
    if not len(x):
        return None
    mean, var = model.predict(x, grad=False)
    value, sd = sign * mean, np.sqrt(np.maximum(var, 0.0))
    best = int(np.argmax(value))
    near = np.flatnonzero(value + _PRUNE_Z * sd >= (value - _PRUNE_Z * sd).max())
    if seed is None or len(near) < 2:
        return x[[best]]
    points = torch.from_numpy(x[near])
    m, cov = model.mean_and_covariance(points)
    jitter = 1e-8 * model.output_scale**2 * torch.eye(len(near), dtype=torch.float64)
    factor, info = torch.linalg.cholesky_ex(cov + jitter)
    if int(info):  # not positive definite even with the jitter: the best point alone, as before
        return x[[best]]
    normal = NormalQMCEngine(len(near), seed=seed, inv_transform=True).draw(PRUNE_DRAWS, dtype=torch.float64)
    winners = set(near[torch.unique((sign * (m + normal @ factor.T)).argmax(-1)).numpy()].tolist())
    return x[[best] + sorted(winners - {best})]


def hypercells(
    spec: CampaignSpec, objectives: Sequence[tuple[FastGP, float]], conditions: Sequence[tuple[FastGP, float, float]]
) -> tuple[np.ndarray, np.ndarray]:
    """The hypercells of the region that improves the hypervolume (BoTorch's partitioning).

    The front is that of the posterior means at the first objective's data points (feasible by
    posterior means); the reference point the objective thresholds, a missing one inferred
    from the front as BoTorch does (``infer_reference_point``).
    """
    x = objectives[0][0].X.numpy()
    Y = np.stack([sign * model.predict(x, grad=False)[0] for model, sign in objectives], -1)
    ok = feasible(x, conditions)
    Y_t = torch.from_numpy(Y[ok] if ok.any() else Y)
    inferred = infer_reference_point(Y_t).numpy() if len(Y_t) else np.zeros(len(objectives))
    ref = np.array([inferred[i] if o.threshold is None else (-o.threshold if o.minimize else o.threshold)
                    for i, o in enumerate(spec.objectives)])
    partitioning = FastNondominatedPartitioning(ref_point=torch.from_numpy(ref), Y=Y_t)
    lower, upper = partitioning.get_hypercell_bounds()
    return lower.numpy(), upper.clamp_max(1e10).numpy()
