"""HTTP plumbing shared by the views: JSON errors, the bearer token, bounded JSON bodies."""

from __future__ import annotations

import hmac
import json
from decimal import Decimal
from typing import Any, cast

from aiohttp import web
from faust.web import Request, Response, View

from pipeline.settings import Settings


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


async def read_json(request: Request, max_bytes: int) -> Any:
    """The request body as JSON (decimals exact), or an :class:`HttpError` saying why not."""
    aio = cast(web.Request, request)  # Faust's aiohttp driver hands us aiohttp's request
    length = aio.content_length
    if length is not None and length > max_bytes:
        raise HttpError(413, "body_too_large", f"request body is over {max_bytes} bytes")
    try:
        raw = await aio.content.read(max_bytes + 1)
    except web.HTTPRequestEntityTooLarge:
        raise HttpError(413, "body_too_large", f"request body is over {max_bytes} bytes") from None
    if len(raw) > max_bytes:
        raise HttpError(413, "body_too_large", f"request body is over {max_bytes} bytes")
    if not raw.strip():
        raise HttpError(400, "malformed_json", "request body is empty; send a JSON object")
    try:
        return json.loads(raw, parse_float=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HttpError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
