"""The live progress display of `closedloop run`, read from the event log like any other reader.

It polls the log (``read(after_seq=...)``) in a thread, so it shows exactly what a second
terminal's `closedloop status` would: trials done of the budget, running, failed, best so far.
On a narrow terminal the count and the clock keep their place and the detail (best so far, its
parameters) is what gets cut; until the first trial is dispatched the line says what the run is
starting; log lines written while the bar is shown go above it, never into it. Beside the best
observed it shows the best by the model (``flows.cli.report.model_of``), refitted only when
the completed trials have changed, and at most every ``ModelCache.every_s`` seconds.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import IO, TYPE_CHECKING

from rich.console import Console
from rich.file_proxy import FileProxy
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column
from rich.text import Text

from campaigns import (
    BrokerDisconnected,
    BrokerReconnected,
    CampaignPaused,
    CampaignState,
    ClosedLoopError,
    EventBase,
    RunStarted,
    TrialCompleted,
    TrialDispatched,
    TrialFailed,
    TrialsSuggested,
    apply,
)
from flows.cli.report import best_line, condition_line, model_line, model_of
from storage import MongoEventStore

if TYPE_CHECKING:
    from optimizer.model_best import ModelBest

__all__ = ["ModelCache", "ProgressReporter", "bar_columns", "detail_line", "logs_above", "short_best", "short_model",
           "starting_line"]


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def short_best(state: CampaignState) -> tuple[str, str]:
    """The best so far in few characters (4 significant digits) and its parameters:
    ``("best 0.3979 (#12)", "x1=3.142 x2=2.275")``."""
    spec = state.spec
    if spec is None:
        return "best -", ""
    if len(spec.objectives) > 1:
        return f"Pareto front: {len(state.pareto_front())}", ""
    best = state.best()
    if best is None:
        return "best -", ""
    value = best.measurements[spec.objectives[0].name].mean
    return (f"best {_short(value)} (#{best.trial_id})",
            " ".join(f"{k}={_short(v)}" for k, v in best.parameters.items()))


def short_model(state: CampaignState, model: ModelBest | None) -> str:
    """The best by the model in few characters: ``"model #9 0.41±0.05"`` ("" without one;
    several objectives: the size of the model's Pareto set)."""
    spec = state.spec
    if spec is None or model is None:
        return ""
    if len(spec.objectives) > 1:
        return f"model front: {len(model.front)}" if model.front else ""
    if model.pick is None:
        return ""
    e = model.pick.metrics[spec.objectives[0].name]
    return f"model #{model.pick.trial_id} {_short(e.mean)}±{e.sd:.2g}"


class ModelCache:
    """The model-based best for a display that polls: refitted only when the completed trials
    (or the spec) have changed, and then at most every ``every_s`` seconds; the last fit is
    shown meanwhile, so a poll costs nothing and a burst of results one fit.

    Args:
        every_s: The least time between two fits.
        clock: Seconds, monotonic (injected: tests drive it).
    """

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self._clock = every_s, clock
        self._key: object = None
        self._at: float | None = None
        self._model: ModelBest | None = None

    def get(self, state: CampaignState) -> ModelBest | None:
        """The model of ``state``'s completed trials, or of the last ones fitted."""
        if state.spec is None:
            return None
        key = (sorted(t.trial_id for t in state.trials.values() if t.status == "completed"), state.spec)
        now = self._clock()
        if key != self._key and (self._at is None or now - self._at >= self.every_s):
            self._model, self._key, self._at = model_of(state), key, now
        return self._model


def starting_line(last: EventBase | None) -> str:
    """What a run does before its first dispatch, from the last event it logged."""
    if isinstance(last, TrialsSuggested):
        return "starting: sending the first trials to the instruments..."
    if isinstance(last, RunStarted):
        return "starting: the optimizer's first trials (centre and Sobol points)..."
    return "starting: Prefect flow run, broker, optimizer..."


def detail_line(state: CampaignState, database_down: bool = False, model: ModelBest | None = None) -> str:
    """The bar's text after the clock, most important first, as a narrow terminal cuts it from
    the end: what holds the campaign up (or the best value), running and failed, the best by the
    model (``model``), the best's parameters."""
    best, parameters = short_best(state)
    counts = f"{state.count('running')} running, {state.count('failed')} failed"
    condition = condition_line(state, database_down)
    if condition:
        return f"{condition} | {counts}"
    by_model = short_model(state, model)
    return " | ".join(part for part in (best, counts, by_model, parameters) if part)


class _DetailColumn(ProgressColumn):
    """The detail text, on one line, cut with an ellipsis: the only column the table narrows
    (rich narrows the columns that may wrap first; this one may, its text never does)."""

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("detail", "")), no_wrap=True, overflow="ellipsis")


def bar_columns() -> tuple[ProgressColumn, ...]:
    """The bar's columns: the campaign (at most 20 characters), a 12-character bar, the count and
    the clock keep their width; the detail takes what is left, cut with an ellipsis, so an
    80-column terminal shows the count and the clock whole."""
    return (
        TextColumn("{task.description}", markup=False,
                   table_column=Column(no_wrap=True, min_width=8, max_width=20, overflow="ellipsis")),
        BarColumn(bar_width=12),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
        _DetailColumn(),
    )


def _std_streams() -> set[int]:
    return {id(f) for f in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__) if f is not None}


@contextmanager
def logs_above(console: Console, streams: set[int] | None = None) -> Iterator[Callable[[], None]]:
    """While a live display is shown on ``console``: the log handlers that write to the terminal
    write above it (rich's ``FileProxy``), not into the bar. Yields a function that catches the
    handlers made since (Prefect's, a library's); every one is given its stream back at the end.

    Args:
        console: The console of the live display.
        streams: ``id()`` of the streams to take over (default: the standard streams and the console's file).
    """
    targets = (streams if streams is not None else _std_streams()) | {id(console.file)}
    taken: dict[logging.StreamHandler[IO[str]], IO[str]] = {}

    def catch() -> None:
        loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                           if isinstance(lg, logging.Logger))]
        for logger in loggers:
            for handler in logger.handlers:
                if (isinstance(handler, logging.StreamHandler) and handler not in taken
                        and id(handler.stream) in targets):
                    taken[handler] = handler.setStream(FileProxy(console, handler.stream))  # type: ignore[arg-type]

    catch()
    try:
        yield catch
    finally:
        for handler, stream in taken.items():
            handler.flush()
            handler.setStream(stream)


class ProgressReporter:
    """Shows a campaign's progress while it runs (a bar on a terminal, plain lines otherwise)."""

    def __init__(self, uri: str, database: str, campaign_id: str, *, quiet: bool = False, interval_s: float = 0.5) -> None:
        self.uri, self.database, self.campaign_id = uri, database, campaign_id
        self.quiet, self.interval_s = quiet, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="closedloop-progress", daemon=True)
        self.state = CampaignState()
        self.db_down = False
        self._last: EventBase | None = None
        self._dispatched = False  # "starting: ..." until the first trial is dispatched
        self._models = ModelCache()

    def __enter__(self) -> ProgressReporter:
        if not self.quiet:
            self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        console = Console(file=sys.stderr)
        with MongoEventStore(self.uri, database=self.database) as store:
            if console.is_terminal:
                self._bar(store, console)
            else:
                self._lines(store)

    def _poll(self, store: MongoEventStore, on_event: Callable[[object], None] | None = None) -> None:
        try:
            events = store.read(self.campaign_id, after_seq=self.state.last_seq)
        except ClosedLoopError:
            if not self.db_down:
                self.db_down = True
                if on_event is not None:
                    on_event("database unreachable: nothing is dispatched until it is back; retrying")
            return
        if self.db_down:
            self.db_down = False
            if on_event is not None:
                on_event("database is back")
        for e in events:
            apply(self.state, e)
            if on_event is not None:
                on_event(e)

    def _watch(self, event: object) -> None:
        """Note the run's start-up: the last event, and the first dispatch once seen."""
        if isinstance(event, EventBase):
            self._last = event
            if isinstance(event, TrialDispatched | TrialCompleted | TrialFailed):
                self._dispatched = True

    def _detail(self) -> str:
        if not self._dispatched and not condition_line(self.state, self.db_down) and self.state.status == "running":
            return starting_line(self._last)
        return detail_line(self.state, self.db_down, self._models.get(self.state))

    def _bar(self, store: MongoEventStore, console: Console) -> None:
        with Progress(*bar_columns(), console=console, transient=False) as bar, logs_above(console) as catch:
            task = bar.add_task(self.campaign_id, total=None, detail=starting_line(None))
            while True:
                self._poll(store, self._watch)
                catch()  # handlers a library set up since (Prefect configures its own)
                spec = self.state.spec
                done = self.state.count("completed") + self.state.count("failed")
                bar.update(task, completed=done, total=None if spec is None else spec.budget.max_trials,
                           detail=self._detail())
                if self._stop.wait(self.interval_s):
                    self._poll(store)
                    return

    def _lines(self, store: MongoEventStore) -> None:
        def show(e: object) -> None:
            if isinstance(e, str):
                print(e, file=sys.stderr, flush=True)
            elif isinstance(e, BrokerDisconnected | BrokerReconnected | CampaignPaused):
                print(condition_line(self.state, self.db_down) or "broker is back", file=sys.stderr, flush=True)
            elif isinstance(e, TrialCompleted | TrialFailed):
                spec = self.state.spec
                done = self.state.count("completed") + self.state.count("failed")
                total = "?" if spec is None else spec.budget.max_trials
                what = "completed" if isinstance(e, TrialCompleted) else f"failed ({e.reason})"
                model = self._models.get(self.state)
                shown = spec is not None and model is not None and (model.pick is not None or model.front)
                by_model = f" | {model_line(spec, model)}" if shown else ""  # type: ignore[arg-type]
                print(f"[{done}/{total}] trial {e.trial_id} {what} | {best_line(self.state)}{by_model}",
                      file=sys.stderr, flush=True)

        while True:
            stopping = self._stop.wait(self.interval_s)
            self._poll(store, show)
            if stopping:
                return
