"""What the services need from storage, as protocols: the SQL stores
(:mod:`pipeline.adapters.db`) and the in-memory ones (:mod:`pipeline.adapters.memory`) both
provide them, and one contract test suite (``tests/repository_contract.py``) holds them to the
same behaviour on memory, SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from pipeline.domain.audit import Audit
from pipeline.domain.dead_letters import DeadLetter, Filter
from pipeline.domain.events import OrderCancelled, OrderCreated
from pipeline.domain.orders import CancelOutcome, Idempotency, OrderRow, StoredResponse
from pipeline.domain.outbox import ParkedRow, PendingRow, Settled


class OrderRepository(Protocol):
    """Orders, with their outbox rows and idempotency keys, each write one transaction."""

    async def create_order(
        self, event: OrderCreated, idempotency: Idempotency | None = None
    ) -> StoredResponse | None:
        """Commit the order, its items, its ``OrderCreated`` outbox row and its idempotency
        key at once. The stored response instead when the key was used for the same request;
        :class:`pipeline.domain.orders.IdempotencyConflict` when used for another."""
        ...

    async def cancel_order(
        self, order_id: str, make_event: Callable[[OrderRow], OrderCancelled]
    ) -> tuple[CancelOutcome, OrderRow | None]:
        """Cancel a ``created`` or ``confirmed`` order and write ``make_event(order)``'s
        outbox row in the same transaction."""
        ...

    async def decide_order(self, order_id: str, decision: str, at: datetime) -> str | None:
        """Move a ``created`` order to ``decision``; the status it has now (None: no order)."""
        ...

    async def get_order(self, order_id: str) -> dict[str, Any] | None: ...

    async def customer_orders(
        self, customer_id: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` of the customer's orders, newest first (by time, then id), those
        after the cursor ``before`` (the last order of the previous page)."""
        ...

    async def purge_idempotency_keys(self, older_than: datetime | None = None) -> int: ...


class OutboxRepository(Protocol):
    """The forwarder's view of the outbox: pending rows in commit order, and their marks."""

    async def pending(self, limit: int) -> list[PendingRow]: ...

    async def record(
        self, published: list[int], parked: list[tuple[int, str]], at: datetime
    ) -> None: ...

    async def backlog(self) -> tuple[int, datetime | None]: ...

    async def parked_count(self) -> int: ...

    async def counts(self) -> dict[str, int]: ...

    async def published_since(self, cutoff: datetime) -> int: ...

    async def parked(self, limit: int = 100) -> list[dict[str, Any]]: ...

    async def purge_published(self, older_than: datetime, chunk: int = 5000) -> int: ...


class OutboxAdminRepository(Protocol):
    """The operator's verbs on parked outbox rows, each change recorded with who and why."""

    async def parked_page(self, after: int | None, limit: int) -> list[ParkedRow]: ...

    async def requeue(
        self, ids: list[int], audit: Audit, *, out_of_order: bool, verifiable_since: datetime
    ) -> Settled:
        """Parked rows back to pending, unless a later row of their key went out (or may
        have: the row is older than ``verifiable_since``) and ``out_of_order`` is not set."""
        ...

    async def discard(self, ids: list[int], audit: Audit) -> Settled: ...

    async def actions(self, subject: str) -> list[dict[str, Any]]: ...


class DeadLetterRepository(Protocol):
    """The index of the dead-letter topic: a row per record (indexing twice changes nothing),
    and a row per replay."""

    async def add(self, letter: DeadLetter) -> bool:
        """Index ``letter``; False when it was indexed already."""
        ...

    async def find(self, where: Filter) -> list[DeadLetter]:
        """The letters ``where`` selects, oldest first (by dead-letter time, then id)."""
        ...

    async def counts(self) -> list[tuple[str, str, int]]: ...

    async def replay_count(self, agent: str, event_key: str) -> int: ...

    async def claim_replay(self, letter: DeadLetter) -> bool:
        """Mark ``letter`` replayed before it is sent, unless it was discarded meanwhile (then
        False: it must not be sent). A discard after the claim finds it replayed."""
        ...

    async def release_replay(self, letter: DeadLetter) -> None:
        """Undo a claim whose send failed: the letter's status back to ``letter.status``,
        unless it changed since the claim (a discard meanwhile stands)."""
        ...

    async def record_replay(self, letter: DeadLetter, at: datetime, requested_by: str) -> None:
        """Record a replay of ``letter``, once sent (after :meth:`claim_replay`)."""
        ...

    async def replays(self, dead_letter_id: str) -> list[dict[str, Any]]: ...

    async def discard(self, letters: list[DeadLetter], audit: Audit) -> list[str]:
        """Mark ``letters`` discarded with a record each; the ids it discarded."""
        ...


class Leadership(Protocol):
    """A lock only one forwarder holds; it is released when its holder dies."""

    async def acquire(self, stop: asyncio.Event) -> bool: ...
    def held(self) -> bool: ...
    async def release(self) -> None: ...
