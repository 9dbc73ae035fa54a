"""``AxOptimizer``: suggest, complete and fail trials; rebuild the optimizer from the log.

The optimizer is derived state. It keeps its own records of the campaign's trials
(``optimizer.replay.TrialEntry``) and touches Ax only to generate BoTorch trials where the
fast method does not serve (below): Sobol suggestions, results, failures and rejections update
the records alone, and each Ax BoTorch call gets an Ax experiment built afresh from them in one pass (``attach_in_bulk``, the path
``AxOptimizer.rebuild(spec, trials)`` takes on resume; the first call after ``rebuild`` uses
the experiment ``rebuild`` built). A live and a rebuilt optimizer thus hand Ax the same
experiment by construction, and the rebuilt one makes the same next suggestion as the live
one did. Three more choices make that so:

- **Initialization is ours.** The first trial is the centre of the search space
  (``optimizer.center_first``, generator ``"center"``; Ax's default opens so too), the next
  ones points of one scrambled Sobol sequence (``optimizer.sobol``), recorded with their
  position, so a rebuilt optimizer continues the sequence at ``max(recorded positions) + 1``.
- **Bayesian optimization only**: on a continuous space the default method generates from
  the records (``optimizer.fastbo``: Ax's model and acquisition in NumPy; Ax's experiment is
  then only built when something reads it); otherwise Ax does, with a generation strategy
  holding a single BoTorch (MBM) node, as ``optimizer.method`` says (``optimizer.generation``).
  Either way the model is fitted from scratch at every call, in the live optimizer as in a
  rebuilt one (Ax would otherwise reuse a model fitted earlier; no warm start, for that
  reason).
- **Each BO call is seeded** from ``(spec.seed, number of trials so far)``, the strategy made
  under that seed too; the global random, numpy and torch states are restored afterwards.

Why records: ``Client.complete_trial`` validates the experiment's whole data at every call
(~14 ms per trial at a few hundred trials), the bottleneck of a fast campaign; a bulk build
costs 10 ms at 30 trials, 140 ms at 1,000 — 1-5% of the BoTorch call it precedes.

The BO phase starts once ``initialization_trials`` trials were suggested *and* at least half
of that many (rounded up) were completed with data *and* every metric of the optimization
config (objectives and outcome constraints) was measured at least once (Ax cannot model a
metric it has no data for, e.g. right after an outcome constraint on a new metric is added);
until then the optimizer keeps suggesting Sobol points, so devices never idle waiting for
data. ``optimizer.method: sobol`` never leaves the Sobol phase, and never calls Ax after
the constructor checked the spec.

**Nothing a device may send stops it** (``optimizer.robust``): a model sees each metric
clipped to a range ordinary data never leaves, and a fit or acquisition that still fails
numerically gives way to the next points of the Sobol sequence (a warning is logged, and the
trials' generator is ``sobol (fallback: <reason>)``). With every parameter fixed, each trial
is the fixed point (generator ``fixed``): replicates.

**People in the loop, and mid-campaign changes.** ``rebuild`` takes the campaign's *effective*
spec (``CampaignState.spec``: every ``CampaignChanged`` applied), and the loop rebuilds after
each decision or change, so a change applies at once and on every resume:

- new bounds: Sobol points are mapped into the current bounds, and Ax's search space is built
  from them; trials that ran outside (bounds narrowed since) stay in the experiment with their
  data, out of design, and Ax's model uses them;
- ``fixed_parameters``: every new suggestion carries the fixed value (the Sobol sampler sets
  it; Ax gets it as fixed features, so its model still learns from trials run at other
  values); a freed parameter varies again;
- outcome constraints and objective thresholds: Ax's optimization config is the spec's;
- the Sobol sequence goes on at ``max(recorded positions) + 1`` whatever changed;
- an edited trial (``generator == "human"``) is attached with the edited parameters, its run
  metadata noting that a person chose it, and completes or fails as any trial;
- a rejected trial (status ``"rejected"``) is attached and abandoned: never suggested again,
  never pending a result. It does not count toward the initialization trials.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Literal

import pandas as pd
import torch
from ax import Client
from ax.core.metric import Metric
from botorch.exceptions.warnings import BadInitialCandidatesWarning

from campaigns.errors import OptimizerError
from campaigns.events import Measurement, ParameterValue, SuggestedTrial, TrialEngine
from campaigns.spec import CampaignSpec
from campaigns.state import TrialRecord
from optimizer.ax_setup import AX_ERRORS, build_client, optimizer_error, quiet_ax
from optimizer.engines import EngineChoice, default_initialization_trials, model_engine, sobol_phase
from optimizer.fastbo import FAST_ERRORS, fast_generate
from optimizer.generation import generate, training_rows, training_trials
from optimizer.replay import TrialEntry, attach_in_bulk, attach_one, attach_per_trial, ordered_trials
from optimizer.robust import ModelFailure, numerical_failure
from optimizer.sobol import SobolSampler, fixed_parameter_values

__all__ = ["AxOptimizer", "default_initialization_trials"]

_Key = tuple[tuple[str, ParameterValue], ...]

log = logging.getLogger("closedloop.optimizer")


class AxOptimizer:
    """The campaign's optimizer: scrambled Sobol initialization, then Ax BoTorch.

    A trial's id is its Ax trial index as text (``"0"``, ``"1"``, ...). Trials suggested and
    not yet completed or failed are pending, so new suggestions avoid them.

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
        self._engine = model_engine(spec)
        self._verbose = verbose
        quiet_ax(verbose)
        # Ax's view of the trials: ``_stale`` once the records changed since it was built,
        # ``_used`` once a BoTorch call ran on it (each call gets an experiment fresh from the
        # records, as a rebuilt optimizer's first call does).
        self._ax = build_client(spec)
        self._stale = self._used = False
        self._sampler = SobolSampler(spec)
        self._fixed = fixed_parameter_values(spec)
        self._trials: list[TrialEntry] = []
        self._by_id: dict[str, TrialEntry] = {}
        self._keys: set[_Key] = set()
        self._next_position = 0
        self._metric_names: set[str] = set(spec.metrics)  # checked as Ax checks a metric's name
        # The ids of the trials the last model saw; None: ask Ax's experiment (derived on read,
        # so the Ax path does not choose the training set twice per call).
        self._last_fit: list[str] | None = []

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
                one by one through Ax's ``Client`` (quadratic: ~20-30 s for 1,000 trials).
                Both give the same experiment; the second is kept as the reference the first
                is tested and benchmarked against.

        Raises:
            OptimizerError: the trial ids are not ``"0", "1", ...`` in index order, a trial's
                parameters do not fit the spec, or Ax refuses a trial.
        """
        if replay not in ("bulk", "per_trial"):
            raise OptimizerError(f"rebuild(replay={replay!r}): unknown replay", "pass 'bulk' or 'per_trial'")
        opt = cls(spec, threads=threads, verbose=verbose)
        entries = ordered_trials(spec, trials)
        (attach_per_trial if replay == "per_trial" else attach_in_bulk)(opt._ax, spec, entries)
        for entry in entries:
            opt._add(entry, in_ax=True)
            opt._metric_names.update(entry.measurements)
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
    def engine(self) -> EngineChoice:
        """The engine that suggests trials after the Sobol opening, and why."""
        return self._engine

    def uses_model(self, n: int) -> bool:
        """Whether ``suggest(n)`` would call a model (rather than only the Sobol sampler)."""
        return len(self._fixed) < len(self._spec.parameters) and self._sobol_left(n) < n

    @property
    def num_trials(self) -> int:
        """How many trials exist (suggested, running, completed, failed or rejected)."""
        return len(self._trials)

    @property
    def next_sobol_position(self) -> int:
        """The position in the Sobol sequence where the next Sobol point is looked for."""
        return self._next_position

    @property
    def unobserved_metrics(self) -> list[str]:
        """Metrics of the optimization config no completed trial has measured yet (spec order).

        While any is left the optimizer stays in the Sobol phase: Ax cannot model a metric
        without data. A metric nobody measures keeps the campaign on Sobol points for good.
        """
        seen = set().union(*(t.measurements for t in self._trials if t.status == "completed"))
        return [m for m in self._spec.metrics if m not in seen]

    @property
    def phase(self) -> Literal["sobol", "botorch"]:
        """Which generator the next suggestion comes from."""
        return "sobol" if self._sobol_left(1) else "botorch"

    @property
    def last_fit_trials(self) -> list[str]:
        """The ids of the trials the last BoTorch suggestion's model was fitted on."""
        if self._last_fit is None:
            data = self._ax._experiment.lookup_data()
            bounded = self._engine.engine != "ax_default"  # Ax's default fits on every trial
            subset = training_trials(self._spec, data, self._spec.optimizer.max_training_points) if bounded else None
            self._last_fit = [str(i) for i in sorted(set((subset or data).df["trial_index"].astype(int)))]
        return list(self._last_fit)

    @property
    def _client(self) -> Client:
        """The Ax client, its experiment brought up to date with the records first (read only)."""
        self._sync()
        return self._ax

    # ------------------------------------------------------------------ suggest
    def suggest(self, n: int) -> list[SuggestedTrial]:
        """Propose exactly ``n`` new trials; they are pending from now on.

        Args:
            n: How many trials, ``>= 1``.

        Raises:
            OptimizerError: Ax failed to generate, or no Sobol point satisfies the
                parameter constraints.
        """
        if n < 1:
            raise OptimizerError(f"suggest(n={n}): n must be at least 1", "ask for one trial or more")
        if len(self._fixed) == len(self._spec.parameters):
            # Every parameter fixed (``change --fix`` of each, or a spec that fixes them all):
            # the one point, as replicates; there is nothing for a model or Sobol to choose.
            return [self._add(TrialEntry(str(len(self._trials)), dict(self._fixed), "fixed", None), engine="fixed")
                    for _ in range(n)]
        out: list[SuggestedTrial] = []
        while len(out) < n:
            remaining = n - len(out)
            sobol = self._sobol_left(remaining)
            if sobol:
                out += self._suggest_sobol(sobol)
                continue
            try:
                got = self._suggest_botorch(remaining)
            except ModelFailure as failure:
                out += self._fallback(remaining, failure.reason)
                continue
            # Ax returns fewer candidates, or none, when it finds no new ones (e.g. a small
            # discrete space); the batch is topped up with Sobol points, never short.
            out += got if got else self._suggest_sobol(remaining)
        return out

    def _sobol_left(self, wanted: int) -> int:
        """How many of the next ``wanted`` trials come from Sobol (``optimizer.engines``)."""
        return sobol_phase(self._spec, self._trials, bool(self.unobserved_metrics), wanted)

    def _fallback(self, n: int, reason: str) -> list[SuggestedTrial]:
        """Points of the Sobol sequence when the model failed numerically, the reason in their
        generator: the campaign goes on, and since each fallback takes the next positions of
        the sequence, a rebuilt optimizer facing the same failure moves on too."""
        log.warning("campaign %r: the model failed (%s); %d trial(s) from the Sobol sequence instead",
                    self._spec.name, reason, n)
        return self._suggest_sobol(n, generator=f"sobol (fallback: {reason})")

    def _suggest_sobol(self, n: int, generator: str = "sobol") -> list[SuggestedTrial]:
        batch: set[_Key] = set()

        def new_point(parameters: Mapping[str, ParameterValue]) -> bool:
            key = _key(parameters)
            if key in self._keys or key in batch:
                return False
            batch.add(key)
            return True

        out: list[SuggestedTrial] = []
        if not self._trials and self._spec.optimizer.center_first:
            center = self._sampler.center()
            if center is not None:  # the campaign's first trial (its key joins self._keys)
                out.append(self._add(TrialEntry("0", center, "center", None), engine="sobol"))
        points = self._sampler.next_points(self._next_position, n - len(out), accept=new_point)
        return out + [
            self._add(TrialEntry(str(len(self._trials)), dict(p.parameters), generator, p.position), engine="sobol")
            for p in points
        ]

    def _suggest_botorch(self, n: int) -> list[SuggestedTrial]:
        seed = (self._spec.seed * 1_000_003 + len(self._trials)) % 2**32
        if self._engine.engine == "fast":
            return self._suggest_fast(n, seed)
        self._stale |= self._used
        self._sync()
        self._used = True
        quiet_ax(self._verbose)
        self._last_fit = None
        out: list[SuggestedTrial] = []
        batch: set[_Key] = set()
        for parameters in generate(self._ax, self._spec, n, seed, self._fixed):
            # Ax deduplicates against the experiment's trials only, and a batch's candidates
            # are not trials yet (with a parameter fixed or the bounds narrowed, the model can
            # propose the same corner twice): a repeat is dropped, and suggest() asks again
            # for the rest, with the new trials pending.
            if _key(parameters) in batch:
                continue
            batch.add(_key(parameters))
            entry = TrialEntry(str(len(self._trials)), parameters, "botorch", None)
            # Attached as a rebuild attaches it (for a look at Ax's experiment after the call;
            # the next call builds its own).
            attach_one(self._ax, self._spec, entry)
            out.append(self._add(entry, in_ax=True, engine=self._engine.engine))
        return out

    def _suggest_fast(self, n: int, seed: int) -> list[SuggestedTrial]:
        """The fast method on a continuous space (``optimizer.fastbo``), from the records alone."""
        trained = [t for t in self._trials if t.status == "completed" and t.measurements]
        means = pd.DataFrame([{m: v.mean for m, v in t.measurements.items()} for t in trained],
                             index=[int(t.trial_id) for t in trained])
        chosen = training_rows(self._spec, means, self._spec.optimizer.max_training_points)
        if chosen is not None:
            keep = set(chosen)
            trained = [t for t in trained if int(t.trial_id) in keep]
        pending = [t for t in self._trials if t.status == "pending"]
        self._last_fit = [t.trial_id for t in trained]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", BadInitialCandidatesWarning)  # a flat acquisition: any start will do
                candidates = fast_generate(self._spec, trained, pending, n, seed, self._fixed)
        except FAST_ERRORS as exc:
            reason = numerical_failure(exc)
            if reason is not None:
                raise ModelFailure(reason) from exc
            raise  # the fast engine is ours: anything but numerics is a bug, shown as one
        if not all(math.isfinite(v) for c in candidates for v in c.values() if isinstance(v, float)):
            raise ModelFailure("the model proposed a point that is not finite")
        out: list[SuggestedTrial] = []
        for parameters in candidates:
            # A candidate on a trial already run (a corner, with a parameter fixed) is
            # dropped; suggest() asks again for the rest, or tops the batch up with Sobol.
            if _key(parameters) in self._keys:
                continue
            out.append(self._add(TrialEntry(str(len(self._trials)), parameters, "botorch", None), engine="fast"))
        return out

    # ----------------------------------------------------------------- outcomes
    def complete(self, trial_id: str, measurements: Mapping[str, Measurement]) -> None:
        """Record a trial's measurements (Ax gets them before the next BoTorch suggestion).

        Args:
            trial_id: The trial, as suggested.
            measurements: Metric name → mean and optional standard error (``sem=None``: Ax
                infers the noise).

        Raises:
            OptimizerError: unknown trial, a trial already completed, failed or rejected, or a
                metric name Ax refuses.
        """
        trial = self._pending(trial_id)
        for name in measurements.keys() - self._metric_names:
            try:
                Metric(name=name)  # Ax's own check of a new metric's name
            except AX_ERRORS as exc:
                raise optimizer_error(
                    self._spec, f"completing trial {trial_id}", exc, "check the measurements", trial_id
                ) from exc
            self._metric_names.add(name)
        trial.status, trial.measurements = "completed", dict(measurements)
        self._stale = True

    def fail(self, trial_id: str, reason: str) -> None:
        """Record that a trial gave no usable result; Ax sees it as failed (never as a number).

        Args:
            trial_id: The trial, as suggested.
            reason: Why (``timeout``, ``device_error``, ...).

        Raises:
            OptimizerError: unknown trial, or a trial already completed, failed or rejected.
        """
        trial = self._pending(trial_id)
        trial.status, trial.reason = "failed", reason
        self._stale = True

    def reject(self, trial_id: str, reason: str) -> None:
        """Record that a person rejected a trial: abandoned in Ax, never run nor suggested again.

        Args:
            trial_id: The trial, as suggested (pending).
            reason: The person's reason.

        Raises:
            OptimizerError: unknown trial, or a trial already completed, failed or rejected.
        """
        trial = self._pending(trial_id)
        trial.status, trial.reason = "rejected", reason
        self._stale = True

    # ------------------------------------------------------------------ helpers
    def _pending(self, trial_id: str) -> TrialEntry:
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

    def _sync(self) -> None:
        """Build Ax's experiment afresh from the records if they changed since it was built."""
        if self._stale:
            quiet_ax(self._verbose)
            client = build_client(self._spec)
            attach_in_bulk(client, self._spec, self._trials)
            self._ax, self._stale, self._used = client, False, False

    def _add(self, entry: TrialEntry, *, in_ax: bool = False, engine: TrialEngine = "unknown") -> SuggestedTrial:
        """Record a trial; unless ``in_ax``, Ax's experiment is out of date until the next sync."""
        self._trials.append(entry)
        self._by_id[entry.trial_id] = entry
        self._keys.add(_key(entry.parameters))
        if entry.sobol_position is not None:
            self._next_position = max(self._next_position, entry.sobol_position + 1)
        if not in_ax:
            self._stale = True
        return SuggestedTrial(
            trial_id=entry.trial_id, parameters=dict(entry.parameters), generator=entry.generator,
            sobol_position=entry.sobol_position, engine=engine,
        )


def _key(parameters: Mapping[str, ParameterValue]) -> _Key:
    return tuple(sorted(parameters.items()))
