"""Unit tests: offline, the memory store, Faust's test_context. Set before the app is built."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("PIPELINE_STORE", "memory://")
os.environ.setdefault("PIPELINE_DATA_DIR", tempfile.mkdtemp(prefix="pipeline-unit-"))


@pytest.fixture(autouse=True)
def _fresh_table_values() -> None:
    """Values staged or cached by one test's agents are not another's
    (``pipeline.streaming.versions``)."""
    from agents import revenue
    from pipeline.streaming import versions

    versions.reset()
    revenue.forget({0})
