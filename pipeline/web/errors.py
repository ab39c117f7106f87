"""The one error shape, ``{"error": "<code>", "detail": ...}``, for answers no view makes.

:func:`json_errors` is the aiohttp middleware of every server we run (the worker's, through
``pipeline.web.views``, and the forwarder process's): aiohttp's own answers — an unknown
route, a wrong method, a body over ``client_max_size`` — and any exception a handler lets
escape are answered in that shape instead of aiohttp's text pages. It needs aiohttp only (the
forwarder process runs no Faust). The codes are declared in :mod:`pipeline.web.contract`.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import aiohttp
from aiohttp import web

log = logging.getLogger(__name__)

# The code for an answer aiohttp or Faust makes up by status, where no view chose one.
_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    413: "body_too_large",
    503: "owner_unavailable",
}


def code_for(status: int) -> str:
    """The error code of an answer that only has a status."""
    return _CODE_BY_STATUS.get(status, "bad_request" if status < 500 else "internal_error")


INTERNAL_ERROR = "the server failed to answer (the failure is logged); retry or report it"
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


def error_response(status: int, code: str, detail: Any,
                   headers: dict[str, str] | None = None) -> web.Response:  # fmt: skip
    """The one error shape, for code that has no :class:`View` at hand (middleware, the
    forwarder process's server)."""
    body = {"error": code, "detail": detail}
    return web.json_response(body, status=status, headers=headers)


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    status = exc.status
    code = code_for(status)
    headers = {k: exc.headers[k] for k in _KEPT_HEADERS if k in exc.headers}
    if status == 404:
        detail: str = f"no route {request.path!r}"
    elif status == 405:
        allowed = headers.get("Allow", "")
        detail = f"{request.path} does not take {request.method}; it takes {allowed}"
    elif status == 413:
        detail = f"request body is over {request.client_max_size} bytes"
    elif status >= 500:
        detail = INTERNAL_ERROR
    else:
        detail = exc.reason
    return error_response(status, code, detail, headers)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Answer what no view answered with the one error shape: aiohttp's 404 and 405 (raised
    by its router), a 413 from reading past ``client_max_size``, a 503 when the owner of a
    routed read does not answer, and a 500 for anything a view let escape (logged, with no
    internals in the answer)."""
    try:
        return cast(web.StreamResponse, await handler(request))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are answers, not errors
        return _from_http_exception(request, exc)
    except aiohttp.ClientError as exc:  # table_route forwarding to the key's owner
        log.warning("%s %s: the owning worker did not answer: %r", request.method, request.path,
                    exc)  # fmt: skip
        detail = "the worker owning this key did not answer; retry shortly"
        return error_response(503, "owner_unavailable", detail, {"Retry-After": "1"})
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal_error", INTERNAL_ERROR)
