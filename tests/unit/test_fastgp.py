"""``FastGP`` and the fast method's acquisition checked against BoTorch on the same data.

``FastGP`` stands in for BoTorch's ``SingleTaskGP`` (see ``optimizer.fastgp``): it must fit the
same hyperparameters, predict the same posterior and give exact gradients; ``log_h`` must be
BoTorch's ``_log_ei_helper``; ``LogNEI`` must be BoTorch's ``qLogNoisyExpectedImprovement``
(Ax's default); the acquisition maximizer must find what ``optimize_acqf`` finds for BoTorch's
own ``LogExpectedImprovement``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from botorch.acquisition.analytic import LogExpectedImprovement, _log_ei_helper
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms import Standardize
from botorch.optim import optimize_acqf
from botorch.sampling import SobolQMCNormalSampler
from botorch.test_functions import Hartmann
from gpytorch.mlls import ExactMarginalLogLikelihood

from campaigns import Measurement, parse_spec
from optimizer.acquisition import Acquisition, LogNEI, baseline, incumbent, log_h, maximize
from optimizer.fastbo import FAST_SETTINGS
from optimizer.model_best import entries_best
from optimizer.fastgp import FastGP
from optimizer.records import TrialEntry

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")


def data(n: int, d: int, seed: int, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=torch.float64)
    y = Hartmann(dim=6).evaluate_true(torch.cat([X, torch.full((n, 6 - d), 0.5, dtype=torch.float64)], -1))
    return X, y + noise * torch.randn(n, generator=g, dtype=torch.float64)


def reference(X: torch.Tensor, y: torch.Tensor) -> SingleTaskGP:
    model = SingleTaskGP(X, y.unsqueeze(-1), outcome_transform=Standardize(1))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model


@pytest.mark.parametrize(("n", "d", "noise"), [(12, 2, 0.0), (30, 6, 0.0), (40, 3, 0.05)])
def test_fastgp_fits_and_predicts_as_singletaskgp(n: int, d: int, noise: float) -> None:
    X, y = data(n, d, seed=n, noise=noise)
    ours, ref = FastGP(X, y), reference(X, y)
    assert ours.lengthscale.numpy() == pytest.approx(ref.covar_module.lengthscale.detach().reshape(-1).numpy(), rel=2e-2)
    assert float(ours.noise) == pytest.approx(float(ref.likelihood.noise), rel=5e-2, abs=2e-5)  # type: ignore[arg-type]
    T = torch.rand(50, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        posterior = ref.posterior(T)
    mean, var = ours.predict(T.numpy(), grad=False)
    scale = float(y.std())
    assert np.abs(mean - posterior.mean.reshape(-1).numpy()).max() < 1e-3 * scale
    assert np.abs(np.sqrt(var) - posterior.variance.reshape(-1).sqrt().numpy()).max() < 1e-3 * scale


@pytest.mark.parametrize("known_noise", [False, True])
def test_the_fits_loss_and_gradient_are_gpytorchs(known_noise: bool) -> None:
    X, y = data(15, 3, seed=4)
    yvar = torch.full((15,), 1e-3, dtype=torch.float64) if known_noise else None
    ours = FastGP(X, y, yvar)
    model = SingleTaskGP(X, y.unsqueeze(-1), None if yvar is None else yvar.unsqueeze(-1), outcome_transform=Standardize(1))
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    model.train()
    rng = np.random.default_rng(0)
    for _ in range(3):  # away from the fit's optimum, where the gradient is not ~0
        lengthscale = rng.uniform(0.1, 2.0, 3)
        noise = rng.uniform(1e-3, 0.1)
        constant = rng.normal()
        theta = np.log(lengthscale).tolist() + ([] if known_noise else [math.log(noise)]) + [constant]
        model.covar_module.lengthscale = torch.tensor(lengthscale)
        if not known_noise:
            model.likelihood.noise = torch.tensor(noise)
        model.mean_module.constant = torch.tensor(constant)
        expected = -float(mll(model(*model.train_inputs), model.train_targets))
        loss, grad = ours.loss_and_gradient(np.array(theta))
        assert loss == pytest.approx(expected, rel=1e-6)
        for j in range(len(theta)):
            step = np.zeros(len(theta))
            step[j] = 1e-6
            assert (ours.loss_and_gradient(np.array(theta) + step)[0] - loss) / 1e-6 == pytest.approx(grad[j], rel=1e-3, abs=1e-5)


def test_predict_gradients_and_known_noise() -> None:
    X, y = data(25, 3, seed=3)
    model = FastGP(X, y, yvar=torch.full((25,), 1e-4, dtype=torch.float64))
    assert model.noise is None
    x = np.random.default_rng(0).random((6, 3))
    mean, var, dmean, dvar = model.predict(x)
    for j in range(3):
        step = np.zeros(3)
        step[j] = 1e-6
        m2, v2 = model.predict(x + step, grad=False)
        assert (m2 - mean) / 1e-6 == pytest.approx(dmean[:, j], rel=1e-3, abs=1e-4)
        assert (v2 - var) / 1e-6 == pytest.approx(dvar[:, j], rel=1e-3, abs=1e-4)
    # Conditioning on a point at its mean keeps the mean and shrinks the variance there.
    x0 = x[:1]
    conditioned = model.condition_on(torch.from_numpy(x0), torch.from_numpy(mean[:1]))
    m0, v0 = conditioned.predict(x0, grad=False)
    assert m0[0] == pytest.approx(mean[0], abs=1e-6) and v0[0] < var[0] / 10


def test_log_h_is_botorchs_log_ei_helper_with_its_derivative() -> None:
    u = np.concatenate([np.linspace(-300, 8, 3001), [-1.0, -1.0 - 1e-9, -30.0, -30.0 - 1e-9, -1e4]])
    value, slope = log_h(u)
    ref_u = torch.tensor(u, requires_grad=True)
    ref = _log_ei_helper(ref_u)
    ref.sum().backward()
    assert np.abs(value - ref.detach().numpy()).max() < 1e-6
    assert np.abs(slope - ref_u.grad.numpy()).max() / np.abs(slope).max() < 1e-6  # type: ignore[union-attr]


def test_acquisition_gradients_match_finite_differences() -> None:
    X, y = data(20, 3, seed=5)
    model = FastGP(X, y)
    x = np.random.default_rng(1).random((4, 3))
    g = torch.Generator().manual_seed(0)
    B = baseline((model, -1.0), [])
    assert B is not None
    for acquisition in (
        Acquisition((model, -1.0), float(-y.min()), [(model, 1.0, -1.0)]),
        LogNEI((model, -1.0), B, np.random.default_rng(2).random((2, 3)), [], g),
    ):
        value, slope = acquisition(x)
        for j in range(3):
            step = np.zeros(3)
            step[j] = 1e-6
            shifted, _ = acquisition(x + step, grad=False)
            assert (shifted - value) / 1e-6 == pytest.approx(slope[:, j], rel=1e-3, abs=1e-3)  # type: ignore[index]


@pytest.mark.parametrize("pending", [0, 2])
def test_log_nei_is_botorchs_qlognei(pending: int) -> None:
    X, y = data(20, 3, seed=6)
    model = FastGP(X, y)
    ref = SingleTaskGP(X, -y.unsqueeze(-1), outcome_transform=Standardize(1))  # maximizes -y
    ref.covar_module.lengthscale = model.lengthscale
    ref.likelihood.noise = model.noise
    ref.mean_module.constant = -model.constant
    ref.eval()
    B = baseline((model, -1.0), [])
    assert B is not None
    P = np.random.default_rng(4).random((pending, 3))
    x = np.concatenate([np.random.default_rng(3).random((30, 3)), B + 0.02, B])
    ours = LogNEI((model, -1.0), B, P, [], torch.Generator().manual_seed(0), samples=4096)(x, grad=False)[0]
    # The improvement over the best of the baseline and the pending points, jointly drawn.
    sampler = SobolQMCNormalSampler(torch.Size([4096]), seed=0)
    theirs_acq = qLogNoisyExpectedImprovement(ref, X_baseline=torch.from_numpy(np.concatenate([B, P])),
                                              prune_baseline=False, sampler=sampler)
    with torch.no_grad():
        theirs = theirs_acq(torch.from_numpy(x)[:, None, :]).numpy()
    # BoTorch's smoothing floors a hopeless point's value near -40, and a tried point's
    # (where the improvement is exactly 0 in every joint draw) near -14: elsewhere they agree.
    meaningful = (theirs > -20) & (np.arange(len(x)) < len(x) - len(B))
    assert meaningful.sum() >= 5
    assert np.abs(ours - theirs)[meaningful].max() < 0.15
    assert ours.argmax() == theirs.argmax()
    # At a tried point nothing is to gain but what the noise hides: far below a point nearby.
    assert ours[-1] < ours[-2] - 1.0


def test_the_baseline_is_botorchs_pruned_baseline() -> None:
    X, y = data(30, 3, seed=7, noise=0.1)  # noisy: several trials may be the best
    model = FastGP(X, y)
    ours = baseline((model, -1.0), [], seed=0)
    assert ours is not None
    rows = [int(np.abs(X.numpy() - b).max(1).argmin()) for b in ours]
    assert rows[0] == int(np.argmin(model.predict(X.numpy(), grad=False)[0]))  # the best posterior mean first
    assert len(rows) >= 2
    # How often each trial is the best in BoTorch's own joint draws of the same model.
    ref = SingleTaskGP(X, -y.unsqueeze(-1), outcome_transform=Standardize(1))  # maximizes -y
    ref.covar_module.lengthscale = model.lengthscale
    ref.likelihood.noise = model.noise
    ref.mean_module.constant = -model.constant
    ref.eval()
    with torch.no_grad():
        draws = SobolQMCNormalSampler(torch.Size([16384]), seed=1)(ref.posterior(X)).squeeze(-1)
    share = torch.bincount(draws.argmax(-1), minlength=len(X)).numpy() / 16384
    assert set(rows) >= set(np.flatnonzero(share > 0.01).tolist())  # every likely best is in
    assert share[rows].min() > 0  # and nothing that is never the best
    assert baseline((model, -1.0), []) == pytest.approx(ours[:1])  # without a seed: the best alone


def test_without_noise_the_baseline_is_the_best_trial_and_its_near_ties() -> None:
    X, y = data(30, 3, seed=7)
    model = FastGP(X, y)
    B = baseline((model, -1.0), [], seed=0)
    assert B is not None
    rows = [int(np.abs(X.numpy() - b).max(1).argmin()) for b in B]
    assert rows[0] == int(np.argmin(model.predict(X.numpy(), grad=False)[0]))
    # Only trials within a few of the inferred noise's sds of the best (here 0.008 apart, noise sd 0.012).
    noise_sd = math.sqrt(float(model.noise)) * float(y.std())  # type: ignore[arg-type]
    assert float(y[rows].max() - y.min()) < 3 * noise_sd
    assert 1 <= len(rows) <= 3


@pytest.mark.parametrize("seed", [0, 1])
def test_the_maximizer_finds_what_optimize_acqf_finds(seed: int) -> None:
    X, y = data(25, 6, seed=10 + seed)
    model = FastGP(X, y)
    acquisition = Acquisition((model, -1.0), incumbent((model, -1.0), []), [])
    ours, _ = maximize(acquisition, 6, {}, FAST_SETTINGS, seed)
    botorch_ei = LogExpectedImprovement(reference(X, -y), best_f=float(acquisition.best))  # type: ignore[arg-type]
    bounds = torch.stack([torch.zeros(6), torch.ones(6)]).to(torch.float64)
    theirs, _ = optimize_acqf(botorch_ei, bounds=bounds, q=1, num_restarts=20, raw_samples=1024)
    value_ours = acquisition(ours[None], grad=False)[0][0]
    value_theirs = acquisition(theirs.numpy(), grad=False)[0][0]
    assert value_ours >= value_theirs - 0.01 * abs(value_theirs)
    assert math.isfinite(value_ours)


def test_the_model_best_point_is_not_fooled_by_one_lucky_reading() -> None:
    spec = parse_spec({
        "name": "noisy", "seed": 0, "budget": {"max_trials": 50}, "objectives": [{"name": "y", "minimize": True}],
        "parameters": [{"name": "x1", "type": "float", "bounds": [0.0, 1.0]},
                       {"name": "x2", "type": "float", "bounds": [0.0, 1.0]}],
        "devices": [{"id": "d", "measures": ["y"]}],
    })
    rng = np.random.default_rng(0)

    def f(x1: float, x2: float) -> float:
        return (x1 - 0.3) ** 2 + (x2 - 0.7) ** 2

    def entry(i: int, x1: float, x2: float, y: float) -> TrialEntry:
        return TrialEntry(str(i), {"x1": x1, "x2": x2}, "sobol", None, "completed", {"y": Measurement(mean=y)})

    points = torch.quasirandom.SobolEngine(2, scramble=True, seed=0).draw(30, dtype=torch.float64).tolist()
    entries = [entry(i, x1, x2, f(x1, x2) + 0.02 * rng.normal()) for i, (x1, x2) in enumerate(points)]
    # Five measurements of one mediocre point: four read its value, one is a lucky -0.2.
    far = (0.9, 0.1)
    entries += [entry(30 + k, *far, f(*far) + 0.02 * rng.normal() - (0.2 + f(*far) if k == 4 else 0.0))
                for k in range(5)]
    lucky = min(entries, key=lambda t: t.measurements["y"].mean)
    assert lucky.trial_id == "34"  # the best observed value is the lucky reading
    best = entries_best(spec, entries).pick
    assert best is not None and best.parameters != lucky.parameters
    assert f(best.parameters["x1"], best.parameters["x2"]) < 0.05  # type: ignore[arg-type]  # the lucky point: 0.72
    # Several objectives have a front, not a best point.
    two = spec.model_copy(update={"objectives": [*spec.objectives, spec.objectives[0].model_copy(update={"name": "z"})]})
    assert entries_best(two, entries).pick is None


def hartmann3_campaign(seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where a noisy Hartmann3 campaign stands at 30 trials: 18 Sobol points and 12 near the
    optimum; the inputs, the noisy readings and the true values."""
    g = torch.Generator().manual_seed(seed)
    optimum = torch.tensor([0.114614, 0.555649, 0.852547], dtype=torch.float64)
    X = torch.cat([torch.quasirandom.SobolEngine(3, scramble=True, seed=seed).draw(18, dtype=torch.float64),
                   (optimum + 0.08 * torch.randn(12, 3, generator=g, dtype=torch.float64)).clamp(0, 1)])
    f = Hartmann(dim=3).evaluate_true(X)
    return X, f + noise * torch.randn(30, generator=g, dtype=torch.float64), f


def test_a_noisy_start_finds_the_better_fit_where_the_modes_alone_interpolate_the_noise() -> None:
    X, y, _ = hartmann3_campaign(seed=49, noise=0.3)
    true_noise = 0.3**2 / float(y.std()) ** 2  # standardized, as FastGP.noise
    plain, noisy = FastGP(X, y), FastGP(X, y, noisy_start=True)

    def loss(model: FastGP) -> float:
        theta = np.r_[np.log(model.lengthscale.numpy()), math.log(float(model.noise)), model.constant]  # type: ignore[arg-type]
        return model.loss_and_gradient(theta)[0]

    assert float(plain.noise) < true_noise / 3  # type: ignore[arg-type]  # short lengthscales fit the noise
    assert loss(noisy) < loss(plain)  # a better optimum of the same posterior
    assert true_noise / 2 < float(noisy.noise) < 2 * true_noise  # type: ignore[arg-type]
    # On noise-free data both starts end at the same fit; with known noise there is no second start.
    X0, y0 = data(20, 3, seed=1)
    assert FastGP(X0, y0, noisy_start=True).lengthscale.numpy() == pytest.approx(FastGP(X0, y0).lengthscale.numpy(), rel=1e-4)
    yvar = torch.full((30,), 0.09, dtype=torch.float64)
    assert torch.equal(FastGP(X, y, yvar, noisy_start=True).lengthscale, FastGP(X, y, yvar).lengthscale)


def test_the_model_best_point_is_fitted_from_a_noisy_start_too() -> None:
    # The same campaign: the fit from the priors' modes alone interpolates the noise, so its best
    # posterior mean is the best reading, a lucky one; the better fit picks a better trial.
    X, y, f = hartmann3_campaign(seed=49, noise=0.3)
    spec = parse_spec({
        "name": "noisy", "seed": 0, "budget": {"max_trials": 30}, "objectives": [{"name": "y", "minimize": True}],
        "parameters": [{"name": f"x{i}", "type": "float", "bounds": [0.0, 1.0]} for i in range(3)],
        "devices": [{"id": "d", "measures": ["y"]}],
    })
    entries = [TrialEntry(str(i), {f"x{j}": float(v) for j, v in enumerate(x)}, "sobol", None, "completed",
                          {"y": Measurement(mean=float(v))}) for i, (x, v) in enumerate(zip(X, y, strict=True))]
    plain = FastGP(X, y)
    plain_pick = int(np.argmin(plain.predict(X.numpy(), grad=False)[0]))
    observed_best = int(torch.argmin(y))
    assert plain_pick == observed_best and float(f[observed_best]) + 3.86278 > 0.05
    best = entries_best(spec, entries).pick
    assert best is not None and int(best.trial_id) != observed_best
    assert float(f[int(best.trial_id)]) + 3.86278 < 0.02
