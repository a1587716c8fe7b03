"""Optuna's storage for finch's searches: the database a study lives in, opened with heartbeats so that a trial whose
worker stops is noticed and retried, and the study created or continued with clear errors.

Every failure to open a database (a malformed URL, a missing driver, an unreachable server, a folder that does not
exist) is a `ConfigError` raised before any training, naming the fix.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from finch.errors import ConfigError, mask_secrets

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
                 grace_period: int | None = None, create: bool = True) -> Any:
    """An Optuna RDB storage for `url` with heartbeats and retries of stale trials (None: in memory). With
    `create=False` (reading a study: `--show`, the report) a SQLite file that does not exist is an error, not a new
    empty database. Every URL in a message goes through `mask_secrets`: no password is ever printed.

    Raises:
        ConfigError: the URL is malformed, its driver is not installed, or the database cannot be reached.
    """
    if url is None:
        return None
    optuna = import_optuna()
    url, backend = check_storage_url(url, create=create)
    shown = mask_secrets(url)
    engine = {"pool_pre_ping": True}
    if backend == "postgresql":
        engine["connect_args"] = {"connect_timeout": 10}  # an unreachable host fails in seconds, not minutes
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
        raise ConfigError(f"storage {shown}: its database driver is not installed ({_hidden(error, url)}); for "
                          f"PostgreSQL: pip install 'finch[search]' (psycopg)") from error
    except Exception as error:  # sqlalchemy's OperationalError & co: no database there
        first = _hidden(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__, url)
        fix = ("that the file can be created and written there" if backend == "sqlite" else
               "that the server runs and the URL, user and password are right")
        raise ConfigError(f"storage {shown}: cannot open the database ({first}). Check {fix}") from error


_ENCODE_HINT = ("if the password holds any of @ : / ? # [ ] %, percent-encode them "
                "(python -c \"import urllib.parse; print(urllib.parse.quote('PASSWORD', safe=''))\": @ is %40, "
                ": is %3A, / is %2F, # is %23)")


def check_storage_url(url: str, create: bool = True) -> tuple[str, str]:
    """`url` checked without connecting, as it will be opened (a driver SQLAlchemy has installed), and its backend.

    Cheap enough to run before the data is read, so that a typo in `--storage` costs no tokenizing. No part of the
    password reaches a message: a password with an unescaped `@` would otherwise be split into a host name that
    the driver's error prints (`failed to resolve host 'ret@127.0.0.1'`).

    Raises:
        ConfigError: a malformed URL (with the percent-encoding fix when the password is the likely cause),
            `postgres://`, a password holding an unescaped `@`, a SQLite path that is a folder or whose folder does
            not exist, or (with `create=False`) a SQLite file that does not exist.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import NoSuchModuleError

    shown = mask_secrets(url)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme.split("+")[0] == "postgres":
        raise ConfigError(f"storage {shown}: SQLAlchemy names PostgreSQL postgresql://, not postgres://; use "
                          f"{mask_secrets('postgresql' + url[len(scheme.split('+')[0]):])}")
    try:
        parsed = make_url(url)
    except Exception as error:  # sqlalchemy's ArgumentError, a ValueError from a port typo: all a malformed URL
        hint = f"; {_ENCODE_HINT}" if "@" in url else ""
        raise ConfigError(f"storage {shown} is not a database URL ({_hidden(error, url)}); use "
                          f"sqlite:///path/search.db or postgresql://user:password@host:5432/dbname{hint}") from error
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise ConfigError(f"storage {shown}: {parsed.drivername!r} is no database (or driver) SQLAlchemy knows; use "
                          f"sqlite:///path/search.db, postgresql://user:password@host:5432/dbname or "
                          f"mysql+pymysql://user:password@host/dbname") from None
    if not scheme.startswith("sqlite") and url.partition("://")[2].count("@") > 1:
        raise ConfigError(f"storage {shown}: the part after the user name holds more than one '@', so the host "
                          f"cannot be told from the password; {_ENCODE_HINT}")
    if parsed.drivername == "postgresql" and _missing("psycopg") and not _missing("psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg2")  # SQLAlchemy 2.1 means psycopg 3 by `postgresql://`
        url = parsed.render_as_string(hide_password=False)
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        database = Path(parsed.database)
        if database.is_dir():
            raise ConfigError(f"storage {shown}: {database} is a folder; a SQLite URL names the database file, e.g. "
                              f"sqlite:///{database / 'search.db'}")
        if not database.parent.is_dir():
            raise ConfigError(f"storage {shown}: folder {database.parent} does not exist; create it or use another "
                              f"path")
        if not create and not database.is_file():
            raise ConfigError(f"storage {shown}: no database file {parsed.database} (nothing was created); check "
                              f"the path, or run the search first")
    return url, backend


def _hidden(text: object, url: str) -> str:
    """`text` (a library's error about `url`) masked, and without any piece of the URL's password that a driver
    may print apart from the URL (a host name, a port)."""
    masked = mask_secrets(text)
    _, _, rest = url.partition("://")
    userinfo = rest.rpartition("@")[0] if "@" in rest else ""
    secret = userinfo.partition(":")[2]
    for piece in sorted({p for p in re.split(r"[@:/?#]", secret) if len(p) >= 2}, key=len, reverse=True):
        masked = masked.replace(piece, "***")
    return masked


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def create_study(storage: Any, study_name: str | None, directions: list[str], load_if_exists: bool = False,
                 sampler: Any = None, pruner: Any = None, objective: str | None = None) -> Any:
    """`optuna.create_study`, with a study that exists already (and `load_if_exists=False`) as a clear error.

    A study is its directions and its objective as much as its name: continuing one with other directions (Optuna
    would reuse it silently, its best trial then the worst) or another `objective` (a name for what is optimised,
    recorded in the study) is refused, naming the fix."""
    optuna = import_optuna()
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, directions=directions,
                                    load_if_exists=load_if_exists, sampler=sampler, pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError as error:
        raise ConfigError(f"study {study_name!r} exists already in that storage; pass load_if_exists=True to "
                          f"continue it, or another study_name") from error
    except ValueError as error:  # a loaded study whose directions differ
        raise ConfigError(f"study {study_name!r}: {error}") from error
    found = [d.name.lower() for d in study.directions]
    if found != [d.lower() for d in directions]:
        raise ConfigError(f"study {study.study_name!r} was created to {', '.join(found)} and is now asked to "
                          f"{', '.join(directions)}: its best trial would be the worst. Continue it with its own "
                          f"direction ({', '.join(found)}), or choose another study name for this one")
    recorded = study.user_attrs.get(OBJECTIVE_ATTR)
    if objective is not None and recorded is not None and recorded != objective:
        raise ConfigError(f"study {study.study_name!r} optimises {recorded}, not {objective}: its trials cannot be "
                          f"compared with these. Continue it with the same objective, or choose another study name")
    if objective is not None and recorded is None:
        study.set_user_attr(OBJECTIVE_ATTR, objective)
    return study


OBJECTIVE_ATTR = "finch_objective"  # the study's user attribute naming what it optimises
