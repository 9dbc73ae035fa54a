"""How the ``ax`` and ``ax_default`` engines generate through Ax; the bounded training set.

- ``ax`` (``auto`` on a space with int or choice parameters or parameter constraints): one
  model fit and one acquisition optimization per batch, Ax generating a single run of ``n``
  candidates greedily (each with the earlier ones pending), a cheaper acquisition optimizer
  than Ax's (``FAST_ACQUISITION``), one GP per metric, fitted on at most
  ``optimizer.max_training_points`` trials (``training_trials``) so the time per batch stops
  growing with the campaign.
- ``ax_default``: Ax's own BoTorch defaults (``configure_generation_strategy(method="fast")``),
  every trial in the model. Slower; the reference.

Both use Ax's public generation-strategy API and never warm-start a GP: a suggestion must be
a function of the log alone. Why these settings: ``benchmarks/README.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from ax import Client
from ax.adapter.registry import Generators
from ax.core.data import Data
from ax.core.experiment_status import ExperimentStatus
from ax.core.observation import ObservationFeatures
from ax.exceptions.generation_strategy import GenerationStrategyRepeatedPoints
from ax.generation_strategy.dispatch_utils import get_derelativize_config
from ax.generation_strategy.generation_node import GenerationNode
from ax.generation_strategy.generation_strategy import GenerationStrategy
from ax.generation_strategy.generator_spec import GeneratorSpec
from ax.generators.torch.botorch_modular.surrogate import SurrogateSpec
from ax.generators.torch.botorch_modular.utils import ModelConfig
from ax.utils.common.random import with_rng_seed
from botorch.sampling.normal import SobolQMCNormalSampler

from campaigns.events import ParameterValue, Prediction
from campaigns.spec import CampaignSpec, FloatParameter
from optimizer.ax_setup import AX_ERRORS, SUGGEST_HINT, optimizer_error
from optimizer.engines import model_engine
from optimizer.records import training_rows
from optimizer.robust import NUMERICAL_ERRORS, ModelFailure, numerical_failure

log = logging.getLogger(__name__)

__all__ = [
    "FAST_ACQUISITION",
    "POLYTOPE_SAMPLER_OPTIONS",
    "botorch_strategy",
    "generate",
    "predictions",
    "training_rows",
    "training_trials",
]

#: Hit-and-run settings for the starting points of the acquisition optimizer under linear
#: parameter constraints. BoTorch's defaults (10,000 burn-in steps, thinning 32: ~43,000 steps
#: of a Python loop) cost 8-11 s per candidate here; these cost ~0.5 s. The samples only seed
#: a gradient optimizer, so their independence matters little.
POLYTOPE_SAMPLER_OPTIONS: dict[str, int] = {"n_burnin": 500, "n_thinning": 2}

#: The fast method's acquisition optimizer (Ax's defaults: 20 restarts, 1,024 raw samples,
#: 200 L-BFGS-B iterations, 128 quasi-MC samples). Measured with ``benchmarks/generation.py``.
FAST_ACQUISITION: dict[str, Any] = {
    "num_restarts": 4, "raw_samples": 256, "sequential": True, "maxiter": 100, "mc_samples": None,
}


def botorch_strategy(spec: CampaignSpec) -> GenerationStrategy:
    """A generation strategy with one BoTorch (MBM) node for the spec's ``optimizer.method``.

    ``botorch_default`` is what ``configure_generation_strategy(method="fast",
    initialization_budget=0, initialize_with_center=False)`` builds
    (``ax/api/utils/generation_strategy_dispatch.py``); ``botorch`` is the same node with the
    fast acquisition optimizer. Both differ from Ax's in two ways: cheaper polytope sampling
    when the campaign has parameter constraints on float parameters, and no silent fallback to
    Ax's own Sobol generator when BoTorch only finds repeated points
    (``GenerationStrategyRepeatedPoints`` is raised instead, and the caller tops the batch up
    with points of its own Sobol sequence).
    """
    fast = model_engine(spec).engine != "ax_default"
    continuous = all(isinstance(p, FloatParameter) for p in spec.parameters)
    optimizer_kwargs: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if fast:
        optimizer_kwargs = {k: FAST_ACQUISITION[k] for k in ("num_restarts", "raw_samples")}
        if continuous:
            # Only BoTorch's continuous optimizer (optimize_acqf) takes these; the mixed and
            # discrete optimizers used with int or choice parameters refuse them.
            optimizer_kwargs["sequential"] = FAST_ACQUISITION["sequential"]
            options["maxiter"] = FAST_ACQUISITION["maxiter"]
    if spec.parameter_constraints and continuous:
        options.update(POLYTOPE_SAMPLER_OPTIONS)
    if options:
        optimizer_kwargs["options"] = options
    generator_kwargs: dict[str, Any] = {
        # Several metrics: one GP each (a ModelListGP) rather than one batched multi-output GP,
        # whose fit costs ~3x as much here (BraninCurrin, 30-100 points).
        "surrogate_spec": SurrogateSpec(
            model_configs=[ModelConfig(name="MBM defaults")], allow_batched_models=not fast
        ),
        "torch_device": None,
        "transform_configs": get_derelativize_config(derelativize_with_raw_status_quo=True),
        "acquisition_options": {"prune_irrelevant_parameters": False},
    }
    if fast and FAST_ACQUISITION["mc_samples"]:
        # Fewer quasi-MC samples of the posterior than BoTorch's 128 (qLogNEI, qLogNEHVI).
        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([FAST_ACQUISITION["mc_samples"]]))
        generator_kwargs["botorch_acqf_options"] = {"sampler": sampler}
    node = GenerationNode(
        name="MBM",
        generator_specs=[
            GeneratorSpec(
                generator_enum=Generators.BOTORCH_MODULAR,
                generator_kwargs=generator_kwargs,
                generator_gen_kwargs={"model_gen_options": {"optimizer_kwargs": optimizer_kwargs}}
                if optimizer_kwargs
                else {},
            )
        ],
        should_deduplicate=True,
        suggested_experiment_status=ExperimentStatus.OPTIMIZATION,
        fallback_specs={},
    )
    return GenerationStrategy(name="MBM:closedloop" if fast else "MBM:fast", nodes=[node])


def generate(
    client: Client, spec: CampaignSpec, n: int, seed: int, fixed: Mapping[str, ParameterValue]
) -> list[tuple[dict[str, ParameterValue], dict[str, Prediction] | None]]:
    """Up to ``n`` BoTorch candidates for the client's experiment, in order (not yet trials),
    each with the fitted model's prediction there (``predictions``; None if Ax gives none).

    A fresh strategy is set on the client, so the model is fitted from scratch; it is made and
    run under ``seed`` (Ax's ``with_rng_seed`` restores the global random, numpy and torch
    states afterwards). The candidates may repeat one another (Ax deduplicates against the
    experiment's trials only); none when BoTorch only finds points already tried.

    Args:
        client: An Ax client whose experiment holds the campaign's trials.
        spec: The campaign (``optimizer.method``: ``botorch`` or ``botorch_default``).
        n: How many candidates.
        seed: The seed of this call.
        fixed: Parameters every candidate must carry (``fixed_parameters``).

    Raises:
        OptimizerError: Ax or BoTorch failed.
    """
    experiment = client._experiment  # Ax 1.3.1's Client has no public accessor for it
    try:
        features = ObservationFeatures(parameters=dict(fixed)) if fixed else None
        with with_rng_seed(seed):
            # Made under the seed (the fast method's sampler draws its own).
            strategy = botorch_strategy(spec)
            client.set_generation_strategy(strategy)
            if model_engine(spec).engine != "ax_default":  # one generator run of n arms, on a bounded subset
                data = training_trials(spec, experiment.lookup_data(), spec.optimizer.max_training_points)
                [[run]] = strategy.gen(experiment=experiment, data=data, n=n, fixed_features=features)
                arms = run.arms
            else:  # Client.get_next_trials(max_trials=n): one candidate per generator run
                runs = strategy.gen(experiment=experiment, n=1, fixed_features=features, num_trials=n)
                arms = [run.arms[0] for [run] in runs]
    except GenerationStrategyRepeatedPoints:
        return []  # the model only proposes points already tried
    except (*AX_ERRORS, *NUMERICAL_ERRORS, RuntimeError) as exc:
        reason = numerical_failure(exc)
        if reason is not None:
            raise ModelFailure(reason) from exc  # AxOptimizer falls back to its Sobol sequence
        if not isinstance(exc, AX_ERRORS):
            raise  # a RuntimeError that is not numerics: a bug, shown as one
        raise optimizer_error(
            spec, "suggesting trials", exc,
            SUGGEST_HINT,
        ) from exc
    points = [dict(arm.parameters) for arm in arms]
    return list(zip(points, predictions(strategy, points), strict=True))  # type: ignore[arg-type]


def predictions(strategy: GenerationStrategy, points: list[dict[str, Any]]) -> list[dict[str, Prediction] | None]:
    """The posterior mean and sd of every metric at ``points`` from the model the strategy has
    just fitted (Ax's ``Adapter.predict``: one posterior call, in the metrics' units).

    None for every point when Ax cannot predict (no fitted model, a transform that cannot
    invert): a prediction is shown to people, never needed, so its failure is only logged.
    """
    adapter = strategy.adapter
    if not points or adapter is None or not adapter.can_predict:
        return [None] * len(points)
    try:
        means, cov = adapter.predict([ObservationFeatures(parameters=p) for p in points])
    except (*AX_ERRORS, *NUMERICAL_ERRORS, RuntimeError, ValueError, KeyError) as exc:  # shown, never needed
        log.info("no prediction of the proposed trials: %s: %s", type(exc).__name__, exc)
        return [None] * len(points)
    out: list[dict[str, Prediction] | None] = []
    for i in range(len(points)):
        row = {}
        for metric, values in means.items():
            mean, var = float(values[i]), float(cov[metric][metric][i])
            if math.isfinite(mean) and math.isfinite(var):
                row[metric] = Prediction(mean=mean, sd=math.sqrt(max(var, 0.0)))
        out.append(row or None)
    return out


def training_trials(spec: CampaignSpec, data: Data, max_points: int) -> Data | None:
    """The data to fit the model on: every trial's, or a fixed-size subset once there are more.

    With at most ``max_points`` trials with data, ``None`` (Ax uses all the experiment's
    data). Beyond, the data of ``max_points`` trials chosen from the data alone, so that
    the choice is the same in a live and a rebuilt optimizer:

    - the best half: feasible before infeasible (outcome constraints with measured values),
      then by the objective (several objectives: by Pareto layer, first layer first), then by
      trial index;
    - a quarter: the most recent trials (highest indices) not yet chosen, where the campaign
      searches now;
    - the rest: trials spread evenly over the remaining ones by index, for coverage.

    Args:
        spec: The campaign (objectives, their directions, outcome constraints).
        data: The experiment's data (``Experiment.lookup_data()``).
        max_points: The most trials to fit on.
    """
    df = data.df
    if df.empty:
        return None
    means = df.pivot_table(index="trial_index", columns="metric_name", values="mean", aggfunc="mean")
    chosen = training_rows(spec, means, max_points)
    return None if chosen is None else data.filter(trial_indices=chosen)
