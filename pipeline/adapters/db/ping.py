"""Whether the database answers: one ``SELECT 1`` on an engine of its own.

The readiness probe (``GET /readyz``) asks this. Its own engine (one pooled connection,
checked before use) keeps the answer about the database, not about the order service's pool:
under load that pool may be busy for a moment, and a probe that waited on it would take a
healthy worker out of service exactly when it is needed. On SQLite the statement takes the
write lock for an instant, as every transaction on our engines does (``schema.make_engine``).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.adapters.db.errors import is_unavailable
from pipeline.adapters.db.schema import make_engine
from pipeline.domain.failures import Unavailable


def make_ping_engine(url: str) -> AsyncEngine:
    """A one-connection engine for :func:`ping`; a connection the server dropped is replaced
    before use instead of failing a probe."""
    if make_url(url).get_backend_name() == "postgresql":
        return make_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True, pool_timeout=5)
    return make_engine(url)


async def ping(engine: AsyncEngine) -> None:
    """One round trip to the database; :class:`Unavailable` (the driver's error type in its
    message, never its text: it may name hosts or users) when it cannot answer."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        if is_unavailable(exc):
            raise Unavailable(f"the database is unavailable ({type(exc).__name__})") from exc
        raise
