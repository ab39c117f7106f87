"""Breaks the analytics agent on purpose, for the test that shows the fault suite's checker
catches it: loaded into a worker with ``PIPELINE_EXTRA_MODULES``, it makes the agent forget
which events its stats have seen, so every redelivered order event counts again."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import agents.analytics
from pipeline.domain.customer_stats import CustomerStats, apply_event


def _forgetful(stats: CustomerStats | None, *args: Any, **kwargs: Any) -> Any:
    return apply_event(None if stats is None else replace(stats, seen={}), *args, **kwargs)


agents.analytics.apply_event = _forgetful  # type: ignore[assignment]
