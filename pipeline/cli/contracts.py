"""``python -m pipeline contracts [--check]``: write the published contracts, or check them.

- ``docs/openapi.json``: the HTTP API (:mod:`pipeline.web.contract`), as every worker serves
  it at ``/openapi.json``;
- ``docs/schemas/events/<event_type>.json``: each event's record value
  (:mod:`pipeline.domain.event_schemas`);
- ``docs/schemas/outbox-row.json``: a row of the outbox table
  (:mod:`pipeline.adapters.db.outbox_contract`).

All are generated from the code's declarations and never edited by hand; a unit test fails
while one differs from what this command writes. ``--check`` writes nothing and exits 1 naming
the stale files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.adapters.db.outbox_contract import outbox_row_schema
from pipeline.domain.event_schemas import event_schemas
from pipeline.settings import PROJECT_ROOT
from pipeline.web.contract import render as render_openapi

REGENERATE = "python -m pipeline contracts"
SCHEMAS_DIR = Path("docs") / "schemas"
EVENTS_DIR = SCHEMAS_DIR / "events"


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def documents() -> dict[Path, str]:
    """Every contract file, by its path relative to the project root, with its content."""
    files = {Path("docs") / "openapi.json": render_openapi()}
    for name, schema in event_schemas().items():
        files[EVENTS_DIR / f"{name}.json"] = _json(schema)
    files[SCHEMAS_DIR / "outbox-row.json"] = _json(outbox_row_schema())
    return files


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def stale(root: Path = PROJECT_ROOT) -> list[Path]:
    """The contract files under ``root`` that differ from the code's, are missing, or are no
    longer generated (a removed event type's schema)."""
    expected = documents()
    found = {p.relative_to(root) for p in (root / SCHEMAS_DIR).rglob("*.json")}
    differ = [p for p, text in expected.items() if _read(root / p) != text]
    return sorted(set(differ) | (found - set(expected)))


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "contracts", help="write docs/openapi.json and docs/schemas/ from the code",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )  # fmt: skip
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")


def run(args: argparse.Namespace, root: Path = PROJECT_ROOT) -> int:
    out_of_date = stale(root)
    if args.check:
        for path in out_of_date:
            print(f"stale: {path} (regenerate with `{REGENERATE}`)", file=sys.stderr)
        return 1 if out_of_date else 0
    expected = documents()
    for path in out_of_date:
        target = root / path
        if path in expected:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(expected[path], encoding="utf-8")
            print(f"wrote {path}")
        else:
            target.unlink()
            print(f"removed {path}")
    return 0
