"""``AxOptimizer``: suggest, complete, fail and reject trials; rebuild the optimizer from the log.

The optimizer is derived state. It keeps its own records of the campaign's trials and builds
an Ax experiment from them (in one pass, as ``rebuild`` does) only when Ax generates; which
engine suggests, and when the Sobol opening ends, ``optimizer.engines`` decides. With the opening
ours (Sobol positions recorded), every model fitted from scratch, and each call seeded from
``(seed, trials so far)``, a rebuilt optimizer makes the live one's next suggestion.

Nothing a device may send stops it (``optimizer.robust``): a model that fails numerically
gives way to the next Sobol points (generator ``sobol (fallback: <reason>)``). People and
changes reach it through ``rebuild(effective spec, trials)``: bounds, fixed parameters and
constraints as changed; an edited trial attached with its edited parameters, a rejected one
abandoned. The measurements behind these choices are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Literal

import torch

from campaigns.errors import OptimizerError
from campaigns.events import Measurement, ParameterValue, Prediction, SuggestedTrial, TrialEngine
from campaigns.spec import CampaignSpec
from campaigns.state import TrialRecord
from optimizer.engines import EngineChoice, default_initialization_trials, model_engine, sobol_phase
from optimizer.records import TrialEntry, ordered_trials, training_rows
from optimizer.robust import ModelFailure, numerical_failure
from optimizer.sobol import SobolSampler, fixed_parameter_values

if TYPE_CHECKING:
    from ax import Client

__all__ = ["AxOptimizer", "default_initialization_trials"]

_Key = tuple[tuple[str, ParameterValue], ...]

log = logging.getLogger("closedloop.optimizer")

#: The engines that generate through Ax. Ax (seconds to import) is loaded only for them, or when
#: a caller asks for Ax's view of the trials (``_client``).
_AX_ENGINES = frozenset({"ax", "ax_default"})


class AxOptimizer:
    """The campaign's optimizer: the centre and scrambled Sobol points, then the spec's engine.

    A trial's id is its Ax trial index as text (``"0"``, ``"1"``, ...). Trials suggested and
    not yet completed or failed are pending, so new suggestions avoid them.

    Args:
        spec: The campaign.
        threads: If given, ``torch.set_num_threads(threads)`` (process-wide) — one thread per
            optimizer process avoids oversubscribing the cores when several torch processes
            share a machine.
        verbose: Let Ax log at INFO; by default its loggers are set to WARNING (process-wide).

    Raises:
        OptimizerError: Ax rejects the campaign's search space or objectives (an engine that
            generates through Ax; the others load Ax only if asked for its view, ``_client``).
    """

    def __init__(self, spec: CampaignSpec, *, threads: int | None = None, verbose: bool = False) -> None:
        if threads is not None:
            if threads < 1:
                raise OptimizerError(f"threads={threads}: need at least 1", "pass threads >= 1, or None")
            torch.set_num_threads(threads)
        self._spec = spec
        self._engine = model_engine(spec)
        self._verbose = verbose
        # Ax's view of the trials, built when first needed: ``_stale`` once the records changed
        # since it was built, ``_used`` once a BoTorch call ran on it (each call gets an
        # experiment fresh from the records, as a rebuilt optimizer's first call does).
        self._ax: Client | None = None
        self._stale = self._used = False
        if self._engine.engine in _AX_ENGINES:
            self._ax = self._new_client()  # Ax refuses a space or an objective up front
        else:
            _check_objectives(spec)  # what Ax would refuse of the objectives, for every engine
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
        in_ax = opt._ax is not None or replay == "per_trial"
        if in_ax:
            from optimizer.replay import attach_in_bulk, attach_per_trial

            client = opt._ax if opt._ax is not None else opt._new_client()
            (attach_per_trial if replay == "per_trial" else attach_in_bulk)(client, spec, entries)
            opt._ax = client
        for entry in entries:
            opt._add(entry, in_ax=in_ax)
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
            from optimizer.generation import training_trials

            assert self._ax is not None  # _last_fit is None only after an Ax call
            data = self._ax._experiment.lookup_data()
            bounded = self._engine.engine != "ax_default"  # Ax's default fits on every trial
            subset = training_trials(self._spec, data, self._spec.optimizer.max_training_points) if bounded else None
            self._last_fit = [str(i) for i in sorted(set((subset or data).df["trial_index"].astype(int)))]
        return list(self._last_fit)

    @property
    def _client(self) -> Client:
        """The Ax client, its experiment brought up to date with the records first (read only)."""
        return self._sync()

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
        from optimizer.ax_setup import quiet_ax
        from optimizer.generation import generate
        from optimizer.replay import attach_one

        self._stale |= self._used
        client = self._sync()
        self._used = True
        quiet_ax(self._verbose)
        self._last_fit = None
        out: list[SuggestedTrial] = []
        batch: set[_Key] = set()
        for parameters, prediction in generate(client, self._spec, n, seed, self._fixed):
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
            attach_one(client, self._spec, entry)
            out.append(self._add(entry, in_ax=True, engine=self._engine.engine, prediction=prediction))
        return out

    def _suggest_fast(self, n: int, seed: int) -> list[SuggestedTrial]:
        """The fast method on a continuous space (``optimizer.fastbo``), from the records alone."""
        import pandas as pd
        from botorch.exceptions.warnings import BadInitialCandidatesWarning

        from optimizer.fastbo import FAST_ERRORS, fast_generate

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
        if not all(math.isfinite(v) for c in candidates for v in c.parameters.values() if isinstance(v, float)):
            raise ModelFailure("the model proposed a point that is not finite")
        out: list[SuggestedTrial] = []
        for parameters, prediction in candidates:
            # A candidate on a trial already run (a corner, with a parameter fixed) is
            # dropped; suggest() asks again for the rest, or tops the batch up with Sobol.
            if _key(parameters) in self._keys:
                continue
            out.append(self._add(TrialEntry(str(len(self._trials)), parameters, "botorch", None), engine="fast",
                                 prediction=prediction or None))
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
            if not isinstance(name, str) or not name:  # Ax's check of a metric's name (``Metric``)
                raise OptimizerError(
                    f"campaign {self._spec.name!r}: completing trial {trial_id}: "
                    f"metric name {name!r}: a metric name must be a non-empty string",
                    "check the measurements", trial_id=trial_id,
                )
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

    def _new_client(self) -> Client:
        from optimizer.ax_setup import build_client, quiet_ax

        quiet_ax(self._verbose)
        return build_client(self._spec)

    def _sync(self) -> Client:
        """Ax's experiment, built afresh from the records if they changed since it was built."""
        if self._ax is None or self._stale:
            from optimizer.replay import attach_in_bulk

            client = self._new_client()
            attach_in_bulk(client, self._spec, self._trials)
            self._ax, self._stale, self._used = client, False, False
        return self._ax

    def _add(self, entry: TrialEntry, *, in_ax: bool = False, engine: TrialEngine = "unknown",
             prediction: Mapping[str, Prediction] | None = None) -> SuggestedTrial:
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
            prediction=None if prediction is None else dict(prediction),
        )


def _check_objectives(spec: CampaignSpec) -> None:
    """Refuse, as Ax does, an outcome constraint on a single objective's own metric (with two
    objectives or more it is that objective's threshold)."""
    if len(spec.objectives) != 1:
        return
    name = spec.objectives[0].name
    if any(c.metric == name for c in spec.parsed_outcome_constraints):
        raise OptimizerError(
            f"campaign {spec.name!r}: setting up the objectives: {name!r} is the objective and an "
            "outcome constraint",
            "check objectives and outcome_constraints (a single objective's own metric "
            "cannot also be an outcome constraint)",
        )


def _key(parameters: Mapping[str, ParameterValue]) -> _Key:
    return tuple(sorted(parameters.items()))
