"""The operator commands that are not Faust's own: ``migrate``, ``kafka``, ``postgres``,
``dlt``, ``reconcile``, ``load``, ``stock``, ``outbox``, ``orders``, ``topics``, ``forwarder``,
``contracts``.

Everything else (``worker``, ``send``, ...) goes to Faust's command line in ``__main__``.
Each command exits non-zero with a message saying what to do when it cannot do its job.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline import cli
from pipeline.settings import Settings, SettingsError, load_settings, redact_url

OUR_COMMANDS = {"migrate", "kafka", "postgres", "demo", "dlt", "reconcile", "load", "stock",
                "outbox", "orders", "topics", "forwarder", "contracts"}  # fmt: skip


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.adapters.db.schema import migrate, schema_revision

    migrate(settings.database_url, args.revision)
    revision = schema_revision(settings.database_url)
    print(f"schema at revision {revision} ({redact_url(settings.database_url)})")
    return 0


def cmd_kafka(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.local.kafka import LocalKafkaError, broker_answers, from_settings

    if settings.kafka_external:
        state = "answers" if broker_answers(settings.kafka_bootstrap_servers) else "DOES NOT answer"
        print(
            f"KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers} is set: using that "
            f"cluster ({state}); nothing started or stopped"
        )
        return 0 if args.action != "status" or state == "answers" else 1
    kafka = from_settings(settings)
    try:
        if args.action == "jars":
            print(kafka.ensure_jars())
        elif args.action == "up":
            print(kafka.start())
        elif args.action == "down":
            print("stopped" if kafka.stop() else "not running")
        else:
            pid = kafka.running_pid()
            print(f"running (pid {pid}) at {kafka.bootstrap_servers}" if pid else "not running")
            return 0 if pid else 1
    except LocalKafkaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_postgres(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.local.postgres import LocalPostgres, LocalPostgresError, default_data_dir

    pg = LocalPostgres(port=args.port, data_dir=default_data_dir(args.port, settings.cache_dir))
    try:
        if args.action == "up":
            pg.start()
            print(pg.create_database(args.database).replace("+asyncpg", ""))
        elif args.action == "down":
            pg.stop()
            print("stopped")
        else:
            running = pg.is_running()
            print(f"running at {pg.dsn()}" if running else "not running")
            return 0 if running else 1
    except LocalPostgresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    """Ask a worker to reconcile (it reads every table through its routed views)."""
    import json
    import urllib.error
    import urllib.request

    base = args.url or settings.local_url()
    if not base.startswith(("http://", "https://")):
        print(f"error: --url {base!r} must be an http:// or https:// URL", file=sys.stderr)
        return 2
    url = f"{base.rstrip('/')}/admin/reconcile?kafka={'false' if args.no_kafka else 'true'}"
    request = urllib.request.Request(url)  # noqa: S310 - the scheme is checked above
    if settings.api_token:
        request.add_header("Authorization", f"Bearer {settings.api_token.get()}")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as resp:  # noqa: S310
            report = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        print(f"error: {url} answered {exc.code}: {exc.read().decode(errors='replace')[:500]}",
              file=sys.stderr)  # fmt: skip
        return 2
    except OSError as exc:
        print(f"error: cannot reach a worker at {base} ({exc}); start one or pass --url",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        checked = ", ".join(f"{k} {v}" for k, v in report["checked"].items())
        print(f"checked: {checked}")
        for d in report["differences"]:
            print(f"DIFF {d['kind']} {d['key']}: expected {d['expected']}, found {d['actual']}")
        print("reconciled: no differences" if report["ok"] else
              f"{len(report['differences'])} differences")  # fmt: skip
    return 0 if report["ok"] else 1


def faust_commands() -> dict[str, str]:
    """Faust's own commands (``worker``, ``agents``, ``tables``, ``reset``, ``send``...) with
    their one-line help: listed with ours, run by Faust's command line."""
    from faust.cli.faust import cli

    return {
        name: (command.help or "").strip().splitlines()[0].rstrip(".") if command.help else ""
        for name, command in sorted(cli.commands.items())
    }


def build_parser(prog: str | None = None, *, with_faust: bool = True) -> argparse.ArgumentParser:
    """Our commands, and (for the help) Faust's; running one of ours needs only ours, without
    importing Faust's command line (half a second per command)."""
    parser = argparse.ArgumentParser(
        prog=prog or cli.prog(),
        description="The order pipeline's commands, and Faust's (run by Faust: see "
        "`<command> --help`). Exit status: 0 done, 1 a check found a problem, 2 a usage error "
        "or a service that does not answer, with what to do.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    migrate = sub.add_parser("migrate", help="create or upgrade the database schema")
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
    kafka = sub.add_parser("kafka", help="start/stop the local Kafka broker")
    kafka.add_argument("action", choices=["up", "down", "status", "jars"])
    pg = sub.add_parser("postgres", help="start/stop a private local PostgreSQL (tests, demo)")
    pg.add_argument("action", choices=["up", "down", "status"])
    pg.add_argument("--port", type=int, default=55432)
    pg.add_argument("--database", default="pipeline")
    from pipeline.cli import dlt

    dlt.add_parser(sub)
    rec = sub.add_parser(
        "reconcile", help="compare the database with the tables, the outbox and Kafka",
        description="Asks a running worker (GET /admin/reconcile). Exits 0 when everything "
                    "reconciles, 1 with the differences, 2 when no worker answers.",
    )  # fmt: skip
    rec.add_argument("--url", help="a worker's base URL (default: PIPELINE_WEB_HOST/PORT)")
    rec.add_argument("--no-kafka", action="store_true", help="do not scan orders.events")
    rec.add_argument("--json", action="store_true", help="the full report as JSON")
    rec.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")
    from pipeline.cli import load, ops

    load.add_parser(sub)
    ops.add_parsers(sub)
    from pipeline.cli import orders

    orders.add_parser(sub)
    from pipeline.cli import forwarder

    forwarder.add_parser(sub)
    from pipeline.cli import contracts

    contracts.add_parser(sub)
    sub.add_parser("demo", help="run the whole pipeline locally (see --help)", add_help=False)
    for name, summary in (faust_commands() if with_faust else {}).items():
        if name == "worker":
            summary = "run a worker (Faust's worker: worker --help)"
        sub.add_parser(name, help=f"Faust: {summary.lower()}" if name != "worker" else summary,
                       add_help=False)  # fmt: skip
    return parser


def run(argv: Sequence[str]) -> int:
    if argv[0] == "demo":
        from pipeline.cli.demo import main as demo

        return demo(list(argv[1:]))
    args = build_parser(with_faust=False).parse_args(argv)
    if args.command == "contracts":  # needs no settings: it renders the code's declarations
        from pipeline.cli import contracts

        return contracts.run(args)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "dlt":
        from pipeline.cli import dlt

        return dlt.run(settings, args)
    if args.command == "forwarder":
        from pipeline.cli import forwarder

        return forwarder.run(settings, args)
    if args.command == "orders":
        from pipeline.cli import orders

        return orders.run(settings, args)
    if args.command == "load":
        from pipeline.cli import load

        return load.cmd_load(settings, args)
    if args.command in ("stock", "outbox", "topics"):
        from pipeline.cli import ops

        return ops.run(settings, args)
    handler = {"migrate": cmd_migrate, "kafka": cmd_kafka, "postgres": cmd_postgres,
               "reconcile": cmd_reconcile}  # fmt: skip
    return handler[args.command](settings, args)
