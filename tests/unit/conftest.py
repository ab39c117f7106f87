"""Unit tests: offline, the memory store, Faust's test_context. Set before the app is built."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("PIPELINE_STORE", "memory://")
os.environ.setdefault("PIPELINE_DATA_DIR", tempfile.mkdtemp(prefix="pipeline-unit-"))
