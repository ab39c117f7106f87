"""Reading one environment variable: each reader turns the variable's text into a value or
raises :class:`SettingsError` naming the variable and saying what is expected.

A reader is called as ``read(name, raw)`` with a variable that is set (and, unless its setting
says otherwise, not blank); :mod:`pipeline.settings` declares which reader each setting uses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.domain.outbox import InvalidOutboxEvent, check_topic_pattern

ALL_AGENTS = ("analytics", "inventory", "order_status", "notifications", "revenue")
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOG_LEVELS = ("debug", "info", "warning", "warn", "error", "critical")

Reader = Callable[[str, str], Any]


class SettingsError(ValueError):
    """Settings the pipeline cannot use; the message names each variable, one line per problem."""

    def __init__(self, *problems: str) -> None:
        self.problems = problems
        if len(problems) == 1:
            message = problems[0]
        else:
            message = "\n  ".join((f"{len(problems)} settings cannot be used:", *problems))
        super().__init__(message)


class Secret:
    """A string that never shows itself in reprs, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def text(name: str, raw: str) -> str:
    return raw.strip()


def secret(name: str, raw: str) -> Secret:
    return Secret(raw)  # as given: a password may end in a space


def path(name: str, raw: str) -> Path:
    return Path(raw).expanduser().resolve()


def integer(low: int, high: int) -> Reader:
    return _bounded(int, "an integer", low, high)


def number(low: float, high: float) -> Reader:
    return _bounded(float, "a number", low, high)


def _bounded(convert: Callable[[str], Any], kind: str, low: float, high: float) -> Reader:
    def read(name: str, raw: str) -> Any:
        try:
            value = convert(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not {kind}") from None
        if not low <= value <= high:
            raise SettingsError(f"{name}={value} is out of range ({low}..{high})")
        return value

    return read


def non_negative_decimal(name: str, raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise SettingsError(f"{name}={raw!r} is not a decimal number") from None
    if not value.is_finite() or value < 0:
        raise SettingsError(f"{name}={raw!r} must be a non-negative number")
    return value


def boolean(name: str, raw: str) -> bool:
    raw = raw.strip().lower()
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (true/false)")


def one_of(choices: Sequence[str], case: Callable[[str], str], expected: str = "") -> Reader:
    def read(name: str, raw: str) -> str:
        value = case(raw.strip())
        if value not in choices:
            raise SettingsError(f"{name}={value!r} {expected or f'is not one of {choices}'}")
        return value

    return read


def release_number(name: str, raw: str) -> str:
    value = raw.strip()
    if not value.replace(".", "").isdigit():
        raise SettingsError(f"{name}={value!r} is not a release number like 4.4.0")
    return value


def store_url(name: str, raw: str) -> str:
    value = raw.strip()
    if not value.endswith("://"):
        raise SettingsError(f"{name}={value!r} must be a Faust store URL like rocksdb://")
    return value


def database_url(name: str, raw: str) -> str:
    return normalize_database_url(raw.strip())


def normalize_database_url(url: str) -> str:
    """Pick the async driver for the URL's database, so users can paste a plain URL."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.split(":///", 1)[1]
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return url
    # Without the value: it may hold a password.
    raise SettingsError(
        "DATABASE_URL must be a PostgreSQL URL (postgresql://user@host/db) "
        "or a SQLite URL (sqlite:///path/to/file.db)"
    )


def readable_file(name: str, raw: str) -> str:
    value = raw.strip()
    if not Path(value).is_file():
        raise SettingsError(f"{name}={value!r} is not a readable file")
    return value


def retention_hours(name: str, raw: str) -> int:
    """Kafka's ``retention.ms`` in hours for the topics we create; -1 keeps records forever."""
    hours: int = integer(-1, 10 * 8760)(name, raw)
    if hours == 0:
        raise SettingsError(f"{name}=0: use -1 to keep records forever")
    return hours


def delays(name: str, raw: str) -> tuple[float, ...]:
    """The retry topics' delays in seconds, e.g. ``1,10,60``; empty for no retry topics."""
    try:
        values = tuple(float(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise SettingsError(
            f"{name}={raw!r} must be comma-separated seconds, e.g. 1,10,60"
        ) from None
    if len(values) > 10 or any(not 0 < d <= 86400 for d in values):
        raise SettingsError(f"{name}={raw!r}: at most 10 delays, each above 0 and at most 86400")
    return values


def agent_list(name: str, raw: str) -> tuple[str, ...]:
    """Which agent modules this worker runs."""
    chosen = tuple(a.strip() for a in raw.split(",") if a.strip())
    unknown = sorted(set(chosen) - set(ALL_AGENTS))
    if unknown:
        raise SettingsError(f"{name} names unknown agents {unknown}; known: {ALL_AGENTS}")
    return chosen


def topic_patterns(name: str, raw: str) -> tuple[str, ...]:
    patterns = tuple(p.strip() for p in raw.split(",") if p.strip())
    try:
        return tuple(check_topic_pattern(p) for p in patterns)
    except InvalidOutboxEvent as exc:
        raise SettingsError(
            f"{name}: {exc.problem}; give topic names or prefixes ending in '*', comma-separated"
        ) from None


def module_list(name: str, raw: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in raw.split(",") if m.strip())


def advertised_url(name: str, raw: str) -> str:
    """The URL other workers reach this one on: ``http(s)://host[:port]``, nothing after the
    port, and a host they can route to (not a wildcard such as ``0.0.0.0``)."""
    value = raw.strip().rstrip("/")
    expected = (
        f"{name}={value!r} must be a URL like http://10.0.0.5:6066 that other workers can reach"
    )
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise SettingsError(f"{expected} (bad host or port)") from None
    if any(c.isspace() for c in value):
        raise SettingsError(f"{expected} (no spaces)")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{expected} (http or https, with a host)")
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise SettingsError(f"{expected} (no user, path, query or fragment)")
    if port == 0:
        raise SettingsError(f"{expected} (port 0)")
    if is_wildcard(parts.hostname):
        raise SettingsError(
            f"{expected} ({parts.hostname} is a bind-all address, not one to reach)"
        )
    return value


def is_wildcard(host: str) -> bool:
    """Whether ``host`` is a bind-all address (``0.0.0.0``, ``::`` or empty)."""
    if not host:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False
