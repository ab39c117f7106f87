"""Synthetic orders for load: many customers, a few of them frequent, some cancelled, a few
invalid; the same seed gives the same orders, so a load can be replayed exactly.

Customers are drawn with Zipf-like weights (customer ``i`` is picked in proportion to
``1 / (i + 1)``), as real shops have a few heavy buyers and a long tail: the heavy ones put
many events on one key, the tail spreads the rest over every partition. Names match the
demo's (``customer-0000``, ``sku-000``), so stock set for the demo serves a load too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


def customer_name(index: int) -> str:
    return f"customer-{index:04d}"


def sku_name(index: int) -> str:
    return f"sku-{index:03d}"


@dataclass(frozen=True, slots=True)
class PlannedOrder:
    """One ``POST /orders`` body and what should become of it: a valid order is accepted
    (and cancelled afterwards when ``cancel``), an invalid one is answered 4xx."""

    index: int
    body: dict[str, Any]
    valid: bool
    cancel: bool


class OrderGenerator:
    def __init__(
        self,
        seed: int,
        *,
        customers: int = 200,
        skus: int = 50,
        cancel_ratio: float = 0.0,
        invalid_ratio: float = 0.0,
    ) -> None:
        if customers < 1 or skus < 1:
            raise ValueError("customers and skus must be at least 1")
        if not (0.0 <= cancel_ratio <= 1.0 and 0.0 <= invalid_ratio <= 1.0):
            raise ValueError("ratios must be between 0 and 1")
        self._rng = random.Random(seed)  # noqa: S311 - a reproducible load, not a secret
        self._customers = [customer_name(i) for i in range(customers)]
        self._weights = [1 / (i + 1) for i in range(customers)]
        self._skus = skus
        self.cancel_ratio = cancel_ratio
        self.invalid_ratio = invalid_ratio

    def order(self, index: int) -> PlannedOrder:
        rng = self._rng
        customer = rng.choices(self._customers, self._weights)[0]
        items = [
            {
                "sku": sku_name(rng.randrange(self._skus)),
                "quantity": rng.randint(1, 3),
                "unit_price": str(Decimal(rng.randrange(199, 9999)) / 100),
            }
            for _ in range(rng.randint(1, 3))
        ]
        body: dict[str, Any] = {
            "customer_id": customer,
            "customer_email": f"{customer}@example.com",
            "items": items,
        }
        # Both draws happen for every order, so changing one ratio leaves the rest of the
        # sequence (customers, items) as it was.
        invalid = rng.random() < self.invalid_ratio
        cancel = rng.random() < self.cancel_ratio
        if invalid:
            items[0]["quantity"] = 0  # the API answers 422 and writes nothing
        return PlannedOrder(index, body, valid=not invalid, cancel=cancel and not invalid)

    def orders(self, count: int) -> list[PlannedOrder]:
        return [self.order(i) for i in range(count)]
