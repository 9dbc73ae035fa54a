"""``AxOptimizer``: suggest, complete and fail trials; rebuild the optimizer from the log.

The optimizer is derived state. Its Ax experiment holds exactly the campaign's trials, and
``AxOptimizer.rebuild(spec, trials)`` replays them into a fresh Ax ``Client`` (in one pass:
``optimizer.replay``); the rebuilt optimizer then makes the same next suggestion as the live
one did. Three choices make that so:

- **Initialization is ours.** The first trials are points of one scrambled Sobol sequence
  (``optimizer.sobol``), recorded with their position and attached to Ax with
  ``attach_trial`` in the live optimizer too, so live and rebuilt experiments are identical and
  a rebuilt optimizer continues the sequence at ``max(recorded positions) + 1``.
- **Ax only does Bayesian optimization**, with a generation strategy holding a single BoTorch
  (MBM) node, as ``optimizer.method`` says (``optimizer.generation``). A fresh strategy is
  set before each call, so the live optimizer fits its model from scratch just as a rebuilt
  one does (Ax would otherwise reuse a model fitted earlier; no warm start, for that reason).
- **Each BO call is seeded** from ``(spec.seed, number of trials so far)``, the strategy made
  under that seed too; the global random, numpy and torch states are restored afterwards.

The BO phase starts once ``initialization_trials`` trials were suggested *and* at least half
of that many (rounded up) were completed with data *and* every metric of the optimization
config (objectives and outcome constraints) was measured at least once (Ax cannot model a
metric it has no data for, e.g. right after an outcome constraint on a new metric is added);
until then the optimizer keeps suggesting Sobol points, so devices never idle waiting for
data. ``optimizer.method: sobol`` never leaves the Sobol phase.

**People in the loop, and mid-campaign changes.** ``rebuild`` takes the campaign's *effective*
spec (``CampaignState.spec``: every ``CampaignChanged`` applied), and the loop rebuilds after
each decision or change, so a change applies at once and on every resume:

- new bounds: Sobol points are mapped into the current bounds, and Ax's search space is built
  from them; trials that ran outside (bounds narrowed since) stay in the experiment with their
  data, out of design, and Ax's model uses them;
- ``fixed_parameters``: every new suggestion carries the fixed value (the Sobol sampler sets
  it; Ax gets it as ``get_next_trials(fixed_parameters=...)``, so its model still learns from
  trials run at other values); a freed parameter varies again;
- outcome constraints and objective thresholds: Ax's optimization config is the spec's;
- the Sobol sequence goes on at ``max(recorded positions) + 1`` whatever changed;
- an edited trial (``generator == "human"``) is attached with the edited parameters, its run
  metadata noting that a person chose it, and completes or fails as any trial;
- a rejected trial (status ``"rejected"``) is attached and abandoned: never suggested again,
  never pending a result. It does not count toward the initialization trials.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from ax.core.observation import ObservationFeatures
from ax.exceptions.generation_strategy import GenerationStrategyRepeatedPoints
from ax.utils.common.random import with_rng_seed

from campaigns.errors import OptimizerError
from campaigns.events import Measurement, ParameterValue, SuggestedTrial
from campaigns.spec import CampaignSpec
from campaigns.state import TrialRecord
from optimizer.ax_setup import AX_ERRORS, build_client, optimizer_error, quiet_ax
from optimizer.generation import botorch_strategy, split_generator_run, training_trials
from optimizer.replay import OUT_OF_DESIGN, attach_in_bulk, ordered_trials, raw_data, trial_run_metadata
from optimizer.sobol import SobolSampler, fixed_parameter_values

__all__ = ["AxOptimizer", "default_initialization_trials"]

_Status = Literal["pending", "completed", "failed", "rejected"]


def default_initialization_trials(spec: CampaignSpec) -> int:
    """How many Sobol trials open a campaign: the spec's setting, else 5 (as Ax's default).

    ``max(5, 2 * d)`` before: on Hartmann6 (d = 6) with a budget of 40 it left the model too
    few trials (``benchmarks/generation.py``).
    """
    if spec.optimizer.initialization_trials is not None:
        return spec.optimizer.initialization_trials
    return 5


@dataclass
class _Trial:
    trial_id: str
    parameters: dict[str, ParameterValue]
    generator: str
    sobol_position: int | None
    status: _Status = "pending"
    metrics: frozenset[str] = frozenset()  # the metrics measured, once completed

    @property
    def has_data(self) -> bool:
        return bool(self.metrics)


class AxOptimizer:
    """The campaign's optimizer: scrambled Sobol initialization, then Ax BoTorch.

    A trial's id is its Ax trial index as text (``"0"``, ``"1"``, ...). Trials suggested and
    not yet completed or failed are pending in Ax, so new suggestions avoid them.

    Args:
        spec: The campaign.
        threads: If given, ``torch.set_num_threads(threads)`` (process-wide) — one thread per
            optimizer process avoids oversubscribing the cores when several torch processes
            share a machine.
        verbose: Let Ax log at INFO; by default its loggers are set to WARNING (process-wide).

    Raises:
        OptimizerError: Ax rejects the campaign's search space or objectives.
    """

    def __init__(self, spec: CampaignSpec, *, threads: int | None = None, verbose: bool = False) -> None:
        if threads is not None:
            if threads < 1:
                raise OptimizerError(f"threads={threads}: need at least 1", "pass threads >= 1, or None")
            torch.set_num_threads(threads)
        self._spec = spec
        self._verbose = verbose
        quiet_ax(verbose)
        self._client = build_client(spec)
        self._sampler = SobolSampler(spec)
        self._fixed = fixed_parameter_values(spec)
        self._trials: list[_Trial] = []
        self._by_id: dict[str, _Trial] = {}

    # ------------------------------------------------------------------ rebuild
    @classmethod
    def rebuild(
        cls,
        spec: CampaignSpec,
        trials: Iterable[TrialRecord],
        *,
        threads: int | None = None,
        verbose: bool = False,
        replay: Literal["bulk", "per_trial"] = "bulk",
    ) -> AxOptimizer:
        """A fresh optimizer with every recorded trial replayed, in index order.

        Completed trials carry their measurements, failed ones their reason, rejected ones are
        abandoned; suggested and running trials stay pending. Edited trials are attached with
        the edited parameters. The Sobol phase resumes where the log left it.

        Args:
            spec: The campaign's effective spec (``fold(events).spec``: its ``CampaignCreated``
                spec with every ``CampaignChanged`` applied).
            trials: The trials of the folded log (``fold(events).trials.values()``).
            threads: As for the constructor.
            verbose: As for the constructor.
            replay: ``"bulk"`` builds the Ax experiment in one pass (``optimizer.replay``;
                ~0.3 s for 1,000 trials); ``"per_trial"`` attaches and completes the trials
                one by one through Ax's ``Client`` as the live optimizer did (quadratic:
                ~20-30 s for 1,000 trials). Both give the same experiment; the second is
                kept as the reference the first is tested and benchmarked against.

        Raises:
            OptimizerError: the trial ids are not ``"0", "1", ...`` in index order, a trial's
                parameters do not fit the spec, or Ax refuses a trial.
        """
        if replay not in ("bulk", "per_trial"):
            raise OptimizerError(f"rebuild(replay={replay!r}): unknown replay", "pass 'bulk' or 'per_trial'")
        opt = cls(spec, threads=threads, verbose=verbose)
        ordered = ordered_trials(spec, trials)
        if replay == "per_trial":
            for record, parameters in ordered:
                opt._attach(parameters, record.generator, record.sobol_position, trial_run_metadata(record))
                if record.status == "completed":
                    opt.complete(record.trial_id, record.measurements)
                elif record.status == "failed":
                    opt.fail(record.trial_id, record.failure_reason or "failed")
                elif record.status == "rejected":
                    opt.reject(record.trial_id, record.failure_reason or "rejected")
            return opt
        attach_in_bulk(opt._client, spec, ordered)
        for record, parameters in ordered:
            opt._record(record.trial_id, parameters, record.generator, record.sobol_position)
            trial = opt._by_id[record.trial_id]
            if record.status == "completed":
                trial.status, trial.metrics = "completed", frozenset(record.measurements)
            elif record.status in ("failed", "rejected"):
                trial.status = record.status
        return opt

    # --------------------------------------------------------------- properties
    @property
    def spec(self) -> CampaignSpec:
        """The campaign this optimizer serves."""
        return self._spec

    @property
    def initialization_trials(self) -> int:
        """How many Sobol trials open the campaign."""
        return default_initialization_trials(self._spec)

    @property
    def num_trials(self) -> int:
        """How many trials exist (suggested, running, completed, failed or rejected)."""
        return len(self._trials)

    @property
    def next_sobol_position(self) -> int:
        """The position in the Sobol sequence where the next Sobol point is looked for."""
        positions = [t.sobol_position for t in self._trials if t.sobol_position is not None]
        return max(positions) + 1 if positions else 0

    @property
    def unobserved_metrics(self) -> list[str]:
        """Metrics of the optimization config no completed trial has measured yet (spec order).

        While any is left the optimizer stays in the Sobol phase: Ax cannot model a metric
        without data. A metric nobody measures keeps the campaign on Sobol points for good.
        """
        seen = set().union(*(t.metrics for t in self._trials if t.status == "completed"))
        return [m for m in self._spec.metrics if m not in seen]

    @property
    def phase(self) -> Literal["sobol", "botorch"]:
        """Which generator the next suggestion comes from."""
        return "sobol" if self._sobol_left(1) else "botorch"

    # ------------------------------------------------------------------ suggest
    def suggest(self, n: int) -> list[SuggestedTrial]:
        """Propose exactly ``n`` new trials; they are pending in Ax from now on.

        Args:
            n: How many trials, ``>= 1``.

        Raises:
            OptimizerError: Ax failed to generate, or no Sobol point satisfies the
                parameter constraints.
        """
        if n < 1:
            raise OptimizerError(f"suggest(n={n}): n must be at least 1", "ask for one trial or more")
        quiet_ax(self._verbose)
        out: list[SuggestedTrial] = []
        while len(out) < n:
            remaining = n - len(out)
            sobol = self._sobol_left(remaining)
            if sobol:
                out += self._suggest_sobol(sobol)
                continue
            got = self._suggest_botorch(remaining)
            # Ax returns fewer candidates, or none, when it finds no new ones (e.g. a small
            # discrete space); the batch is topped up with Sobol points, never short.
            out += got if got else self._suggest_sobol(remaining)
        return out

    def _sobol_left(self, wanted: int) -> int:
        """How many of the next ``wanted`` trials come from Sobol."""
        if self._spec.optimizer.method == "sobol":
            return wanted
        init = self.initialization_trials
        observed = sum(1 for t in self._trials if t.status == "completed" and t.has_data)
        if observed < math.ceil(init / 2) or self.unobserved_metrics:
            return wanted
        # A rejected trial never ran: the initialization goes on without it.
        counted = sum(1 for t in self._trials if t.status != "rejected")
        return min(wanted, max(0, init - counted))

    def _suggest_sobol(self, n: int) -> list[SuggestedTrial]:
        taken = {_key(t.parameters) for t in self._trials}

        def new_point(parameters: Mapping[str, ParameterValue]) -> bool:
            key = _key(parameters)
            if key in taken:
                return False
            taken.add(key)
            return True

        points = self._sampler.next_points(self.next_sobol_position, n, accept=new_point)
        return [self._attach(p.parameters, "sobol", p.position) for p in points]

    def _suggest_botorch(self, n: int) -> list[SuggestedTrial]:
        seed = (self._spec.seed * 1_000_003 + len(self._trials)) % 2**32
        experiment = self._client._experiment
        fast = self._spec.optimizer.method == "botorch"
        try:
            fixed = ObservationFeatures(parameters=dict(self._fixed)) if self._fixed else None
            with with_rng_seed(seed):
                # A fresh strategy: the model is fitted from scratch, as in a rebuilt
                # optimizer; made under the seed (the fast method's sampler draws its own).
                strategy = botorch_strategy(self._spec)
                self._client.set_generation_strategy(strategy)
                if fast:  # one generator run of n arms, on at most max_training_points trials
                    data = training_trials(self._spec, experiment.lookup_data(), self._spec.optimizer.max_training_points)
                    [[run]] = strategy.gen(experiment=experiment, data=data, n=n, fixed_features=fixed)
                    runs = split_generator_run(run)
                else:  # Client.get_next_trials(max_trials=n): one candidate per generator run
                    runs = [run for [run] in strategy.gen(experiment=experiment, n=1, fixed_features=fixed, num_trials=n)]
        except GenerationStrategyRepeatedPoints:
            return []  # the model only proposes points already tried; suggest() uses Sobol
        except AX_ERRORS as exc:
            raise optimizer_error(
                self._spec, "suggesting trials", exc,
                "check the recorded measurements; to go on without a model set "
                "`optimizer: {method: sobol}` in the campaign file",
            ) from exc
        out: list[SuggestedTrial] = []
        batch: set[tuple[tuple[str, ParameterValue], ...]] = set()
        for run in runs:
            parameters = dict(run.arms[0].parameters)
            # Ax deduplicates against the experiment's trials only, and a batch's candidates
            # are not trials yet (with a parameter fixed or the bounds narrowed, the model can
            # propose the same corner twice): a repeat is dropped, and suggest() asks again
            # for the rest, with the new trials pending.
            if _key(parameters) in batch:
                continue
            batch.add(_key(parameters))
            trial = experiment.new_trial(generator_run=run)
            trial.mark_running(no_runner_required=True)
            if trial.index != len(self._trials):
                raise OptimizerError(
                    f"campaign {self._spec.name!r}: Ax created trial {trial.index}, expected {len(self._trials)}",
                    "this is a bug in closedloop; please report it",
                )
            out.append(self._record(str(trial.index), parameters, "botorch", None))  # type: ignore[arg-type]
        return out

    # ----------------------------------------------------------------- outcomes
    def complete(self, trial_id: str, measurements: Mapping[str, Measurement]) -> None:
        """Record a trial's measurements; the trial is completed in Ax.

        Args:
            trial_id: The trial, as suggested.
            measurements: Metric name → mean and optional standard error (``sem=None``: Ax
                infers the noise).

        Raises:
            OptimizerError: unknown trial, a trial already completed, failed or rejected, or Ax
                refuses the data.
        """
        trial = self._pending(trial_id)
        raw = raw_data(measurements)
        try:
            self._client.complete_trial(trial_index=int(trial_id), raw_data=raw or None)
        except AX_ERRORS as exc:
            raise optimizer_error(
                self._spec, f"completing trial {trial_id}", exc, "check the measurements", trial_id
            ) from exc
        trial.status, trial.metrics = "completed", frozenset(raw)

    def fail(self, trial_id: str, reason: str) -> None:
        """Record that a trial gave no usable result; Ax sees it as failed (never as a number).

        Args:
            trial_id: The trial, as suggested.
            reason: Why (``timeout``, ``device_error``, ...).

        Raises:
            OptimizerError: unknown trial, or a trial already completed, failed or rejected.
        """
        trial = self._pending(trial_id)
        try:
            self._client.mark_trial_failed(trial_index=int(trial_id), failed_reason=reason)
        except AX_ERRORS as exc:
            raise optimizer_error(self._spec, f"failing trial {trial_id}", exc, "check the trial id", trial_id) from exc
        trial.status = "failed"

    def reject(self, trial_id: str, reason: str) -> None:
        """Record that a person rejected a trial: it is abandoned in Ax, never run nor suggested again.

        Args:
            trial_id: The trial, as suggested (pending).
            reason: The person's reason.

        Raises:
            OptimizerError: unknown trial, or a trial already completed, failed or rejected.
        """
        trial = self._pending(trial_id)
        try:
            # Client.mark_trial_abandoned takes no reason; this is the call it makes, with one.
            self._client._experiment.trials[int(trial_id)].mark_abandoned(reason=reason)
        except AX_ERRORS as exc:
            raise optimizer_error(self._spec, f"rejecting trial {trial_id}", exc, "check the trial id", trial_id) from exc
        trial.status = "rejected"

    # ------------------------------------------------------------------ helpers
    def _pending(self, trial_id: str) -> _Trial:
        trial = self._by_id.get(trial_id)
        if trial is None:
            raise OptimizerError(
                f"campaign {self._spec.name!r}: no trial {trial_id!r}",
                "use a trial id returned by suggest()",
                trial_id=trial_id,
            )
        if trial.status != "pending":
            raise OptimizerError(
                f"campaign {self._spec.name!r}: trial {trial_id} is already {trial.status}",
                "a trial is completed, failed or rejected once; ignore the duplicate",
                trial_id=trial_id,
            )
        return trial

    def _attach(
        self,
        parameters: dict[str, ParameterValue],
        generator: str,
        position: int | None,
        run_metadata: dict[str, object] | None = None,
    ) -> SuggestedTrial:
        try:
            with warnings.catch_warnings():
                # A replayed trial outside today's bounds is attached and used (see replay.py).
                warnings.filterwarnings("ignore", message=OUT_OF_DESIGN, category=RuntimeWarning)
                index = self._client.attach_trial(parameters=parameters)
            if run_metadata is not None:
                self._client._experiment.trials[index].update_run_metadata(run_metadata)
        except AX_ERRORS as exc:
            raise optimizer_error(
                self._spec, f"attaching trial {len(self._trials)}", exc,
                "the trial does not fit the campaign's search space; check the spec and the log",
                str(len(self._trials)),
            ) from exc
        return self._record(str(index), parameters, generator, position)

    def _record(
        self, trial_id: str, parameters: dict[str, ParameterValue], generator: str, position: int | None
    ) -> SuggestedTrial:
        trial = _Trial(trial_id, parameters, generator, position)
        self._trials.append(trial)
        self._by_id[trial_id] = trial
        return SuggestedTrial(
            trial_id=trial_id, parameters=dict(parameters), generator=generator, sobol_position=position
        )


def _key(parameters: Mapping[str, ParameterValue]) -> tuple[tuple[str, ParameterValue], ...]:
    return tuple(sorted(parameters.items()))
