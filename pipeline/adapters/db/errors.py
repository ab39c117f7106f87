"""One meaning of "the database is unavailable", for every caller.

Every store's coroutine methods raise :class:`pipeline.domain.failures.Unavailable` when the
database cannot answer: a connection refused or dropped, a server restarting, a pool that
cannot connect (a driver error other than a refused write). A refused constraint
(``IntegrityError``) or value (``DataError``: too long for its column, say) is not
unavailability: the same write is refused again, so it goes up as it is — the agents
dead-letter it, the web answers 500. Callers above the adapters catch
``Unavailable`` only (the web: 503 with ``Retry-After``; the agents: a transient failure,
retried), never a driver's exception.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from pipeline.domain.failures import Unavailable

T = TypeVar("T")


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not answer (rather than refused the request)."""
    if isinstance(exc, Unavailable | OSError):
        return True
    return isinstance(exc, DBAPIError) and not isinstance(exc, IntegrityError | DataError)


def translated(cls: type[T]) -> type[T]:
    """Make every coroutine method of the store ``cls`` raise :class:`Unavailable` for what
    :func:`is_unavailable` says (the driver's exception is its cause, its text not repeated:
    it can carry SQL and parameters)."""
    for name, member in list(vars(cls).items()):
        if inspect.iscoroutinefunction(member) and not name.startswith("__"):
            setattr(cls, name, _translating(member))
    return cls


def _translating(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except Unavailable:
            raise
        except Exception as exc:
            if is_unavailable(exc):
                raise Unavailable(f"the database is unavailable ({type(exc).__name__})") from exc
            raise

    return call
