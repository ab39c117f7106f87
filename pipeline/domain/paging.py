"""Pages of a listing: a bounded size and a keyset cursor, checked field by field.

Every list answers at most ``MAX_PAGE`` items and a ``next`` cursor when there may be more;
the cursor names the last item given (an id, a SKU, or an order's time and id), and the next
page starts after it. Unlike an offset, a cursor costs one index seek however deep the page,
and a row written or removed meanwhile neither repeats an item nor skips one.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from pipeline.domain.orders import is_storable_text

MAX_PAGE = 500
DEFAULT_PAGE = 100
MAX_KEY_CHARS = 64  # SKUs and customer ids


class BadRequest(ValueError):
    """What is wrong with a request, as ``[{"field", "message"}]``: every field at fault."""

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{p['field']}: {p['message']}" for p in problems))
        self.problems = problems


def digits(raw: Any) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes "²", which ``int`` refuses."""
    text = str(raw)
    return text.isascii() and text.isdigit()


def json_object(
    body: Any, known: Collection[str] | None = None, error: type[BadRequest] = BadRequest
) -> dict[str, Any]:
    """``body`` if it is a JSON object with no field set to null and, when ``known`` is given,
    no field outside it; else ``error`` naming every field at fault. JSON says what it means:
    a field left out is not a field set to null."""
    if not isinstance(body, dict):
        raise error([{"field": "body", "message": "must be a JSON object"}])
    listed = ", ".join(sorted(known or ()))
    problems = [{"field": k, "message": f"unknown field; known: {listed}"}
                for k in sorted(set(body) - set(known))] if known is not None else []  # fmt: skip
    problems += [{"field": k, "message": "must not be null (leave it out)"}
                 for k in sorted(k for k, v in body.items() if v is None)]  # fmt: skip
    if problems:
        raise error(problems)
    return body


def page_size(raw: Any, problems: list[dict[str, str]], field: str = "limit") -> int:
    """``raw`` (a query string, a JSON value or None) as a page size; a problem if not one."""
    if raw is None:
        return DEFAULT_PAGE
    if isinstance(raw, bool) or not digits(raw) or not 1 <= int(raw) <= MAX_PAGE:
        problems.append({"field": field, "message": f"must be an integer from 1 to {MAX_PAGE}"})
        return DEFAULT_PAGE
    return int(raw)


def row_id(raw: Any, problems: list[dict[str, str]], field: str = "after") -> int | None:
    """A positive row id (the outbox's), or None when not given."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not digits(raw) or not 1 <= int(raw) < 2**63:
        problems.append({"field": field, "message": "must be a positive integer row id"})
        return None
    return int(raw)


def key(raw: Any, problems: list[dict[str, str]], field: str) -> str | None:
    """A SKU or customer id: 1 to 64 characters a database stores as given (no control
    characters: PostgreSQL refuses NUL), or None when not given."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not is_storable_text(raw, MAX_KEY_CHARS):
        problems.append({"field": field, "message": f"must be 1 to {MAX_KEY_CHARS} characters, "
                         "none of them control characters"})  # fmt: skip
        return None
    return raw


def order_cursor(created_at: datetime, order_id: str) -> str:
    """The cursor after an order in a newest-first listing: its time and id, opaque."""
    raw = json.dumps([created_at.astimezone(UTC).isoformat(), order_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_order_cursor(
    raw: Any, problems: list[dict[str, str]], field: str = "before"
) -> tuple[datetime, str] | None:
    """What :func:`order_cursor` made, or a problem: a cursor is only ever handed back."""
    if raw is None:
        return None
    bad = {"field": field, "message": "must be a cursor from a previous page's next"}
    if not isinstance(raw, str) or len(raw) > 200:
        problems.append(bad)
        return None
    try:
        when, order_id = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        at = datetime.fromisoformat(when)
    except (ValueError, TypeError, binascii.Error, RecursionError):
        problems.append(bad)
        return None
    if not isinstance(order_id, str) or at.tzinfo is None or not is_storable_text(order_id, 36):
        problems.append(bad)
        return None
    try:
        return at.astimezone(UTC), order_id
    except OverflowError:
        problems.append(bad)
        return None


def merge_pages(
    shares: list[list[dict[str, Any]]], key: str, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """One page from each worker's share of a list sorted by ``key`` (each the first
    ``limit + 1`` items after the cursor among what that worker owns): the first ``limit``
    of them all, and the cursor of the next page, None when there is none."""
    merged: dict[str, dict[str, Any]] = {}
    for share in shares:
        for item in share:
            merged.setdefault(item[key], item)  # a key held twice (a stale owner): once
    ordered = [merged[k] for k in sorted(merged, key=lambda k: k.encode())]
    if len(ordered) > limit:
        return ordered[:limit], ordered[limit - 1][key]
    return ordered, None
