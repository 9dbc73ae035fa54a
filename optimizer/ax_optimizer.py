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
  (MBM) node. A fresh strategy is set before each call, so the live optimizer fits its model
  from scratch just as a rebuilt one does (Ax would otherwise reuse a model fitted earlier).
- **Each BO call is seeded** from ``(spec.seed, number of trials so far)``; the global
  random, numpy and torch states are restored afterwards.

The BO phase starts once ``initialization_trials`` trials were suggested *and* at least half
of that many (rounded up) were completed with data; until then the optimizer keeps suggesting
Sobol points, so devices never idle waiting for data. ``optimizer.method: sobol`` never leaves
the Sobol phase.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from ax.exceptions.generation_strategy import GenerationStrategyRepeatedPoints
from ax.utils.common.random import with_rng_seed

from campaigns.errors import OptimizerError
from campaigns.events import Measurement, ParameterValue, SuggestedTrial
from campaigns.spec import CampaignSpec
from campaigns.state import TrialRecord
from optimizer.ax_setup import (
    AX_ERRORS,
    botorch_strategy,
    build_client,
    optimizer_error,
    quiet_ax,
)
from optimizer.replay import attach_in_bulk, ordered_trials, raw_data
from optimizer.sobol import SobolSampler

__all__ = ["AxOptimizer", "default_initialization_trials"]

_Status = Literal["pending", "completed", "failed"]


def default_initialization_trials(spec: CampaignSpec) -> int:
    """How many Sobol trials open a campaign: the spec's setting, else ``max(5, 2 * d)``."""
    if spec.optimizer.initialization_trials is not None:
        return spec.optimizer.initialization_trials
    return max(5, 2 * len(spec.parameters))


@dataclass
class _Trial:
    trial_id: str
    parameters: dict[str, ParameterValue]
    generator: str
    sobol_position: int | None
    status: _Status = "pending"
    has_data: bool = False


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

        Completed trials carry their measurements, failed ones their reason; suggested and
        running trials stay pending. The Sobol phase resumes where the log left it.

        Args:
            spec: The campaign (from its ``CampaignCreated`` event).
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
                opt._attach(parameters, record.generator, record.sobol_position)
                if record.status == "completed":
                    opt.complete(record.trial_id, record.measurements)
                elif record.status == "failed":
                    opt.fail(record.trial_id, record.failure_reason or "failed")
            return opt
        attach_in_bulk(opt._client, spec, ordered)
        for record, parameters in ordered:
            opt._record(record.trial_id, parameters, record.generator, record.sobol_position)
            trial = opt._by_id[record.trial_id]
            if record.status == "completed":
                trial.status, trial.has_data = "completed", bool(record.measurements)
            elif record.status == "failed":
                trial.status = "failed"
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
        """How many trials exist (suggested, running, completed or failed)."""
        return len(self._trials)

    @property
    def next_sobol_position(self) -> int:
        """The position in the Sobol sequence where the next Sobol point is looked for."""
        positions = [t.sobol_position for t in self._trials if t.sobol_position is not None]
        return max(positions) + 1 if positions else 0

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
        if observed < math.ceil(init / 2):
            return wanted
        return min(wanted, max(0, init - len(self._trials)))

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
        try:
            # A fresh strategy: the model is fitted from scratch, as in a rebuilt optimizer.
            self._client.set_generation_strategy(botorch_strategy(self._spec))
            with with_rng_seed(seed):
                generated = self._client.get_next_trials(max_trials=n)
        except GenerationStrategyRepeatedPoints:
            return []  # the model only proposes points already tried; suggest() uses Sobol
        except AX_ERRORS as exc:
            raise optimizer_error(
                self._spec, "suggesting trials", exc,
                "check the recorded measurements; to go on without a model set "
                "`optimizer: {method: sobol}` in the campaign file",
            ) from exc
        out = []
        for index in sorted(generated):
            if index != len(self._trials):
                raise OptimizerError(
                    f"campaign {self._spec.name!r}: Ax created trial {index}, expected {len(self._trials)}",
                    "this is a bug in closedloop; please report it",
                )
            out.append(self._record(str(index), dict(generated[index]), "botorch", None))
        return out

    # ----------------------------------------------------------------- outcomes
    def complete(self, trial_id: str, measurements: Mapping[str, Measurement]) -> None:
        """Record a trial's measurements; the trial is completed in Ax.

        Args:
            trial_id: The trial, as suggested.
            measurements: Metric name → mean and optional standard error (``sem=None``: Ax
                infers the noise).

        Raises:
            OptimizerError: unknown trial, a trial already completed or failed, or Ax refuses
                the data.
        """
        trial = self._pending(trial_id)
        raw = raw_data(measurements)
        try:
            self._client.complete_trial(trial_index=int(trial_id), raw_data=raw or None)
        except AX_ERRORS as exc:
            raise optimizer_error(
                self._spec, f"completing trial {trial_id}", exc, "check the measurements", trial_id
            ) from exc
        trial.status, trial.has_data = "completed", bool(raw)

    def fail(self, trial_id: str, reason: str) -> None:
        """Record that a trial gave no usable result; Ax sees it as failed (never as a number).

        Args:
            trial_id: The trial, as suggested.
            reason: Why (``timeout``, ``device_error``, ...).

        Raises:
            OptimizerError: unknown trial, or a trial already completed or failed.
        """
        trial = self._pending(trial_id)
        try:
            self._client.mark_trial_failed(trial_index=int(trial_id), failed_reason=reason)
        except AX_ERRORS as exc:
            raise optimizer_error(self._spec, f"failing trial {trial_id}", exc, "check the trial id", trial_id) from exc
        trial.status = "failed"

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
                "a trial is completed or failed once; ignore the duplicate",
                trial_id=trial_id,
            )
        return trial

    def _attach(self, parameters: dict[str, ParameterValue], generator: str, position: int | None) -> SuggestedTrial:
        try:
            index = self._client.attach_trial(parameters=parameters)
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
