"""Which forwarder publishes: a lock that dies with its holder — a PostgreSQL advisory lock
held on a session of its own (whose LISTEN also wakes the forwarder when a transaction
commits an outbox row), or an exclusive file lock beside the SQLite database. Both provide
:class:`pipeline.services.ports.Leadership`."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from pipeline.adapters.db.outbox import NOTIFY_CHANNEL

ADVISORY_LOCK_KEY = 0x6F7574626F78  # "outbox"


class FileLeadership:
    """SQLite: an exclusive ``flock`` on a file beside the database (one machine)."""

    def __init__(self, path: Path, poll_interval: float) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self._fd: int | None = None

    async def acquire(self, stop: asyncio.Event) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        while not stop.is_set():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(self.poll_interval, 0.5))
                continue
            self._fd = fd
            return True
        os.close(fd)
        return False

    def held(self) -> bool:
        return self._fd is not None

    async def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


class PostgresLeadership:
    """PostgreSQL: a session advisory lock on a dedicated connection, which also LISTENs for
    the NOTIFY each order transaction sends on commit."""

    def __init__(self, dsn: str, poll_interval: float, on_notify: Callable[[], None]) -> None:
        self.dsn = dsn
        self.poll_interval = poll_interval
        self.on_notify = on_notify
        self._conn: Any = None

    async def acquire(self, stop: asyncio.Event) -> bool:
        import asyncpg

        while not stop.is_set():
            conn = await asyncpg.connect(self.dsn, timeout=10)
            try:
                while not stop.is_set():
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", ADVISORY_LOCK_KEY):
                        await conn.add_listener(NOTIFY_CHANNEL, self._notified)
                        self._conn = conn
                        return True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), max(self.poll_interval, 0.5))
            except BaseException:
                await conn.close()
                raise
            await conn.close()
        return False

    def _notified(self, *_args: Any) -> None:
        self.on_notify()

    def held(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)


def leadership_for(
    database_url: str, poll_interval: float, wake: Callable[[], None]
) -> FileLeadership | PostgresLeadership:
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return PostgresLeadership(dsn, poll_interval, wake)
    database = url.database or "pipeline.db"
    return FileLeadership(Path(database + ".forwarder.lock"), poll_interval)
