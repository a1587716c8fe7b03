"""Optuna's storage for finch's searches: the database a study lives in, opened with heartbeats so that a trial whose
worker stops is noticed and retried, and the study created or continued with clear errors.

Every failure to open a database (a malformed URL, a missing driver, an unreachable server, a folder that does not
exist) is a `ConfigError` raised before any training, naming the fix.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from finch.errors import ConfigError

HEARTBEAT_INTERVAL = 20  # seconds between a running trial's heartbeats in a database
GRACE_FACTOR = 3  # a trial silent for this many intervals is stale: failed, then retried
MAX_RETRIES = 3  # retries of one trial whose workers keep dying (a trial that crashes them all is not retried forever)


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError as error:
        raise ConfigError("hyperparameter search needs Optuna: pip install 'finch[search]' (or pip install optuna)") \
            from error
    return optuna


def open_storage(url: str | None, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int | None = None) -> Any:
    """An Optuna RDB storage for `url` with heartbeats and retries of stale trials (None: in memory).

    Raises:
        ConfigError: the URL is malformed, its driver is not installed, or the database cannot be reached.
    """
    if url is None:
        return None
    optuna = import_optuna()
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception as error:  # sqlalchemy's ArgumentError and friends: all a malformed URL
        raise ConfigError(f"storage {url!r} is not a database URL; use sqlite:///path/search.db or "
                          f"postgresql://user:password@host/dbname") from error
    if parsed.drivername == "postgresql" and _missing("psycopg") and not _missing("psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg2")  # SQLAlchemy 2.1 means psycopg 3 by `postgresql://`
        url = parsed.render_as_string(hide_password=False)
    shown = parsed.render_as_string(hide_password=True)
    engine = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "postgresql":
        engine["connect_args"] = {"connect_timeout": 10}  # an unreachable host fails in seconds, not minutes
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).parent
        if not folder.is_dir():
            raise ConfigError(f"storage {shown}: folder {folder} does not exist; create it or use another path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES,
                                                                     inherit_intermediate_values=True)
            for attempt in (1, 2):
                try:
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_interval,
                                                      grace_period=grace_period or GRACE_FACTOR * heartbeat_interval,
                                                      heartbeat_stale_trial_callback=retry)
                except Exception as error:
                    # workers starting together on an empty database race to create its tables: the loser retries
                    if attempt == 2 or "already exists" not in str(error):
                        raise
    except (ImportError, ModuleNotFoundError) as error:
        raise ConfigError(f"storage {shown}: its database driver is not installed ({error}); for PostgreSQL: "
                          f"pip install 'finch[search]' (psycopg)") from error
    except Exception as error:  # sqlalchemy's OperationalError & co: no database there
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"storage {shown}: cannot open the database ({first}). Check that the server runs and "
                          f"the URL, user and password are right") from error


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def create_study(storage: Any, study_name: str | None, directions: list[str], load_if_exists: bool = False,
                 sampler: Any = None, pruner: Any = None) -> Any:
    """`optuna.create_study`, with a study that exists already (and `load_if_exists=False`) as a clear error."""
    optuna = import_optuna()
    try:
        return optuna.create_study(storage=storage, study_name=study_name, directions=directions,
                                   load_if_exists=load_if_exists, sampler=sampler, pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError as error:
        raise ConfigError(f"study {study_name!r} exists already in that storage; pass load_if_exists=True to "
                          f"continue it, or another study_name") from error
    except ValueError as error:  # a loaded study whose directions differ
        raise ConfigError(f"study {study_name!r}: {error}") from error
