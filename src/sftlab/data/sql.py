"""SQL sources: rows of a query over any SQLAlchemy URL (a bare path is a SQLite file), and the rule that no
message ever shows the password of a database URL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sftlab.data.readers import Record, first_line
from sftlab.errors import DataError


def read_sql(url: str, query: str) -> Iterator[Record]:
    """Rows of `query`, sent to the database as written (no `:name` bind parameters), over any SQLAlchemy URL.

    A bare path means a SQLite file. No message ever shows the password of the URL.
    """
    import sqlalchemy as sa

    if "://" not in url:
        url = f"sqlite:///{Path(url).resolve()}"
    engine = _create_engine(_sqlite_read_only(url))
    try:
        with engine.connect() as conn:
            options = conn.execution_options(stream_results=True, no_parameters=True)
            result = options.exec_driver_sql(query)
            names = list(result.keys())
            twice = next((n for n in names if names.count(n) > 1), None)
            if twice is not None:  # a row as a mapping would silently keep only the last of them
                raise DataError(f"the query returns column '{twice}' twice; name each column once (AS ...)",
                                source=_redact(url), reason="invalid SQL result")
            for i, row in enumerate(result.mappings()):
                yield f"row {i}", dict(row)
    except sa.exc.SQLAlchemyError as e:
        raise DataError(_hide_password(f"SQL query failed: {e.__class__.__name__}: {first_line(e)}", url),
                        source=_redact(url), reason="sql error") from None
    finally:
        engine.dispose()


def _sqlite_read_only(url: str) -> str:
    """A SQLite file is opened read-only: a query cannot change the user's database, and a path to no file is an
    error instead of a new empty database. Other databases get the query as written."""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return url  # _create_engine reports it
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return url
    if not Path(db).is_file():
        raise DataError("SQLite file not found", source=db, reason="missing source")
    return parsed.set(database=f"file:{Path(db).resolve()}", query={**parsed.query, "mode": "ro", "uri": "true"}
                      ).render_as_string(hide_password=False)


def _create_engine(url: str):
    """sqlalchemy.create_engine, with an unknown dialect, a missing driver or a malformed URL as a DataError."""
    import sqlalchemy as sa

    def fail(message: str) -> DataError:
        return DataError(_hide_password(message, url), source=_redact(url), reason="sql error")

    try:
        return sa.create_engine(url)
    except sa.exc.NoSuchModuleError:
        name = sa.engine.make_url(url).drivername
        raise fail(f"unknown database dialect '{name}' (SQLAlchemy has no plugin for it; e.g. sqlite, "
                   "postgresql+psycopg2, mysql+pymysql)") from None
    except sa.exc.ArgumentError:
        raise fail("not a valid database URL (expected dialect+driver://user:password@host/database)") from None
    except ImportError as e:
        raise fail(f"the database driver '{e.name or first_line(e)}' is not installed in sftlab's Python "
                   "environment") from None


def _hide_password(message: str, url: str) -> str:
    """Drivers may echo what they were given: take the password out of any text that goes to the user."""
    import sqlalchemy as sa

    try:
        password = sa.engine.make_url(url).password
    except Exception:  # noqa: BLE001 - an unparsable URL: nothing to look for
        return message
    return message.replace(str(password), "***") if password else message


def _redact(url: str) -> str:
    """Never print a password that came in a database URL (a bare SQLite path has none: it is shown as given)."""
    import sqlalchemy as sa

    if "://" not in url:
        return url
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database url>"


def is_sql_source(path: str | None, type: str | None = None, query: str | None = None) -> bool:
    """A database URL (`sqlite:///pool.db`) is a SQL source even when `type: sql` was left out."""
    return type == "sql" or query is not None or (type is None and "://" in (path or ""))


def source_name(path: str, type: str | None = None, query: str | None = None) -> str:
    """How a source is named in messages: a database URL without its password, anything else as given."""
    return _redact(path) if is_sql_source(path, type, query) else path
