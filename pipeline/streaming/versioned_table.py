"""One typed face for every table of versioned values: ``get``, ``save``, ``delete``.

An agent reads a key's value, lets a domain rule decide, and hands both back to
:meth:`VersionedTable.save`: a new value is written at the next version (staged until the next
offset commit, :mod:`pipeline.streaming.versions`), and an unchanged one — the event was a
repeat — is sent to the changelog again, because a worker killed before its changelog record
was acknowledged may have left the changelog without it (``versions.resend``). Every table and
agent goes through here, so that rule lives once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from pipeline.streaming import versions


class Versioned(Protocol):
    """A table value as the domain defines it: a frozen dataclass with its version."""

    @property
    def version(self) -> int: ...

    def to_value(self) -> dict[str, Any]: ...


T = TypeVar("T", bound=Versioned)


class VersionedTable(Generic[T]):
    """``table`` (a Faust table of bytes, keyed by the UTF-8 of ``key_of(value)``) holding
    values of type ``T``, decoded by ``decode(key, fields)``. ``at_once`` writes each value at
    once rather than at the next commit: for a value that records an effect outside Kafka (an
    email sent), which a redelivery after a crash must find."""

    def __init__(
        self,
        table: Any,
        decode: Callable[[str, dict[str, Any]], T],
        key_of: Callable[[T], str],
        *,
        at_once: bool = False,
    ) -> None:
        self.table = table
        self.decode = decode
        self.key_of = key_of
        self.at_once = at_once

    @property
    def name(self) -> str:
        return str(self.table.name)

    def get(self, key: str) -> T | None:
        """``key``'s value, as last saved by this worker or as the store holds it."""
        value: T | None = versions.read(
            self.table, key.encode(), lambda raw: self.decode(key, json.loads(raw))
        )
        return value

    async def save(self, before: T | None, after: T | None) -> None:
        """Record what an event did: ``after`` is the value the domain rule returned for
        ``before`` (what :meth:`get` gave). The same object means the event changed nothing (a
        repeat): the stored value goes to the changelog again. None means there is nothing
        to keep (and nothing was stored)."""
        if after is None:
            return
        key = self.key_of(after).encode()
        if after is before:
            await versions.resend(self.table, key)
        else:
            await versions.write(self.table, key, after.version + 1, after, at_once=self.at_once)

    async def delete(self, key: str) -> None:
        """Forget ``key`` (its tombstone goes the way its writes go)."""
        await versions.delete(self.table, key.encode())
