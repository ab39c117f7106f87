"""docs/configuration.md is the settings' declaration rendered, never edited by hand."""

from __future__ import annotations

from dataclasses import fields

from pipeline.settings import (
    PROJECT_ROOT,
    REGENERATE,
    Settings,
    configuration_doc,
    configuration_table,
    declared,
)


def test_docs_configuration_md_is_what_the_declaration_renders() -> None:
    written = (PROJECT_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert written == configuration_doc(), (
        "docs/configuration.md differs from the settings declared in pipeline/settings.py; "
        f"regenerate it with `{REGENERATE}` (or `make configuration-doc`)"
    )


def test_the_table_has_one_row_per_variable_in_declaration_order() -> None:
    rows = configuration_table().splitlines()
    assert rows[:2] == ["| variable | default | meaning |", "|---|---|---|"]
    variables = [row.split(" | ")[0].removeprefix("| ").strip("`") for row in rows[2:]]
    assert variables == [spec.env for _, spec in declared() if spec.env]
    # Every field but the one derived from whether KAFKA_BOOTSTRAP_SERVERS is set.
    assert len(variables) == len(fields(Settings)) - 1
    assert all(row.count(" | ") == 2 for row in rows[2:])


def test_each_row_shows_the_default_the_settings_use() -> None:
    rows = {row.split(" | ")[0].strip("|` "): row.split(" | ")[1] for row in
            configuration_table().splitlines()[2:]}  # fmt: skip
    assert rows["PIPELINE_PARTITIONS"] == "`4`"
    assert rows["PIPELINE_OUTBOX_POLL_INTERVAL"] == "`0.2`"
    assert rows["PIPELINE_SESSION_TIMEOUT_SECONDS"] == "`60`"
    assert rows["PIPELINE_FORWARDER_ENABLED"] == "`true`"
    assert rows["PIPELINE_RETRY_DELAYS"] == "`1,10,60`"
    assert rows["PIPELINE_REPLAY_MAX_AGE_SECONDS"] == "`518400` (6 days)"
    assert rows["PIPELINE_API_TOKEN"] == "*(unset)*"
    assert rows["PIPELINE_CACHE_DIR"].startswith("`./.cache` of a source checkout; installed: ")
    assert rows["PIPELINE_KAFKA_DATA_DIR"] == "`$PIPELINE_DATA_DIR/kafka/$PIPELINE_KAFKA_VERSION`"
    assert rows["PIPELINE_KAFKA_CONTROLLER_PORT"] == "`PIPELINE_KAFKA_PORT + 1`"
