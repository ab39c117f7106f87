"""Commands that read and write the database directly (no worker needed): one place that
opens it and turns its failures into a message saying what to do."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pipeline.cli.errors import CommandError
from pipeline.settings import Settings

T = TypeVar("T")


def with_database(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """``work(engine)`` on DATABASE_URL's engine, disposed after; :class:`CommandError` when
    there is no database, it does not answer, or its schema is missing."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from pipeline.adapters.db.schema import make_engine
    from pipeline.domain.failures import Unavailable

    url = make_url(settings.database_url)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        raise CommandError(
            f"no database at {shown}: set DATABASE_URL, or create it with "
            "`python -m pipeline migrate`"
        )

    async def run() -> T:
        engine = make_engine(settings.database_url)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except (Unavailable, DBAPIError, OSError) as exc:
        cause = exc.__cause__ or exc  # the driver's error behind Unavailable
        reason = str(getattr(cause, "orig", None) or cause).splitlines()[0]
        raise CommandError(
            f"cannot use the database at {shown} ({reason}); check DATABASE_URL, and run "
            "`python -m pipeline migrate` if the schema is missing or old"
        ) from None


def operator() -> str:
    """Who runs this command, for the record of what they did: ``cli:user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"[:128]


def print_table(rows: Sequence[Sequence[str]], right: tuple[int, ...] = ()) -> None:
    """Rows as aligned columns, the first row the header; columns in ``right`` right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]  # fmt: skip
        print("  ".join(cells).rstrip())


def page_limit(raw: str) -> int:
    """An argparse type: a page size the lists accept."""
    from pipeline.domain.paging import MAX_PAGE

    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"{raw!r} must be a whole number from 1 to {MAX_PAGE}")
    return int(raw)
