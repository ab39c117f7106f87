"""Structured logs: one JSON object per line, carrying the ids of what is being worked on.

Code that works on an order or an event binds its ids for the duration (``with bound(...)``):
the HTTP views bind the order id and the event id they create, every agent binds the event
id, the order id, its own name and the record's topic, partition and offset. Every log line
written meanwhile — ours, Faust's, aiokafka's — carries them, so one order can be followed
from its HTTP request through every agent that handled one of its events:
``grep '"order_id": "…"'`` over the workers' logs.

``PIPELINE_LOG_FORMAT=json`` (the default for workers) or ``text`` (the same fields appended
as ``key=value``).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import types
from collections.abc import Iterator, Mapping
from typing import Any

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "pipeline_log_context", default=types.MappingProxyType({})
)

FORMATS = ("json", "text")


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (None values left out) to every log record written in this block."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def context() -> Mapping[str, Any]:
    return _context.get()


class ContextFilter(logging.Filter):
    """Copies the bound fields onto the record (as ``record.context``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "context"):
            record.context = dict(_context.get())
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "context", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "context", {})
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


def configure(logger: logging.Logger, fmt: str) -> None:
    """Give every handler of ``logger`` the context filter and the ``fmt`` formatter."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    for handler in logger.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        handler.setFormatter(formatter)
