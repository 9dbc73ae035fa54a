"""``FastGP``: BoTorch's default single-output GP, in a few tensor operations.

The model is the one Ax's BoTorch generator fits by default (``SingleTaskGP`` in BoTorch
0.18): a constant mean, an RBF kernel with one lengthscale per input and the dimension-scaled
log-normal lengthscale prior of Hvarfner et al. (2024) (``loc = sqrt(2) + log(d) / 2``,
``scale = sqrt(3)``, lengthscales >= 0.025), a homoscedastic Gaussian noise with a
LogNormal(-4, 1) prior (noise >= 1e-4), or a known noise per point; inputs in the unit cube,
outputs standardized; hyperparameters by maximum a posteriori with L-BFGS-B, started at the
priors' modes (on request at a noisy start too: ``noisy_start``). ``tests/unit/test_fastgp.py``
checks it against ``SingleTaskGP`` fitted with ``fit_gpytorch_mll`` on the same data: the same
marginal likelihood, hyperparameters and predictions.

Why not ``SingleTaskGP`` itself: GPyTorch's lazy-tensor machinery costs 3-4 ms per posterior
call of a 20-point batch here, whatever the size of the data, and an acquisition optimization
makes hundreds of calls; the same posterior from a cached inverse, in NumPy with the gradient
written out (``predict``), costs ~0.1 ms. The acquisition functions that use it are in
``optimizer.acquisition``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import cho_factor, cho_solve
from scipy.optimize import minimize
from torch import Tensor

__all__ = ["EXACT", "FastGP"]

MIN_LENGTHSCALE = 0.025
MIN_NOISE = 1e-4
# Upper bounds of the fit that BoTorch leaves open: a line search of L-BFGS-B can otherwise
# step the log noise past 709, where exp overflows (issue 14, item 8). Noise and lengthscales
# beyond them mean the same model (all noise; a flat dimension), so the fit loses nothing.
MAX_LENGTHSCALE = 1e4
MAX_NOISE = 1e3
MAX_CONSTANT = 1e4  # the constant mean, in standardized units
EXACT = 1e-6  # the noise variance (standardized) of a conditioned draw of the latent function
NOISE_PRIOR = (-4.0, 1.0)  # LogNormal(loc, scale) of the noise variance (standardized units)
NOISY_START = 0.3  # ``noisy_start``'s noise variance (standardized); lengthscales at the prior's median
_JITTER = 1e-8


def _lengthscale_prior(d: int) -> tuple[float, float]:
    return math.sqrt(2.0) + 0.5 * math.log(d), math.sqrt(3.0)


def _lognormal_logpdf(log_x: np.ndarray, loc: float, scale: float) -> np.ndarray:
    """The log-normal log density at ``exp(log_x)``."""
    return -log_x - math.log(scale) - 0.5 * math.log(2 * math.pi) - (log_x - loc) ** 2 / (2 * scale**2)


class FastGP:
    """An exact GP with BoTorch's default priors, fitted at construction.

    Args:
        X: Training inputs, ``(n, d)``, scaled to the unit cube.
        y: Training outputs, ``(n,)``, in the metric's units.
        yvar: Known noise variance per point (``(n,)``, the metric's units squared), or None to
            infer one noise level.
        maxiter: The most L-BFGS-B iterations of the fit.
        noisy_start: With inferred noise, also fit from a noisy start (``NOISY_START``, the
            lengthscale prior's median) and keep the better MAP (``_fit``).

    Attributes:
        lengthscale: ``(d,)``, in unit-cube units.
        noise: The inferred noise variance (standardized units), or None with known noise.
        constant: The constant mean (standardized units).
    """

    def __init__(self, X: Tensor, y: Tensor, yvar: Tensor | None = None, *, maxiter: int = 200,
                 noisy_start: bool = False) -> None:
        if X.ndim != 2 or y.shape != X.shape[:1] or len(y) == 0:
            raise ValueError(f"X must be (n, d) and y (n,), n >= 1; got {tuple(X.shape)} and {tuple(y.shape)}")
        self.X = X.to(torch.float64)
        self.train_y = y.to(torch.float64)
        self._mu = float(self.train_y.mean())
        sd = float(self.train_y.std()) if len(y) > 1 else 0.0
        self._sd = sd if sd > 0 else 1.0
        self.y = (self.train_y - self._mu) / self._sd
        self.yvar = None if yvar is None else yvar.to(torch.float64).clamp_min(0.0) / self._sd**2
        self._fit(maxiter, noisy_start)

    def condition_on(self, X: Tensor, y: Tensor, noise: float | None = None) -> FastGP:
        """This model with ``(X, y)`` added as data, hyperparameters and scaling unchanged.

        Args:
            X: The new inputs, ``(k, d)``.
            y: Their outputs, ``(k,)``, in the metric's units.
            noise: The new points' noise variance in standardized units: ``EXACT`` for values
                of the latent function itself (a joint draw); by default the inferred noise
                level, or the mean known noise.
        """
        new = FastGP.__new__(FastGP)
        new.X = torch.cat([self.X, X.to(torch.float64)])
        new.train_y = torch.cat([self.train_y, y.to(torch.float64)])
        new._mu, new._sd = self._mu, self._sd
        new.y = (new.train_y - new._mu) / new._sd
        new._point_noise = self._point_noise
        level = self._point_noise if noise is None else noise
        new.yvar = None if self.yvar is None and noise is None else torch.cat(
            [self._noise_diag(self.noise), torch.full((len(X),), level, dtype=torch.float64)])
        new.lengthscale, new.noise, new.constant = self.lengthscale, self.noise, self.constant
        new._factor()
        return new

    # ------------------------------------------------------------------ fit
    def _kernel(self, A: Tensor, B: Tensor, lengthscale: Tensor) -> Tensor:
        a, b = A / lengthscale, B / lengthscale
        sq = (a * a).sum(-1, keepdim=True) - 2 * a @ b.transpose(-1, -2) + (b * b).sum(-1).unsqueeze(-2)
        return torch.exp(-0.5 * sq.clamp_min(0.0))

    def _noise_diag(self, noise: Tensor | None) -> Tensor:
        """The noise variance per data point (standardized): known or conditioned, else ``noise``."""
        return self.yvar if self.yvar is not None else noise.expand(len(self.y))  # type: ignore[union-attr]

    def loss_and_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """GPyTorch's ``ExactMarginalLogLikelihood`` loss with the priors, negated, per point, and
        its gradient, at ``theta = (log lengthscales, log noise (unless known), constant)``.

        With ``alpha = K^-1 r``: d loglik / d theta = tr((alpha alpha^T - K^-1) dK / d theta) / 2,
        where dK / d log l_j = K_kernel * (x_aj - x_bj)^2 / l_j^2 and dK / d log noise = noise I;
        d loglik / d constant = sum(alpha). In NumPy: five to ten times cheaper than autograd
        through a torch graph at tens of points. ``tests/unit/test_fastgp.py`` checks it against
        GPyTorch's.
        """
        X, y = self.X.numpy(), self.y.numpy()
        n, d = X.shape
        lengthscale = np.exp(np.minimum(theta[:d], math.log(MAX_LENGTHSCALE)))
        noise = float(np.exp(min(theta[d], math.log(MAX_NOISE)))) if self.yvar is None else None
        constant = theta[-1]
        diffs = (X[:, None, :] - X[None, :, :]) / lengthscale  # (n, n, d)
        sq = diffs * diffs
        kern = np.exp(-0.5 * sq.sum(-1))
        noise_diag = self.yvar.numpy() if noise is None else np.full(n, noise)  # type: ignore[union-attr]
        K = kern + np.diag(noise_diag) + _JITTER * np.eye(n)
        try:
            factor = cho_factor(K, lower=True)
        except (np.linalg.LinAlgError, ValueError):  # not positive definite, or not finite
            return math.inf, np.zeros_like(theta)
        r = y - constant
        alpha = cho_solve(factor, r)
        Kinv = cho_solve(factor, np.eye(n))
        loglik = -0.5 * r @ alpha - np.log(np.diagonal(factor[0])).sum() - 0.5 * n * math.log(2 * math.pi)
        outer = 0.5 * (np.outer(alpha, alpha) - Kinv)  # (n, n)
        grad = np.empty_like(theta)
        grad[:d] = np.einsum("ab,abj->j", outer * kern, sq)
        loc, scale = _lengthscale_prior(d)
        logprior = _lognormal_logpdf(theta[:d], loc, scale).sum()
        grad[:d] += -1.0 - (theta[:d] - loc) / scale**2
        if noise is not None:
            grad[d] = noise * np.trace(outer) - 1.0 - (theta[d] - NOISE_PRIOR[0]) / NOISE_PRIOR[1] ** 2
            logprior += _lognormal_logpdf(theta[d:d + 1], *NOISE_PRIOR).sum()
        grad[-1] = alpha.sum()
        return -float(loglik + logprior) / n, -grad / n

    def _fit(self, maxiter: int, noisy_start: bool = False) -> None:
        """MAP by L-BFGS-B from the priors' modes (as BoTorch starts) and, with ``noisy_start``
        and inferred noise, from a noisy start too; the better optimum of the posterior is kept.

        From the modes alone (noise ~0.7 % of the variance), noisy data are often fitted by short
        lengthscales that interpolate the noise, a local optimum the fit does not leave. The
        engine's fit does not take the second start (it did not pay in campaigns); the
        model-based best does (``optimizer.model_best``; figures in ``benchmarks/README.md``).
        """
        d = self.X.shape[1]
        loc, scale = _lengthscale_prior(d)
        x0 = [loc - scale**2] * d  # log of the prior's mode, as BoTorch initializes
        bounds: list[tuple[float, float]] = [(math.log(MIN_LENGTHSCALE), math.log(MAX_LENGTHSCALE))] * d
        starts = [x0]
        if self.yvar is None:
            x0.append(NOISE_PRIOR[0] - NOISE_PRIOR[1] ** 2)
            bounds.append((math.log(MIN_NOISE), math.log(MAX_NOISE)))
            if noisy_start:
                starts.append([loc] * d + [math.log(NOISY_START)])
        bounds.append((-MAX_CONSTANT, MAX_CONSTANT))
        theta_np, best = np.array(x0 + [0.0]), math.inf
        for start in starts:
            result = minimize(self.loss_and_gradient, np.array(start + [0.0]), jac=True, method="L-BFGS-B",
                              bounds=bounds, options={"maxiter": maxiter})
            if np.isfinite(result.fun) and result.fun < best:
                theta_np, best = result.x, float(result.fun)
        theta = torch.tensor(theta_np, dtype=torch.float64)
        self.lengthscale = torch.exp(theta[:d])
        self.noise = torch.exp(theta[d]) if self.yvar is None else None
        # A conditioned point's noise by default: the inferred level, or the mean known noise.
        self._point_noise = float(self.noise if self.noise is not None else self.yvar.mean())  # type: ignore[union-attr]
        self.constant = float(theta[-1])
        self._factor()

    def _factor(self) -> None:
        n = len(self.y)
        K = self._kernel(self.X, self.X, self.lengthscale) + torch.diag(self._noise_diag(self.noise))
        self._L = torch.linalg.cholesky(K + _JITTER * torch.eye(n, dtype=K.dtype))
        self._alpha = torch.cholesky_solve((self.y - self.constant).unsqueeze(-1), self._L).squeeze(-1)
        # NumPy copies for ``predict`` (an acquisition optimizer's inner loop).
        self._np_Zs = (self.X / self.lengthscale).numpy()
        self._np_l = self.lengthscale.numpy()
        self._np_alpha = self._alpha.numpy()
        self._np_Kinv = torch.cholesky_inverse(self._L).numpy()

    # ------------------------------------------------------------ posterior
    @property
    def output_scale(self) -> float:
        """The standard deviation the outputs were standardized by (1 for constant outputs)."""
        return self._sd

    def weights(self, y: Tensor) -> np.ndarray:
        """``K^-1 (y - mean)`` for other outputs at the data points: ``y`` is ``(S, n)`` in the
        metric's units; the result ``(n, S)`` goes to ``predict(..., weights=)``."""
        standardized = (y.to(torch.float64) - self._mu) / self._sd - self.constant
        return torch.cholesky_solve(standardized.T, self._L).numpy()

    def predict(self, x: np.ndarray, grad: bool = True, weights: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Posterior mean and variance at the rows of ``x`` (``(m, d)``), and their gradients.

        NumPy, with the gradients written out (``dk_i/dx = -k_i (x - z_i) / l**2``), because
        autograd costs ~1 ms per call here, more than the arithmetic.

        Args:
            x: Points in the unit cube, ``(m, d)``.
            grad: Also return the gradients.
            weights: ``weights(y)`` for ``S`` other outputs at the data points (draws of a
                fantasy): the means are then ``(m, S)``; without gradients (a fantasy's
                gradient: ``predict_draws`` and ``mean_gradient``).

        Returns:
            ``mean``, ``var (m,)`` and, with ``grad``, ``dmean``, ``dvar (m, d)``; in the
            metric's units.
        """
        if grad and weights is not None:
            raise ValueError("predict(weights=...) has no gradients: use predict_draws and mean_gradient")
        mean, var, k, xs, w = self._mean_var(x, self._np_alpha if weights is None else weights)
        if not grad:
            return mean, var
        dmean = self.mean_gradient(x, k, np.broadcast_to(self._np_alpha, k.shape))
        return mean, var, dmean, self._variance_gradient(k, xs, w)

    def predict_draws(self, x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What a fantasy's acquisition needs at the rows of ``x``: the means of ``S`` draws
        ``(m, S)``, the variance ``(m,)`` and its gradient ``(m, d)``, and the kernel rows
        ``(m, n)`` for ``mean_gradient`` (the per-draw mean gradients, ``(m, S, d)``, are never
        formed: only their weighted sum is needed)."""
        mean, var, k, xs, w = self._mean_var(x, weights)
        return mean, var, self._variance_gradient(k, xs, w), k

    def mean_gradient(self, x: np.ndarray, k: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """``sum_n beta[m, n] d k(x_m, z_n) / dx_m``, in the metric's units, ``(m, d)``.

        With ``beta = c @ weights.T`` this is ``sum_s c[m, s] dmean[m, s]``: the gradient of a
        weighted sum of the draws' means, for the price of one mean's gradient.
        """
        kb = k * beta
        return -((x / self._np_l) * kb.sum(1)[:, None] - kb @ self._np_Zs) / self._np_l * self._sd

    def _mean_var(self, x: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, ...]:
        """Mean, variance, the kernel rows ``k``, ``x / l`` and ``K^-1 k`` per row."""
        xs = x / self._np_l
        diff_sq = (xs * xs).sum(1)[:, None] - 2.0 * xs @ self._np_Zs.T + (self._np_Zs**2).sum(1)[None, :]
        k = np.exp(-0.5 * np.maximum(diff_sq, 0.0))  # (m, n)
        w = k @ self._np_Kinv
        mean = (self.constant + k @ alpha) * self._sd + self._mu
        var = np.maximum(1.0 - (w * k).sum(1), 0.0) * self._sd**2
        return mean, var, k, xs, w

    def _variance_gradient(self, k: np.ndarray, xs: np.ndarray, w: np.ndarray) -> np.ndarray:
        wk = w * k
        return 2.0 * (xs * wk.sum(1)[:, None] - wk @ self._np_Zs) / self._np_l * self._sd**2

    def mean_and_covariance(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """The latent function's posterior mean ``(..., q)`` and covariance ``(..., q, q)`` at ``X``."""
        Kxz = self._kernel(X, self.X, self.lengthscale)  # (..., q, n)
        mean = self.constant + Kxz @ self._alpha
        Lb = self._L.expand(*Kxz.shape[:-2], *self._L.shape)
        v = torch.linalg.solve_triangular(Lb, Kxz.transpose(-1, -2), upper=False)  # (..., n, q)
        covar = self._kernel(X, X, self.lengthscale) - v.transpose(-1, -2) @ v
        return mean * self._sd + self._mu, covar * self._sd**2
