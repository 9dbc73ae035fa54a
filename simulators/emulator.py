"""An emulator built from a recorded campaign: one Gaussian process per metric, served as an instrument.

``Emulator.fit(spec, trials)`` fits a BoTorch ``SingleTaskGP`` to every metric measured in the
campaign's completed trials; ``evaluate`` returns the model's noise-free prediction and
``noise_sd`` the observation noise an instrument built on it adds (the recorded standard errors
when every trial reported one, the fitted noise of the GP otherwise).

The model, per metric:

- inputs in the spec's order: floats and ints as numbers (in log space when ``log_scale``),
  ordered choices as their index, other choices one-hot; scaled to the unit cube by the
  spec's bounds (``Normalize``);
- outputs standardized (``Standardize``); a Matérn-5/2 ARD kernel with BoTorch's default
  dimension-scaled priors (``kernel="rbf"`` for BoTorch's default RBF kernel);
- ``warp="auto"`` (the default) also fits a GP to ``log|y|`` when every value has the same
  strict sign, and keeps whichever of the two predicts the training data better in
  leave-one-out cross-validation (the closed form, at the fitted hyperparameters). The
  prediction of the log model is ``sign * exp(mean of log|y|)``, the posterior median.

Deterministic given the data and the seed. Torch is imported when an emulator is fitted.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from campaigns.errors import ClosedLoopError
from campaigns.events import Measurement, ParameterValue
from campaigns.spec import CampaignSpec, ChoiceParameter
from campaigns.state import TrialRecord

if TYPE_CHECKING:
    import torch
    from botorch.models import SingleTaskGP

__all__ = ["MIN_POINTS", "Emulator", "EmulatorError", "r2_score"]

MIN_POINTS = 3  # fewer completed trials than this cannot pin down a GP's hyperparameters
_FORMAT = "closedloop-emulator"

Kernel = Literal["matern", "rbf"]
Warp = Literal["auto", "none", "log"]


class EmulatorError(ClosedLoopError):
    """An emulator cannot be built from this campaign (too few trials, an unknown metric, ...)."""


def r2_score(truth: Sequence[float], predicted: Sequence[float]) -> float:
    """The coefficient of determination ``1 - SS_res / SS_tot`` of predictions against the truth.

    Returns 1.0 for a perfect prediction of constant truth, 0.0 for an imperfect one (as
    scikit-learn does). Raises ``ValueError`` for sequences of different or zero length.
    """
    if len(truth) != len(predicted) or not truth:
        raise ValueError(f"r2_score needs two equally long, non-empty sequences (got {len(truth)} and {len(predicted)})")
    mean = math.fsum(truth) / len(truth)
    ss_tot = math.fsum((t - mean) ** 2 for t in truth)
    ss_res = math.fsum((t - p) ** 2 for t, p in zip(truth, predicted, strict=True))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


@dataclass(frozen=True)
class _Row:
    parameters: dict[str, ParameterValue]
    measurements: dict[str, Measurement]


@dataclass
class _MetricModel:
    """The GP of one metric and what describes it."""

    metric: str
    model: SingleTaskGP
    warp: Literal["none", "log"]
    sign: float  # for warp="log": y = sign * exp(z)
    points: int
    loo_r2: float
    noise_sd: float
    noise_source: Literal["fitted", "recorded sem"]

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        with torch.no_grad():
            posterior = self.model.posterior(x)
            mean, var = posterior.mean.squeeze(-1), posterior.variance.squeeze(-1).clamp_min(0.0)
        if self.warp == "none":
            return mean, var.sqrt()
        # log|y| ~ N(mean, var): report the median sign * exp(mean) and the log-normal sd.
        return self.sign * mean.exp(), (torch.expm1(var).clamp_min(0.0) * (2 * mean + var).exp()).sqrt()


class _Encoder:
    """Parameters (spec order) → model columns, with the bounds that scale them to the unit cube."""

    def __init__(self, spec: CampaignSpec) -> None:
        self.spec = spec
        self.lower: list[float] = []
        self.upper: list[float] = []
        for p in spec.parameters:
            if isinstance(p, ChoiceParameter):
                ranges = [(0.0, len(p.values) - 1.0)] if p.is_ordered else [(0.0, 1.0)] * len(p.values)
            elif p.log_scale:
                ranges = [(math.log(p.bounds[0]), math.log(p.bounds[1]))]
            else:
                ranges = [(float(p.bounds[0]), float(p.bounds[1]))]
            self.lower += [low for low, _ in ranges]
            self.upper += [high for _, high in ranges]

    def encode(self, rows: Sequence[Mapping[str, ParameterValue]]) -> torch.Tensor:
        import torch

        return torch.tensor([self._row(r) for r in rows], dtype=torch.float64).reshape(len(rows), len(self.lower))

    def _row(self, row: Mapping[str, ParameterValue]) -> list[float]:
        out: list[float] = []
        for p in self.spec.parameters:
            if p.name not in row:
                names = ", ".join(q.name for q in self.spec.parameters)
                raise EmulatorError(f"a point has no value for parameter {p.name!r}",
                                    f"give every parameter of the campaign: {names}")
            value = row[p.name]
            if isinstance(p, ChoiceParameter):
                if value not in p.values:
                    raise EmulatorError(f"parameter {p.name!r}: {value!r} is not one of its values {p.values}",
                                        "use one of the campaign's values")
                index = p.values.index(value)  # type: ignore[arg-type]
                out += [float(index)] if p.is_ordered else [float(i == index) for i in range(len(p.values))]
            elif isinstance(value, str) or not math.isfinite(float(value)) or (p.log_scale and float(value) <= 0):
                raise EmulatorError(f"parameter {p.name!r}: {value!r} is not a usable number",
                                    "give a finite number (above 0 for a log-scale parameter)")
            else:
                out.append(math.log(float(value)) if p.log_scale else float(value))
        return out


class Emulator:
    """A GP per metric fitted to a recorded campaign's completed trials.

    Build one with :meth:`fit` (or :meth:`load`); then :meth:`evaluate` gives the noise-free
    prediction at a point and :meth:`noise_sd` the noise an instrument adds to it
    (:meth:`measure` does both).

    Attributes:
        spec: The campaign spec the emulator was fitted to (its parameters are the inputs).
        inputs: Parameter names, in the spec's order.
        metrics: The metrics modelled.
    """

    def __init__(self, spec: CampaignSpec, rows: list[_Row], models: dict[str, _MetricModel],
                 options: dict[str, Any]) -> None:
        """Use :meth:`fit` or :meth:`load`."""
        self.spec = spec
        self.inputs: list[str] = [p.name for p in spec.parameters]
        self.metrics: list[str] = list(models)
        self._rows = rows
        self._models = models
        self._options = options
        self._encoder = _Encoder(spec)

    @classmethod
    def fit(cls, spec: CampaignSpec, trials: Iterable[TrialRecord], *, metrics: Sequence[str] | None = None,
            max_points: int | None = None, seed: int = 0, kernel: Kernel = "matern", warp: Warp = "auto") -> Emulator:
        """Fit one GP per metric to the completed trials.

        Args:
            spec: The campaign's spec (its current one: the parameters and bounds it ends with).
            trials: The campaign's trials, e.g. ``fold(events).trials.values()``; only completed
                ones are used.
            metrics: The metrics to model; default: every metric measured in a completed trial
                (the spec's metrics first).
            max_points: Fit on at most this many completed trials (a random subset drawn with
                ``seed``), to bound the fitting time of long campaigns.
            seed: Seeds the subset and the fit.
            kernel: ``matern`` (Matérn-5/2 ARD) or ``rbf`` (BoTorch's default), both with
                BoTorch's dimension-scaled lengthscale priors.
            warp: ``auto`` (model ``log|y|`` where that cross-validates better), ``none``, or
                ``log`` (wherever the values share a sign).

        Raises:
            EmulatorError: too few completed trials, a metric never measured, unusable values.
        """
        done = sorted((t for t in trials if t.status == "completed"), key=lambda t: t.index)
        if max_points is not None and len(done) > max_points:
            if max_points < MIN_POINTS:
                raise EmulatorError(f"max_points={max_points} is too few to fit a model",
                                    f"give max_points of at least {MIN_POINTS}")
            done = sorted(random.Random(seed).sample(done, max_points), key=lambda t: t.index)
        rows = [_Row(dict(t.parameters), dict(t.measurements)) for t in done]
        options = {"seed": seed, "kernel": kernel, "warp": warp, "metrics": list(metrics) if metrics else None}
        return cls._from_rows(spec, rows, options)

    @classmethod
    def _from_rows(cls, spec: CampaignSpec, rows: list[_Row], options: dict[str, Any]) -> Emulator:
        measured = _measured_metrics(spec, rows)
        wanted: list[str] = options["metrics"] or measured
        if not wanted:
            raise EmulatorError(f"campaign {spec.name!r} has no completed trial with a measurement",
                                f"run at least {MIN_POINTS} trials to completion first",
                                campaign_id=spec.name)
        for metric in wanted:
            if metric not in measured:
                raise EmulatorError(f"metric {metric!r} was never measured in campaign {spec.name!r}",
                                    f"choose among the measured metrics: {', '.join(measured) or 'none'}",
                                    campaign_id=spec.name)
        encoder = _Encoder(spec)
        models: dict[str, _MetricModel] = {}
        for metric in wanted:
            points = [r for r in rows if metric in r.measurements]
            if len(points) < MIN_POINTS:
                raise EmulatorError(
                    f"campaign {spec.name!r} has {len(points)} completed trial(s) measuring {metric!r}; "
                    f"an emulator needs at least {MIN_POINTS}",
                    "run more trials of the campaign, then build the emulator", campaign_id=spec.name)
            x = encoder.encode([r.parameters for r in points])
            models[metric] = _fit_metric(metric, x, [r.measurements[metric] for r in points], encoder, options)
        return cls(spec, rows, models, options)

    def predict(self, rows: Sequence[Mapping[str, ParameterValue]]) -> dict[str, tuple[list[float], list[float]]]:
        """The noise-free prediction and its standard deviation at each point, per metric.

        Raises:
            EmulatorError: a point lacks a parameter or holds an unusable value.
        """
        x = self._encoder.encode(rows)
        out: dict[str, tuple[list[float], list[float]]] = {}
        for metric, m in self._models.items():
            mean, sd = m.predict(x)
            out[metric] = ([float(v) for v in mean], [float(v) for v in sd])
        return out

    def evaluate(self, parameters: Mapping[str, ParameterValue]) -> dict[str, float]:
        """The noise-free prediction of every metric at one point."""
        return {metric: means[0] for metric, (means, _) in self.predict([parameters]).items()}

    def noise_sd(self, parameters: Mapping[str, ParameterValue]) -> dict[str, float]:
        """The observation noise sd of every metric: what an instrument adds to :meth:`evaluate`.

        The noise is homoscedastic: the same at every point (``parameters`` is accepted so that
        callers need not change when it is not).
        """
        self._encoder.encode([parameters])  # the same checks as evaluate
        return {metric: m.noise_sd for metric, m in self._models.items()}

    def measure(self, parameters: Mapping[str, ParameterValue], rng: random.Random) -> dict[str, float]:
        """One simulated measurement: the prediction plus Gaussian noise of :meth:`noise_sd`."""
        noise = self.noise_sd(parameters)
        return {metric: rng.gauss(value, noise[metric]) for metric, value in self.evaluate(parameters).items()}

    @property
    def points(self) -> dict[str, int]:
        """How many completed trials each metric's model was fitted to."""
        return {metric: m.points for metric, m in self._models.items()}

    @property
    def loo_r2(self) -> dict[str, float]:
        """Leave-one-out R² of each metric's model on its training data (at fitted hyperparameters)."""
        return {metric: m.loo_r2 for metric, m in self._models.items()}

    def describe(self) -> str:
        """One line: the metrics, the points, the model and its leave-one-out R², the noise."""
        kernel = "Matérn-5/2" if self._options["kernel"] == "matern" else "RBF"
        parts = []
        for metric, m in self._models.items():
            target = "log|y|" if m.warp == "log" else "y"
            parts.append(f"{metric}: {m.points} points, {kernel} GP on {target}, "
                         f"leave-one-out R² {m.loo_r2:.2f}, noise sd {m.noise_sd:.3g} ({m.noise_source})")
        return f"emulator of campaign {self.spec.name!r} — " + "; ".join(parts)

    def save(self, path: str | Path) -> None:
        """Write the training data, the spec and the options as JSON (the model is refitted on load)."""
        doc = {
            "format": _FORMAT,
            "version": 1,
            "spec": self.spec.model_dump(mode="json"),
            "options": {**self._options, "metrics": self.metrics},
            "rows": [{"parameters": r.parameters,
                      "measurements": {k: v.model_dump() for k, v in r.measurements.items()}} for r in self._rows],
        }
        Path(path).write_text(json.dumps(doc, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Emulator:
        """Read a file written by :meth:`save` and refit (deterministic: the same model).

        Raises:
            EmulatorError: the file is missing or is not an emulator file.
        """
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            if doc.get("format") != _FORMAT or doc.get("version") != 1:
                raise ValueError("not a closedloop emulator file (version 1)")
            spec = CampaignSpec.model_validate(doc["spec"])
            rows = [_Row(dict(r["parameters"]), {k: Measurement.model_validate(v) for k, v in r["measurements"].items()})
                    for r in doc["rows"]]
            options = dict(doc["options"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EmulatorError(f"cannot read emulator file {str(path)!r}: {' '.join(str(exc).split())[:200]}",
                                "give a file written by Emulator.save") from None
        return cls._from_rows(spec, rows, options)


def _measured_metrics(spec: CampaignSpec, rows: Sequence[_Row]) -> list[str]:
    seen = {metric for r in rows for metric in r.measurements}
    return [m for m in spec.metrics if m in seen] + sorted(seen - set(spec.metrics))


def _fit_metric(metric: str, x: torch.Tensor, values: list[Measurement], encoder: _Encoder,
                options: dict[str, Any]) -> _MetricModel:
    import torch

    y = torch.tensor([[v.mean for v in values]], dtype=torch.float64).T
    sems = [v.sem for v in values]
    recorded = all(s is not None and s > 0 for s in sems)
    yvar = torch.tensor([[s * s for s in sems]], dtype=torch.float64).T if recorded else None  # type: ignore[operator]
    plain = _fit_gp(x, y, yvar, encoder, options)
    if recorded:
        noise_sd, source = math.sqrt(math.fsum(s * s for s in sems) / len(sems)), "recorded sem"  # type: ignore[operator]
    else:
        noise_sd, source = _fitted_noise_sd(plain), "fitted"
    truth = [v.mean for v in values]
    best = _MetricModel(metric, plain, "none", 1.0, len(values), r2_score(truth, _loo_mean(plain, x).tolist()),
                        noise_sd, source)  # type: ignore[arg-type]
    sign = 1.0 if all(t > 0 for t in truth) else -1.0 if all(t < 0 for t in truth) else 0.0
    if options["warp"] == "none" or sign == 0.0:
        return best
    z = torch.log(sign * y)
    zvar = yvar / (y * y) if yvar is not None else None  # the delta method
    logged = _fit_gp(x, z, zvar, encoder, options)
    loo = r2_score(truth, (sign * _loo_mean(logged, x).exp()).tolist())
    if options["warp"] == "log" or loo > best.loo_r2:
        best = _MetricModel(metric, logged, "log", sign, len(values), loo, noise_sd, source)  # type: ignore[arg-type]
    return best


def _fit_gp(x: torch.Tensor, y: torch.Tensor, yvar: torch.Tensor | None, encoder: _Encoder,
            options: dict[str, Any]) -> SingleTaskGP:
    import torch
    from botorch.exceptions.errors import ModelFittingError
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Normalize, Standardize
    from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
    from gpytorch.mlls import ExactMarginalLogLikelihood

    d = x.shape[-1]
    bounds = torch.tensor([encoder.lower, encoder.upper], dtype=torch.float64)
    model = SingleTaskGP(
        x, y, train_Yvar=yvar,
        covar_module=get_covar_module_with_dim_scaled_prior(ard_num_dims=d, use_rbf_kernel=options["kernel"] == "rbf"),
        input_transform=Normalize(d=d, bounds=bounds),
        outcome_transform=Standardize(m=1),
    )
    with torch.random.fork_rng():
        torch.manual_seed(int(options["seed"]))
        try:
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        except ModelFittingError as exc:
            raise EmulatorError(f"the model could not be fitted: {' '.join(str(exc).split())[:200]}",
                                "check the recorded values, or try another seed") from None
    model.eval()
    return model


def _fitted_noise_sd(model: SingleTaskGP) -> float:
    """The GP's homoscedastic noise sd, in the metric's units."""
    noise_var = float(model.likelihood.noise.detach().mean())
    return math.sqrt(noise_var) * float(model.outcome_transform.stdvs.squeeze())


def _loo_mean(model: SingleTaskGP, x: torch.Tensor) -> torch.Tensor:
    """Leave-one-out predictions at the training points, in the model's output units.

    The closed form at fixed hyperparameters: ``y_i - [K⁻¹r]_i / [K⁻¹]_ii`` (Rasmussen &
    Williams, eq. 5.12), with ``K`` the noisy training covariance and ``r`` the residual from
    the constant mean.
    """
    import torch

    with torch.no_grad():
        xn = model.input_transform(x)
        k = model.covar_module(xn).to_dense()
        noise = model.likelihood.noise.reshape(-1).expand(x.shape[0])
        k_inv = torch.linalg.pinv(k + torch.diag(noise), hermitian=True)  # n is small: robust beats fast
        targets = model.train_targets.reshape(-1)
        alpha = k_inv @ (targets - model.mean_module.constant.reshape(()))
        loo = targets - alpha / k_inv.diagonal()
        stdv = model.outcome_transform.stdvs.squeeze()
        mean = model.outcome_transform.means.squeeze()
        return loo * stdv + mean
