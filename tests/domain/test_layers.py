"""The domain layer is pure: importing it loads no Faust, no Kafka or database client, and
needs no setting (a fresh interpreter, with an empty environment)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pipeline.domain

ROOT = Path(__file__).resolve().parents[2]


def test_the_domain_imports_nothing_but_the_standard_library_and_itself() -> None:
    modules = [f"pipeline.domain.{m.name}" for m in pkgutil.iter_modules(pipeline.domain.__path__)]
    assert len(modules) >= 10
    probe = (
        f"import importlib, sys; sys.path.insert(0, {str(ROOT)!r}); before = set(sys.modules)\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "ours = ('pipeline', 'agents', 'tables')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ours)\n"
        "outside = sorted({m.split('.')[0] for m in set(sys.modules) - before}"
        " - set(sys.stdlib_module_names) - {'pipeline'})\n"
        "print(loaded, outside)\n"
        "assert all(m == 'pipeline' or m.startswith('pipeline.domain') for m in loaded), loaded\n"
        "assert not outside, outside\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe], cwd=ROOT, env={}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr + done.stdout
