"""The live progress display of `closedloop run`, read from the event log like any other reader.

It polls the log (``read(after_seq=...)``) in a thread, so it shows exactly what a second
terminal's `closedloop status` would: trials done of the budget, running, failed, best so far.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from campaigns import (
    BrokerDisconnected,
    BrokerReconnected,
    CampaignPaused,
    CampaignState,
    ClosedLoopError,
    TrialCompleted,
    TrialFailed,
    apply,
)
from flows.cli.report import best_line, condition_line
from storage import MongoEventStore

__all__ = ["ProgressReporter"]


class ProgressReporter:
    """Shows a campaign's progress while it runs (a bar on a terminal, plain lines otherwise)."""

    def __init__(self, uri: str, database: str, campaign_id: str, *, quiet: bool = False, interval_s: float = 0.5) -> None:
        self.uri, self.database, self.campaign_id = uri, database, campaign_id
        self.quiet, self.interval_s = quiet, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="closedloop-progress", daemon=True)
        self.state = CampaignState()
        self.db_down = False

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

    def _bar(self, store: MongoEventStore, console: Console) -> None:
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(self.campaign_id, total=None, detail="starting (Prefect, optimizer)...")
            while True:
                self._poll(store)
                spec = self.state.spec
                done = self.state.count("completed") + self.state.count("failed")
                detail = (f"running {self.state.count('running')}, failed {self.state.count('failed')} | "
                          f"{condition_line(self.state, self.db_down) or best_line(self.state)}")
                bar.update(task, completed=done, total=None if spec is None else spec.budget.max_trials, detail=detail)
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
                print(f"[{done}/{total}] trial {e.trial_id} {what} | {best_line(self.state)}", file=sys.stderr, flush=True)

        while True:
            stopping = self._stop.wait(self.interval_s)
            self._poll(store, show)
            if stopping:
                return
