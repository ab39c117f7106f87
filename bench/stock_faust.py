"""``python -m bench.stock_faust worker ...``: the pipeline's worker on stock faust-streaming, for
the benchmark's stock-Faust row (issue 17). Bench-only; no setting of the pipeline changes.

:func:`pipeline.streaming.faust_patches.install` is replaced, before the app is imported (which
calls it), by the install of :mod:`~pipeline.streaming.faust_patches.hooks` alone: every fix and
every cost patch stays out of Faust's classes. The hooks are no fix but the one place our
agents' code meets Faust's commit: without them the tables' write-behind values
(``pipeline.streaming.versions``) are never written, so the agent would do less work, not the
same work slower. Everything else is the production worker: the same agent, tables, app
configuration (producer linger, commit interval, garbage collector, the root logger's level).
"""

from __future__ import annotations

import sys

from pipeline.streaming import faust_patches
from pipeline.streaming.faust_patches import hooks

faust_patches.install = hooks.install  # type: ignore[assignment]

from pipeline.__main__ import main  # noqa: E402 - after the switch, which it reads at import

if __name__ == "__main__":
    sys.exit(main())
