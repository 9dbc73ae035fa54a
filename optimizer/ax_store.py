"""Ax's SQL store: a campaign's Ax experiment saved through SQLAlchemy, for Ax's own tools.

An Ax user opens a campaign with ``Client.load_from_database(campaign_id,
storage_config=StorageConfig(url=...))``: the search space, the optimization config, and every
trial with its parameters, data, status and who chose it. The store is derived from the log
like everything else: ``write_experiment`` replaces the experiment of that name with the one the
log makes (``optimizer.replay.experiment_client``), so writing it again, or after more trials,
leaves one copy that matches the log.

Who chose a trial is kept where Ax keeps it: the trial property Ax reads for
``generation_method_str`` (``"sobol"``, ``"botorch"``, ``"human"``, ...), and the run metadata
(``generator``, ``engine``, ``status``, ``device_id``; a person's edit adds ``chosen_by``,
``decided_by`` and ``suggested_parameters``, as ``trial_run_metadata`` says).

Measurements are kept to the last digit: Ax 1.3.1 writes a trial's data with pandas'
``to_json()``, which keeps 10 decimal places (a reading of 1.2e-12 would be stored as 0); the
store is written with Ax's encoder but the data as exact JSON of the same shape, which Ax's own
decoder reads (``_PreciseData``).

Ax's engine and session factory are process-global (``ax.storage.sqa_store.db``): each write
points them at its URL. Ax itself is imported by the functions that need it; ``check_url``
loads SQLAlchemy only (the settings check a URL with it).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from campaigns.errors import OutputError, UsageError
from campaigns.spec import CampaignSpec
from campaigns.state import TrialRecord

if TYPE_CHECKING:
    import pandas as pd
    from ax import Client

__all__ = ["GENERATION_KEY", "check_url", "read_experiment", "shown_url", "write_experiment"]

#: The trial property Ax's ``generation_method_str`` reads first (``Keys.WARMSTART_TRIAL_MODEL_KEY``).
GENERATION_KEY = "generation_model_key"

_URL_HINT = "a SQLAlchemy database URL, e.g. sqlite:////path/to/ax.sqlite or postgresql://user@host/db"
_WRITE_HINT = "check the URL, the database's permissions and its driver; the campaign's log is intact"
_CURRENT_URL: str | None = None  # where Ax's process-global engine points


def check_url(url: str) -> str:
    """``url`` if SQLAlchemy can read it and knows its dialect.

    Raises:
        UsageError: it cannot (the message never shows a password).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise UsageError("not a SQLAlchemy database URL", _URL_HINT) from None
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise UsageError(f"SQLAlchemy knows no database {parsed.drivername!r}", _URL_HINT) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise UsageError("an in-memory SQLite database keeps nothing", "give a file: sqlite:////path/to/ax.sqlite")
    return url


def shown_url(url: str) -> str:
    """The URL as it may be printed: its password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _point_ax_at(url: str) -> None:
    """Ax's process-global engine on ``url``, with its tables created (once per database)."""
    global _CURRENT_URL
    from ax.storage.sqa_store.db import create_all_tables, get_engine, init_engine_and_session_factory

    if _CURRENT_URL != url:
        init_engine_and_session_factory(url=url, force_init=True)
        _CURRENT_URL = url
    create_all_tables(get_engine())  # a no-op for tables that exist; a deleted SQLite file comes back


def _local(t: datetime | None) -> datetime | None:
    # Ax keeps naive local times (datetime.now()); the log keeps UTC.
    return None if t is None else t.astimezone().replace(tzinfo=None)


def _note_who_chose(client: Client, trials: Iterable[TrialRecord]) -> None:
    """Each trial's generator, engine, status and device, and the log's times, on Ax's trial."""
    experiment = client._experiment
    for record in trials:
        trial = experiment.trials[int(record.trial_id)]
        trial._properties[GENERATION_KEY] = record.generator
        trial.update_run_metadata({"generator": record.generator, "engine": record.engine,
                                   "status": record.status, "device_id": record.device_id})
        trial._time_created = _local(record.suggested_at) or trial._time_created
        trial._time_run_started = _local(record.dispatched_at)
        if record.terminal:
            trial._time_completed = _local(record.finished_at) or trial._time_completed


def _columns_json(df: pd.DataFrame) -> str | None:
    """``df`` as pandas' ``to_json()`` writes it (orient "columns"), every float to the last
    digit; None if a value is not a plain number, text or missing."""
    out: dict[str, dict[str, Any]] = {}
    for column in df.columns:
        values: dict[str, Any] = {}
        for index, value in zip(df.index.tolist(), df[column].tolist(), strict=True):
            if isinstance(value, float) and not math.isfinite(value):
                value = None  # as pandas writes NaN
            elif value is not None and not isinstance(value, int | float | str):
                return None
            values[str(index)] = value
        out[str(column)] = values
    return json.dumps(out)


def _precise_encoder() -> type:
    from ax.storage.sqa_store.encoder import Encoder

    class _PreciseData(Encoder):
        """Ax's encoder, with a trial's data written to the last digit (see the module's docstring)."""

        def data_to_sqa(self, data: Any, trial_index: int | None, timestamp: int) -> Any:
            sqa = super().data_to_sqa(data, trial_index, timestamp)
            exact = _columns_json(data.full_df)
            if exact is not None:
                sqa.data_json = exact
            return sqa

    return _PreciseData


def write_experiment(url: str, name: str, spec: CampaignSpec, trials: Iterable[TrialRecord],
                     created_at: datetime | None = None) -> None:
    """Save the campaign's experiment as ``name`` in the Ax database at ``url``, replacing any
    experiment of that name.

    Raises:
        OptimizerError: Ax refuses the log's experiment.
        OutputError: the database cannot be reached or written.
    """
    from ax.storage.sqa_store.delete import delete_experiment
    from ax.storage.sqa_store.save import save_experiment
    from sqlalchemy.exc import SQLAlchemyError

    from optimizer.ax_setup import AX_ERRORS, quiet_ax
    from optimizer.replay import experiment_client

    records = list(trials)
    client = experiment_client(spec, records)
    experiment = client._experiment
    experiment.name = name
    if created_at is not None:
        experiment._time_created = _local(created_at)  # type: ignore[assignment]
    _note_who_chose(client, records)
    quiet_ax(False)
    deleting = logging.getLogger("ax.storage.sqa_store.delete")
    level = deleting.level
    deleting.setLevel(logging.ERROR)  # "You are deleting ...": replacing it is the point
    try:
        with warnings.catch_warnings():
            # SQLAlchemy's note on an Ax column type (no cache key): Ax's to fix, not the user's.
            warnings.filterwarnings("ignore", message=".*will not produce a cache key")
            _point_ax_at(url)
            if _exists(name):
                delete_experiment(name)
            save_experiment(experiment, encoder_cls=_precise_encoder())
    except ImportError as exc:  # the URL's driver (psycopg2, ...) is not installed
        raise OutputError(f"cannot write Ax's SQL store {shown_url(url)}: no driver for it ({exc})",
                          f"install the database's Python driver; {_WRITE_HINT}") from None
    except (SQLAlchemyError, OSError, *AX_ERRORS) as exc:
        detail = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
        raise OutputError(f"cannot write Ax's SQL store {shown_url(url)}: {type(exc).__name__}: {detail}",
                          _WRITE_HINT) from None
    finally:
        deleting.setLevel(level)


def _exists(name: str) -> bool:
    from ax.storage.sqa_store.db import session_scope
    from ax.storage.sqa_store.sqa_classes import SQAExperiment

    with session_scope() as session:
        return session.query(SQAExperiment.id).filter_by(name=name).one_or_none() is not None


def read_experiment(url: str, name: str) -> Client:
    """The experiment ``name`` loaded by Ax's own ``Client.load_from_database`` from ``url``
    (in this process: Ax's engine is pointed at ``url`` first, which Ax itself does only once)."""
    import pandas as pd
    from ax import Client
    from ax.api.configs import StorageConfig

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will not produce a cache key")
        _point_ax_at(url)
        return Client.load_from_database(name, storage_config=StorageConfig(url=url))
