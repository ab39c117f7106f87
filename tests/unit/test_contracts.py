"""The published contracts: docs/openapi.json and docs/schemas/ are what the code declares, the
OpenAPI document names every route a worker serves, and every error answer — from a view,
from aiohttp, from Faust — has the one shape it documents."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from faust.web.exceptions import ServiceUnavailable

from pipeline.app import app
from pipeline.cli import contracts
from pipeline.settings import PROJECT_ROOT
from pipeline.web import dashboard, views
from pipeline.web.contract import ERROR_CODES, ROUTES, openapi_document
from pipeline.web.errors import json_errors

DOCUMENT = openapi_document()


def error_validator() -> jsonschema.Draft202012Validator:
    """The document's ``Error`` schema, its ``$ref``s resolved within the document."""
    root = {"components": DOCUMENT["components"], "$ref": "#/components/schemas/Error"}
    return jsonschema.Draft202012Validator(root)


def assert_error_shape(body: Any, code: str) -> None:
    error_validator().validate(body)
    assert body["error"] == code, body


def test_the_contract_files_are_what_the_code_generates() -> None:
    assert contracts.stale() == [], (
        f"docs/openapi.json or docs/schemas/ differ from the code; regenerate them with "
        f"`{contracts.REGENERATE}`"
    )


def test_the_contracts_command_writes_missing_files_and_removes_orphans(tmp_path: Path) -> None:
    orphan = tmp_path / "docs" / "schemas" / "events" / "GoneEvent.json"
    orphan.parent.mkdir(parents=True)
    orphan.write_text("{}")
    assert contracts.run(argparse.Namespace(check=True), tmp_path) == 1
    assert contracts.run(argparse.Namespace(check=False), tmp_path) == 0
    assert not orphan.exists()
    assert contracts.stale(tmp_path) == []
    written = json.loads((tmp_path / "docs" / "openapi.json").read_text())
    assert written == DOCUMENT


def test_every_route_the_worker_serves_is_declared_and_nothing_else() -> None:
    assert views and dashboard  # their import registers the routes
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.web.web_app.router.routes()  # type: ignore[attr-defined]
        if route.method != "HEAD" and route.resource is not None
    }
    declared = {(route.method, route.path) for route in ROUTES}
    assert served == declared


def test_the_document_is_openapi_3_1_that_schemathesis_loads() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    for name, schema in DOCUMENT["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise AssertionError(f"components/schemas/{name}: {exc.message}") from exc
    schema = schemathesis.openapi.from_dict(DOCUMENT)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.lower(), op.path) for op in operations} == {
        (r.method, r.path) for r in ROUTES
    }


def test_operations_that_take_the_token_say_so_and_document_401() -> None:
    for path, methods in DOCUMENT["paths"].items():
        for method, op in methods.items():
            needs_token = op["security"] == [{"bearerToken": []}]
            assert needs_token == ("401" in op["responses"]), (method, path)


# Every error code the views answer with, as written in their source.
_CODE_IN_SOURCE = re.compile(
    r'(?:HttpError\(\s*\d+,\s*|error\(self,\s*\d+,\s*|_error\()"([a-z_]+)"'
)


def test_every_error_code_the_code_answers_is_declared() -> None:
    web_dir = PROJECT_ROOT / "pipeline" / "web"
    found = {
        code
        for path in web_dir.glob("*.py")
        for code in _CODE_IN_SOURCE.findall(path.read_text(encoding="utf-8"))
    }
    assert {"unauthorized", "validation_failed", "body_too_large", "not_found"} <= found
    assert found <= set(ERROR_CODES)
    # and every declared code is answered somewhere (no dead codes in the contract)
    errors_source = (web_dir / "errors.py").read_text(encoding="utf-8")
    by_status = set(re.findall(r'"([a-z_]+)"', errors_source))
    assert set(ERROR_CODES) <= found | by_status


# -- the middleware: what aiohttp itself answers -------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"size": len(await request.read())})

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals: password=hunter2")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/echo")

    application = web.Application(client_max_size=1024, middlewares=[json_errors])
    application.router.add_post("/echo", echo)
    application.router.add_get("/broken", broken)
    application.router.add_get("/redirect", redirect)
    async with TestClient(TestServer(application)) as test_client:
        yield test_client


async def test_an_unknown_route_is_a_404_in_the_one_shape(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/nowhere")
    assert resp.status == 404
    assert resp.content_type == "application/json"
    assert_error_shape(await resp.json(), "not_found")


async def test_a_wrong_method_is_a_405_naming_the_allowed_ones(
    client: TestClient[Any, Any],
) -> None:
    resp = await client.delete("/echo")
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"
    body = await resp.json()
    assert_error_shape(body, "method_not_allowed")
    assert "POST" in body["detail"]


async def test_a_body_over_the_application_limit_is_a_413(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/echo", data=b"x" * 2048)
    assert resp.status == 413
    assert_error_shape(await resp.json(), "body_too_large")


async def test_a_bug_is_a_500_that_tells_nothing_of_its_internals(
    client: TestClient[Any, Any],
) -> None:
    resp = await client.get("/broken")
    assert resp.status == 500
    body = await resp.json()
    assert_error_shape(body, "internal_error")
    assert "hunter2" not in json.dumps(body)


async def test_answers_that_are_not_errors_pass_through(client: TestClient[Any, Any]) -> None:
    assert (await client.post("/echo", data=b"abc")).status == 200
    resp = await client.get("/redirect", allow_redirects=False)
    assert resp.status == 302


# -- Faust's own errors ---------------------------------------------------------------------------


async def test_a_faust_web_error_is_answered_in_the_one_shape() -> None:
    view = views.Health(app, app.web)
    request = make_mocked_request("GET", "/customers/c/stats")
    response = await view.on_request_error(request, ServiceUnavailable())  # type: ignore[arg-type]
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert_error_shape(json.loads(response.body), "owner_unavailable")  # type: ignore[attr-defined]


def test_head_goes_with_get_only() -> None:
    routes = app.web.web_app.router.routes()  # type: ignore[attr-defined]
    by_path: dict[str, set[str]] = {}
    for route in routes:
        by_path.setdefault(route.resource.canonical, set()).add(route.method)
    assert by_path["/orders"] == {"POST"}
    assert by_path["/orders/{order_id}/cancel"] == {"POST"}
    assert by_path["/inventory/{sku}"] == {"GET", "HEAD", "PUT"}
