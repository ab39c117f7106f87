"""HTTP plumbing shared by the views: JSON errors, the bearer token, bounded JSON bodies.

Every error answer is ``{"error": "<code>", "detail": ...}`` (the codes are declared in
:mod:`pipeline.web.contract`): views raise or return :class:`HttpError`; :class:`JsonView`
answers the errors Faust's views raise themselves (``WebError``, e.g. when a routed read finds
no owner) in that shape too; the rest is :mod:`pipeline.web.errors`' middleware."""

from __future__ import annotations

import asyncio
import decimal
import hmac
import json
import sys
from decimal import Decimal
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import DecompressSizeError, HttpProcessingError
from aiokafka.errors import KafkaError
from faust.web import Request, Response, View
from faust.web.exceptions import WebError

from pipeline.adapters.kafka.refusals import refused_for_good
from pipeline.settings import Settings
from pipeline.web.errors import INTERNAL_ERROR, code_for

MAX_INT_DIGITS = sys.get_int_max_str_digits()
MAX_DECIMAL_EXPONENT = decimal.MAX_EMAX


class HttpError(Exception):
    """An error answer: ``{"error": code, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: Any, headers: dict[str, str] | None = None):
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}

    def response(self, view: View) -> Response:
        return view.json(
            {"error": self.code, "detail": self.detail}, status=self.status, headers=self.headers
        )


def error(view: View, status: int, code: str, detail: Any) -> Response:
    return HttpError(status, code, detail).response(view)


class JsonView(View):
    """A Faust view whose own errors (``WebError``: Faust's table routing, ``raise
    self.NotFound``) answer in the one shape instead of Faust's ``{"error": reason}``."""

    def get_methods(self) -> set[str]:
        """Faust registers HEAD for every view, even one without GET, where it can only
        answer 405 while ``Allow`` claims it: HEAD goes with GET only."""
        methods = set(super().get_methods())
        if "GET" not in methods:
            methods.discard("HEAD")
        return methods

    async def on_request_error(self, request: Request, exc: WebError) -> Response:
        status = exc.code or 500
        code = code_for(status)
        headers = {"Retry-After": "1"} if status == 503 else {}
        detail = exc.detail if status < 500 or status == 503 else INTERNAL_ERROR
        if status == 405:  # Faust's says "Method GET not allowed." for a HEAD too
            aio = cast(web.Request, request)
            detail = f"{aio.path} does not take {aio.method}"
        return HttpError(status, code, detail, headers).response(self)


def not_sent(exc: KafkaError, what: str) -> HttpError:
    """The answer to a request whose record (``what``) Kafka did not take: ``503`` with a retry
    hint while the cluster cannot take it now (down, no leader, too few replicas), ``500``
    saying so when it refuses the record for good (an unauthorized topic, a size limit), which
    only an operator can fix."""
    if refused_for_good(exc):
        return HttpError(500, "kafka_refused", f"Kafka refused {what} ({exc}); nothing was sent")
    detail = f"Kafka did not take {what} in time ({exc}); retry shortly"
    return HttpError(503, "kafka_unavailable", detail, {"Retry-After": "5"})


def require_token(request: Request, settings: Settings) -> None:
    """Write and admin endpoints need ``Authorization: Bearer <token>`` when one is set."""
    token = settings.api_token.get()
    if not token:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    valid = hmac.compare_digest(given.strip().encode(), token.encode())
    if scheme.lower() != "bearer" or not valid:
        raise HttpError(
            401,
            "unauthorized",
            "this endpoint needs Authorization: Bearer <token>",
            {"WWW-Authenticate": 'Bearer realm="orders-pipeline"'},
        )


async def read_body(request: Request, max_bytes: int, within_seconds: float) -> bytes:
    """The whole request body, however it is framed (``Content-Length`` or chunked) and however
    many TCP segments it arrives in; 413 once it is over ``max_bytes``, 408 when it has not all
    arrived ``within_seconds`` of the call (the handler starts once the headers are in).

    aiohttp's ``content.read(n)`` answers with what is buffered, not with n bytes, so the body
    is gathered in a loop. ``request.read()`` would do that too, but under the aiohttp
    application's ``client_max_size`` (1 MiB), not under our limit. aiohttp bounds no body
    read in time: a client that stops sending would hold the handler for ever."""
    aio = cast(web.Request, request)  # Faust's aiohttp driver hands us aiohttp's request
    too_large = HttpError(413, "body_too_large", f"request body is over {max_bytes} bytes")
    length = aio.content_length
    if length is not None and length > max_bytes:
        raise too_large  # refused before reading: aiohttp drains or drops the rest
    body = bytearray()
    try:
        async with asyncio.timeout(within_seconds):
            async for chunk in aio.content.iter_any():
                body += chunk
                if len(body) > max_bytes:
                    raise too_large
    except TimeoutError:
        detail = f"request body did not arrive within {within_seconds:g} s ({len(body)} bytes came)"
        raise HttpError(408, "body_timeout", detail) from None
    except (web.RequestPayloadError, HttpProcessingError) as exc:  # e.g. broken gzip
        if isinstance(exc.__cause__, DecompressSizeError):
            raise too_large from None
        cause = exc.__cause__ or exc
        reason = cause.message if isinstance(cause, HttpProcessingError) else str(cause)
        raise HttpError(400, "malformed_body", f"request body cannot be read: {reason}") from None
    return bytes(body)


def parse_json(raw: bytes) -> Any:
    """``raw`` as JSON with exact decimals, or a 400 saying why not.

    ``json.loads`` raises more than ``JSONDecodeError`` on hostile input: ``ValueError`` for an
    integer over 4,300 digits, ``RecursionError`` for deep nesting, ``InvalidOperation`` (an
    ``ArithmeticError``) for an exponent ``Decimal`` cannot hold. Each is the client's fault."""
    if not raw.strip():
        raise HttpError(400, "malformed_json", "request body is empty; send a JSON object")
    try:
        return json.loads(raw, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        reason = f"request body is not valid JSON: {exc}"
    except UnicodeDecodeError:
        reason = "request body is not valid JSON: it is not UTF-8 text"
    except RecursionError:
        reason = "request body nests arrays or objects too deeply"
    except (ValueError, ArithmeticError):
        reason = (
            f"request body holds a number this service does not read (integers up to "
            f"{MAX_INT_DIGITS} digits, decimal exponents up to {MAX_DECIMAL_EXPONENT})"
        )
    raise HttpError(400, "malformed_json", reason)


async def read_json(request: Request, settings: Settings) -> Any:
    """The request body as JSON (decimals exact), read within the settings' size and time
    limits, or an :class:`HttpError` saying why not."""
    body = await read_body(request, settings.max_body_bytes, settings.http_body_timeout_seconds)
    return parse_json(body)
