"""Whether the database answers, with the schema this worker needs: one read of the schema's
revision on an engine of its own.

The readiness probe (``GET /readyz``) asks this. Its own engine (one pooled connection,
checked before use) keeps the answer about the database, not about the order service's pool:
under load that pool may be busy for a moment, and a probe that waited on it would take a
healthy worker out of service exactly when it is needed. On SQLite the statement takes the
write lock for an instant, as every transaction on our engines does (``schema.make_engine``).

A database that answers but was never migrated, or is at an older revision than this release's
(a new release deployed before ``migrate`` ran), is not ready: every order would fail on a
missing table or column. A revision this release does not know is a newer release's, migrated
ahead of a rolling upgrade; migrations only add (expand, then contract a release later), so
this release still runs on it and stays ready.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.adapters.db.errors import is_unavailable
from pipeline.adapters.db.schema import MIGRATIONS_DIR, make_engine
from pipeline.domain.failures import Unavailable


def make_ping_engine(url: str) -> AsyncEngine:
    """A one-connection engine for :func:`ping`; a connection the server dropped is replaced
    before use instead of failing a probe."""
    if make_url(url).get_backend_name() == "postgresql":
        return make_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True, pool_timeout=5)
    return make_engine(url)


def known_revisions() -> tuple[str, ...]:
    """This release's schema revisions, oldest first (the last is the head ``migrate`` reaches)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS_DIR))
    return tuple(reversed([s.revision for s in script.walk_revisions()]))


def _revision(sync: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(sync).get_current_revision()


async def ping(engine: AsyncEngine, revisions: Sequence[str]) -> None:
    """One round trip to the database, reading the schema's revision against ``revisions``
    (:func:`known_revisions`). :class:`Unavailable` when it cannot answer (the driver's error
    type in its message, never its text: it may name hosts or users), or when the schema is
    missing or older than the last of ``revisions``, saying to migrate."""
    try:
        async with engine.connect() as conn:
            current = await conn.run_sync(_revision)
    except Exception as exc:
        if is_unavailable(exc):
            raise Unavailable(f"the database is unavailable ({type(exc).__name__})") from exc
        raise
    head = revisions[-1]
    if current is None:
        raise Unavailable(f"the database has no schema; this release needs revision {head}: "
                          "run `python -m pipeline migrate`")  # fmt: skip
    if current != head and current in revisions:
        raise Unavailable(f"the database schema is at revision {current}, older than this "
                          f"release's {head}: run `python -m pipeline migrate`")  # fmt: skip
