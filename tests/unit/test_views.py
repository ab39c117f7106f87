"""Views answered offline: the rebalance guard, before any routing happens."""

from __future__ import annotations

import json

import pytest

from pipeline.app import app
from pipeline.views import CustomerStatsView, Inventory, Revenue


@pytest.fixture
def rebalancing(monkeypatch: pytest.MonkeyPatch) -> None:
    app.finalize()
    monkeypatch.setattr(app, "rebalancing", True)


@pytest.mark.usefixtures("rebalancing")
@pytest.mark.parametrize(
    ("view", "kwargs"),
    [(CustomerStatsView, {"customer_id": "c"}), (Inventory, {"sku": "s"}), (Revenue, {})],
)
async def test_table_reads_answer_503_with_a_retry_hint_while_rebalancing(
    view: type, kwargs: dict[str, str]
) -> None:
    response = await view(app, app.web).get(None, **kwargs)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert json.loads(response.body)["error"] == "rebalancing"
