"""``python -m pipeline topics migrate --partitions N --to-prefix P --to-app-id A``: the pipeline
moved to new topics with N partitions, its tables with it, in one resumable command.

What it does (:mod:`pipeline.adapters.kafka.migration` says why each rule holds):

1. checks that it is safe to start, and refuses with what to do otherwise: the old consumer
   group (``PIPELINE_APP_ID``) has no member (every worker stopped) and has handled every record
   of the topics it reads; the outbox has no row waiting; the new group has no member;
2. creates the new topics (``P`` + each topic's name) and changelogs (``A-<table>-changelog``)
   with the old ones' configuration and N partitions (the revenue topic and table keep one);
3. copies every record of every pipeline topic and changelog, each old partition in order, to
   the new partition its key hashes to (changelogs: the partition of the event that wrote it),
   saving its progress in ``$PIPELINE_DATA_DIR/migrations/`` after each acknowledged batch;
4. checks that nothing was written to the old topics meanwhile, and commits the new group's
   offsets at the ends of the copied topics: everything copied was handled by the old
   workers, so the new ones handle nothing twice (no second email, no stock applied twice) and
   miss nothing; they restore the tables from the copied changelogs.

The old topics are left as they were: going back is starting the old workers with the old
settings (before the new ones have taken orders). Run again after an interruption, it
continues where it stopped; run again once done, it says so.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import logging
import pkgutil
from typing import Any

from pipeline.adapters.kafka.copy import CopyError
from pipeline.adapters.kafka.migration import Progress, Route, refusals, renamed
from pipeline.adapters.kafka.security import client_options, unreachable_hint
from pipeline.cli.errors import CommandError
from pipeline.settings import Settings


def check_target(settings: Settings, args: argparse.Namespace) -> None:
    """The new names must differ from the old: the topics' names come from the prefix and the
    changelogs' from the app id, and both must be new topics."""
    if args.to_prefix == settings.topic_prefix:
        raise CommandError(
            f"--to-prefix {args.to_prefix!r} is the current PIPELINE_TOPIC_PREFIX: the new "
            "topics need new names; pass another prefix (e.g. 'p8.')"
        )
    if args.to_app_id == settings.app_id:
        raise CommandError(
            f"--to-app-id {args.to_app_id!r} is the current PIPELINE_APP_ID: the new changelogs "
            "and consumer group need a new one; pass another (e.g. 'orders-pipeline-p8')"
        )


def changelog_names() -> dict[str, str]:
    """Every table of the pipeline (and of PIPELINE_EXTRA_MODULES) by name: its changelog."""
    import tables
    from pipeline.app import app

    for module in pkgutil.iter_modules(tables.__path__):
        importlib.import_module(f"tables.{module.name}")
    return {name: table.changelog_topic.get_topic_name() for name, table in app.tables.items()}


def routes(settings: Settings, args: argparse.Namespace) -> list[Route]:
    """Every topic and changelog to copy, and where (configurations not read yet)."""
    from pipeline.streaming.topics import TABLE_SOURCES, fixed_partitions, topic_plan

    plan = []
    for spec in topic_plan(settings):
        base = spec.name.removeprefix(settings.topic_prefix)
        fixed = fixed_partitions(base)
        plan.append(Route(spec.name, args.to_prefix + base, fixed or args.partitions, not fixed))
    for table, changelog in sorted(changelog_names().items()):
        if table not in TABLE_SOURCES:
            raise CommandError(
                f"table {table!r} has no entry in pipeline.streaming.topics.TABLE_SOURCES: say "
                "which topic feeds the agent that writes it (its module of "
                "PIPELINE_EXTRA_MODULES can add it), then run this again"
            )
        fixed = fixed_partitions(TABLE_SOURCES[table])
        target = renamed(changelog, f"{settings.app_id}-", f"{args.to_app_id}-")
        plan.append(Route(changelog, target, fixed or args.partitions, not fixed))
    return plan


async def outbox_waiting(database_url: str) -> int:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from pipeline.adapters.db.outbox import OutboxStore
    from pipeline.adapters.db.schema import make_engine
    from pipeline.domain.failures import Unavailable

    engine = make_engine(database_url)
    try:
        waiting, _ = await OutboxStore(engine).backlog()
    except (Unavailable, DBAPIError, OSError) as exc:
        cause = exc.__cause__ or exc  # the driver's error behind Unavailable
        reason = str(getattr(cause, "orig", None) or cause).splitlines()[0]
        shown = make_url(database_url).render_as_string(hide_password=True)
        raise CommandError(
            f"cannot read the outbox at {shown} ({reason}): the migration must know that no "
            "row waits; set DATABASE_URL to the pipeline's database"
        ) from None
    finally:
        await engine.dispose()
    return waiting


class Migration:
    """One run of the command: its clients, its plan, its output."""

    def __init__(self, settings: Settings, args: argparse.Namespace) -> None:
        self.settings, self.args = settings, args
        self.options = client_options(settings)
        self.plan_id = {
            "from": {"prefix": settings.topic_prefix, "app_id": settings.app_id},
            "to": {"prefix": args.to_prefix, "app_id": args.to_app_id},
            "partitions": args.partitions,
        }
        name = f"{settings.app_id}-to-{args.to_app_id}.json"
        self.progress_path = settings.data_dir / "migrations" / name

    def client(self, kind: str, group: str | None = None) -> Any:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient

        common = {"bootstrap_servers": self.settings.kafka_bootstrap_servers, **self.options}
        if kind == "admin":
            return AIOKafkaAdminClient(request_timeout_ms=int(self.args.timeout * 1000), **common)
        if kind == "producer":
            from pipeline.adapters.kafka.copy import MAX_REQUEST_BYTES

            return AIOKafkaProducer(acks="all", enable_idempotence=True, linger_ms=5,
                                    max_batch_size=512 * 1024,
                                    max_request_size=MAX_REQUEST_BYTES, **common)  # fmt: skip
        return AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **common)

    async def run(self) -> int:
        from pipeline.adapters.kafka import copy

        progress = Progress.open(self.progress_path, self.plan_id)
        if progress.done:
            print(f"already migrated ({self.progress_path})")
            self.print_next(progress)
            return 0
        plan = routes(self.settings, self.args)
        admin = self.client("admin")
        await admin.start()
        consumer = self.client("consumer")
        try:
            await consumer.start()
            existing = await copy.describe(admin)
            plan = [r for r in plan if r.source in existing]  # a table never written has none
            old = {r.source: existing[r.source][0] for r in plan}
            bounds = await copy.bounds(consumer, old)
            await self.check(admin, bounds)
            configs = await copy.topic_configs(admin, sorted(old))
            plan = [dataclasses.replace(r, config=configs.get(r.source, {})) for r in plan]
            self.refuse_foreign(progress, plan, existing)
            for route in plan:  # recorded as ours before they exist: a rerun continues
                progress.topic(route.source)
            progress.save()
            await copy.create_targets(admin, plan, {r.source: existing[r.source][1] for r in plan})
            print(f"copying {len(plan)} topics to prefix {self.args.to_prefix!r}, app id "
                  f"{self.args.to_app_id!r}, {self.args.partitions} partitions "
                  f"(progress: {self.progress_path})")  # fmt: skip
            for route in plan:
                mine = {p: b for (t, p), b in bounds.items() if t == route.source}
                n = await copy.copy_route(self.client, route, mine, progress.topic(route.source),
                                          progress.save)  # fmt: skip
                total = sum(progress.topic(route.source).written.values())
                print(f"copied  {route.source} -> {route.target}  {n} records sent now, "
                      f"{total} in all, {route.partitions} partitions")  # fmt: skip
            # Nothing may have been written to the old topics meanwhile, nor a worker started.
            after = await copy.bounds(consumer, old)
            await self.check(admin, after)
            moved = [k for k in after if after[k][1] != bounds[k][1]]
            if moved:
                raise CopyError(
                    f"{len(moved)} old partitions got records during the copy (e.g. "
                    f"{moved[0][0]}[{moved[0][1]}]): stop what wrote them, then run this "
                    "again; it copies the rest"
                )
            await self.commit_new_group(plan, progress)
        finally:
            await consumer.stop()
            await admin.close()
        progress.done = True
        progress.save()
        self.print_next(progress)
        return 0

    async def check(self, admin: Any, bounds: dict[tuple[str, int], tuple[int, int]]) -> None:
        from pipeline.adapters.kafka import copy
        from pipeline.streaming.topics import consumed_topic_names

        state = await copy.group_state(admin, self.settings.app_id)
        problems = refusals(self.settings.app_id, state, consumed_topic_names(), bounds,
                            await outbox_waiting(self.settings.database_url))  # fmt: skip
        new = await copy.group_state(admin, self.args.to_app_id)
        if new.members:
            problems.append(
                f"consumer group {self.args.to_app_id} has {new.members} active member(s): "
                "workers run with the new settings already; stop them, then run this again"
            )
        if problems:
            raise CommandError("; ".join(problems))

    def refuse_foreign(
        self, progress: Progress, plan: list[Route], existing: dict[str, tuple[int, int]]
    ) -> None:
        """A new topic that exists but that this migration has not written to is someone
        else's: refused (its records would be taken for ours)."""
        for route in plan:
            if route.target in existing and route.source not in progress.topics:
                raise CommandError(
                    f"{route.target} exists already and this migration did not create it: "
                    "choose another --to-prefix / --to-app-id, or delete it"
                )

    async def commit_new_group(self, plan: list[Route], progress: Progress) -> None:
        from pipeline.adapters.kafka import copy
        from pipeline.streaming.topics import consumed_topic_names

        consumed = consumed_topic_names()
        offsets = {
            (route.target, q): end
            for route in plan
            if route.source in consumed
            for q, end in progress.topic(route.source).written.items()
            if end > 0
        }
        consumer = self.client("consumer", group=self.args.to_app_id)
        await consumer.start()
        try:
            await copy.commit_offsets(consumer, offsets)
        finally:
            await consumer.stop()
        print(f"committed consumer group {self.args.to_app_id} at the ends of the copied "
              f"topics ({len(offsets)} partitions)")  # fmt: skip

    def print_next(self, progress: Progress) -> None:
        a, s = self.args, self.settings
        old = sorted(progress.topics)
        print(
            "\nStart the workers with\n"
            f"  PIPELINE_TOPIC_PREFIX={a.to_prefix} PIPELINE_APP_ID={a.to_app_id} "
            f"PIPELINE_PARTITIONS={a.partitions}\n"
            "each with a new, empty PIPELINE_STATE_DIR (the tables are restored from the new "
            "changelogs; an old state directory holds the old partitions' state), then check "
            "them with `python -m pipeline reconcile`.\n"
            "Rollback, before the new workers take orders: stop them and start the old ones "
            f"with PIPELINE_TOPIC_PREFIX={s.topic_prefix} PIPELINE_APP_ID={s.app_id} "
            f"PIPELINE_PARTITIONS={s.partitions}; the old topics are untouched.\n"
            f"Once satisfied, delete the {len(old)} old topics, e.g. with\n"
            f"  kafka-topics.sh --bootstrap-server {s.kafka_bootstrap_servers} --delete "
            "--topic <name>\n"
            "for each of: " + " ".join(old)
        )


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    check_target(settings, args)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(Migration(settings, args).run())
    except (CopyError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    except (KafkaError, OSError) as exc:
        raise CommandError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers} "
            f"({str(exc) or type(exc).__name__}); {unreachable_hint(settings)}; run this again to "
            "continue"
        ) from None


def add_parser(actions: Any) -> None:
    migrate = actions.add_parser(
        "migrate",
        help="move the pipeline to new topics with another partition count (resumable)",
        description="Changes the partition count: copies every topic and table changelog of "
        "PIPELINE_TOPIC_PREFIX / PIPELINE_APP_ID to new ones named by --to-prefix / "
        "--to-app-id with --partitions partitions, keys and per-key order kept, and commits "
        "the new consumer group after the copied records. Refuses to start while a worker of "
        "the old settings runs, while the old group has lag, or while the outbox has rows "
        "waiting. Run again after an interruption: it continues. Old topics are left "
        "untouched. Exits 0 done, 2 refused or Kafka unreachable (with what to do).",
    )
    migrate.add_argument("--partitions", type=_partitions, required=True,
                         help="partitions of the new topics (1-1024)")  # fmt: skip
    migrate.add_argument("--to-prefix", required=True, type=_name,
                         help="PIPELINE_TOPIC_PREFIX of the new topics")  # fmt: skip
    migrate.add_argument("--to-app-id", required=True, type=_app_id,
                         help="PIPELINE_APP_ID of the new changelogs and group")  # fmt: skip
    migrate.add_argument("--timeout", type=float, default=30.0, help="Kafka request timeout (s)")


def _partitions(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 1024:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 1024")
    return n


_LEGAL = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _name(text: str) -> str:
    if len(text) > 100 or not set(text) <= _LEGAL:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r}: a topic prefix has at most 100 of the letters, digits, '.', '_' and "
            "'-' that Kafka allows in topic names"
        )
    return text


def _app_id(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("the app id must not be empty")
    return _name(text)
