"""One settings object, read once at start-up from the environment.

Every setting is declared once, as a field of :class:`Settings`: its variable, its reader (which
says what the variable must hold, bounds included), its default or how that is derived from the
other settings, and a one-line doc. :func:`load_settings` reads them all and reports every bad
variable at once; :func:`configuration_doc` renders ``docs/configuration.md`` from them. Every
value has a local default so that a fresh clone runs with nothing set. Names follow the
ecosystem where one exists (``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``); everything else is
prefixed ``PIPELINE_``.

The module runs past 300 lines only for the declaration itself (some fifty settings, each with
its doc, about 150 lines); the readers of one variable are in :mod:`pipeline.environment`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import Field, dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline import environment as read
from pipeline.domain.events import DEFAULT_WRITE_VERSION, SCHEMA_VERSION
from pipeline.environment import ALL_AGENTS as ALL_AGENTS
from pipeline.environment import MECHANISMS as MECHANISMS
from pipeline.environment import PROTOCOLS as PROTOCOLS
from pipeline.environment import Secret as Secret
from pipeline.environment import SettingsError as SettingsError
from pipeline.environment import normalize_database_url as normalize_database_url

# Where the packages live: a source checkout's root, or the installation's site-packages.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _is_checkout(root: Path) -> bool:
    """Whether ``root`` is this project's source tree (its own pyproject.toml, not a stray one
    some other wheel left in site-packages)."""
    try:
        return 'name = "orders-pipeline"' in (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False


# A checkout keeps its caches in its own ``.cache`` (the Makefile and CI rely on it); an
# installed package never writes beside its code (see :func:`default_cache_dir`).
SOURCE_CHECKOUT = _is_checkout(PROJECT_ROOT)

DEFAULT_KAFKA_VERSION = "4.4.0"


class Resolved(dict[str, Any]):
    """The settings read so far, by field name, and which of them the environment gave."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.given: set[str] = set()
        self.env: Mapping[str, str] = {} if env is None else env


@dataclass(frozen=True)
class Derived:
    """A default computed from other settings, and how the table shows it."""

    derive: Callable[[Resolved], Any]
    shown: str


@dataclass(frozen=True)
class Setting:
    """How one field of :class:`Settings` comes from the environment (its ``metadata``)."""

    env: str | None
    reader: read.Reader | None  # None: derived only
    default: Any  # a value, or Derived
    doc: str
    note: str = ""  # said after the default in the table
    blank_is_unset: bool = True  # else a set but empty variable is read, not defaulted


def setting(
    env: str | None, reader: read.Reader | None, default: Any, doc: str, *, note: str = "",
    blank_is_unset: bool = True,
) -> Any:  # fmt: skip
    """A :class:`Settings` field read from the variable ``env``; see :class:`Setting`."""
    spec = Setting(env, reader, default, doc, note, blank_is_unset)
    if isinstance(default, Derived):
        return field(metadata={"setting": spec})
    return field(default=default, metadata={"setting": spec})


def default_cache_dir(env: Mapping[str, str]) -> Path:
    """``./.cache`` of a source checkout; else the user's cache directory
    (``$XDG_CACHE_HOME/orders-pipeline``, or ``~/.cache/orders-pipeline``): an installed
    package must not write into site-packages."""
    if SOURCE_CHECKOUT:
        return PROJECT_ROOT / ".cache"
    xdg = env.get("XDG_CACHE_HOME", "").strip()
    home = Path(env["HOME"]) if env.get("HOME", "").strip() else Path.home()
    # The XDG spec ignores a relative XDG_CACHE_HOME.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".cache"
    return (base / "orders-pipeline").resolve()


def in_data_dir(name: str) -> Derived:
    return Derived(lambda v: (v["data_dir"] / name).resolve(), f"`$PIPELINE_DATA_DIR/{name}`")


# repr=False: the generated repr would print DATABASE_URL's password (see __repr__).
# kw_only: each field sits where it reads best in the table, defaulted or derived.
@dataclass(frozen=True, repr=False, kw_only=True)
class Settings:
    # Each field: setting(variable, reader, default, doc). The table in docs/configuration.md
    # lists them in this order.
    # fmt: off
    kafka_bootstrap_servers: str = setting("KAFKA_BOOTSTRAP_SERVERS", read.text,
        Derived(lambda v: f"127.0.0.1:{v['kafka_port']}", "*(unset: the local broker)*"),
        "your cluster, e.g. `k1:9092,k2:9092`; when set, nothing is started or stopped")
    kafka_external: bool = setting(None, None,
        Derived(lambda v: "kafka_bootstrap_servers" in v.given, ""),
        "KAFKA_BOOTSTRAP_SERVERS is set: the cluster is the user's, nothing is started or stopped")
    database_url: str = setting("DATABASE_URL", read.database_url,
        Derived(lambda v: f"sqlite+aiosqlite:///{v['data_dir'] / 'pipeline.db'}",
                "`sqlite:///$PIPELINE_DATA_DIR/pipeline.db`"),
        "SQLAlchemy URL; `postgresql://user:pass@host/db` for PostgreSQL (asyncpg is picked for "
        "you)")
    data_dir: Path = setting("PIPELINE_DATA_DIR", read.path,
        Derived(lambda v: (Path.cwd() / "data").resolve(), "`./data`"),
        "SQLite file, local broker data, logs; created with its parents when missing")
    state_dir: Path = setting("PIPELINE_STATE_DIR", read.path, in_data_dir("state"),
        "RocksDB table state of this worker (one per worker)")
    store: str = setting("PIPELINE_STORE", read.store_url, "rocksdb://",
        "Faust table store: `rocksdb://` is the versioned RocksDB store "
        "(`pipeline.streaming.versioned_store`); `memory://` only for unit tests")
    web_host: str = setting("PIPELINE_WEB_HOST", read.text, "127.0.0.1",
        "address the worker's web server binds to (`0.0.0.0` for every interface, with "
        "`PIPELINE_API_TOKEN`); also the advertised host unless `PIPELINE_WEB_ADVERTISED_URL` "
        "is set")
    web_port: int = setting("PIPELINE_WEB_PORT", read.integer(1024, 65535), 6066,
        "web port (the demo uses this and the next ones)")
    web_advertised_url: str = setting("PIPELINE_WEB_ADVERTISED_URL", read.advertised_url, "",
        "URL the other workers send this worker's routed table reads to (Faust's "
        "`canonical_url`), e.g. `http://10.0.0.5:6066`: set it when the bind address is not "
        "how peers reach this worker (a pod IP, a host name)",
        note="(unset: `http://$PIPELINE_WEB_HOST:<web port>`; for a bind-all host such as "
        "`0.0.0.0` or `::`, this machine's host name)")
    api_token: Secret = setting("PIPELINE_API_TOKEN", read.secret, Secret(""),
        "bearer token for write and admin endpoints and for reads of personal data or spend; "
        "required to bind a non-loopback address")
    app_id: str = setting("PIPELINE_APP_ID", read.text, "orders-pipeline",
        "Faust app id: consumer group and changelog topic names")
    topic_prefix: str = setting("PIPELINE_TOPIC_PREFIX", read.text, "",
        "prefix for every topic name (the tests give each test its own)")
    partitions: int = setting("PIPELINE_PARTITIONS", read.integer(1, 1024), 4,
        "partitions of the pipeline's topics: the limit on how many workers share the work")
    replication_factor: int = setting("PIPELINE_REPLICATION_FACTOR", read.integer(1, 16), 1,
        "replication factor of the pipeline's topics")
    dedupe_horizon_seconds: int = setting("PIPELINE_DEDUPE_HORIZON_SECONDS",
        read.integer(1, 7 * 86400), 300,
        "how long (in record time) a table value remembers what it settled, to absorb repeats; "
        "at least the sum of `PIPELINE_RETRY_DELAYS` plus 5 s. See \"Dedupe horizon and bounded "
        "state\"")
    replay_max_age_seconds: int = setting("PIPELINE_REPLAY_MAX_AGE_SECONDS",
        read.integer(60, 365 * 86400), 6 * 86400,
        "dead letters older than this (by their original record's time) are refused by replay; "
        "keep it below the topics' retention", note="(6 days)")
    max_body_bytes: int = setting("PIPELINE_MAX_BODY_BYTES", read.integer(1024, 16 << 20),
        64 * 1024,
        "request body limit (`413` above it, whether sent with `Content-Length` or chunked)")
    http_body_timeout_seconds: float = setting("PIPELINE_HTTP_BODY_TIMEOUT_SECONDS",
        read.number(0.1, 600.0), 10.0,
        "how long a request body may take to arrive once its headers have (`408` after): a client "
        "that stops sending mid-body does not hold a handler and its connection")
    max_order_items: int = setting("PIPELINE_MAX_ORDER_ITEMS", read.integer(1, 10_000), 100,
        "items per order")
    idempotency_key_ttl_seconds: int = setting("PIPELINE_IDEMPOTENCY_KEY_TTL_SECONDS",
        read.integer(60, 365 * 86400), 86400, "how long an `Idempotency-Key` is remembered")
    event_write_version: int = setting("PIPELINE_EVENT_WRITE_VERSION",
        read.integer(1, SCHEMA_VERSION), DEFAULT_WRITE_VERSION,
        "the schema version events are written at (each in its newest shape at or below it); "
        f"this release reads 1 to {SCHEMA_VERSION}. Raise it only once every worker runs this "
        "release: see [schema evolution](schema-evolution.md)")
    forwarder_enabled: bool = setting("PIPELINE_FORWARDER_ENABLED", read.boolean, True,
        "run the outbox forwarder in this worker")
    outbox_batch_size: int = setting("PIPELINE_OUTBOX_BATCH_SIZE", read.integer(1, 100_000), 500,
        "rows read and published per batch")
    outbox_poll_interval: float = setting("PIPELINE_OUTBOX_POLL_INTERVAL",
        read.number(0.001, 60.0), 0.2, "seconds between polls when no NOTIFY/wake-up arrives")
    outbox_retention_seconds: int = setting("PIPELINE_OUTBOX_RETENTION_SECONDS",
        read.integer(0, 365 * 86400), 86400, "published rows are deleted after this")
    outbox_topics: tuple[str, ...] = setting("PIPELINE_OUTBOX_TOPICS", read.topic_patterns, (),
        "topics other services may publish to through the outbox (`OutboxWriter`, see "
        "docs/outbox.md): names, or prefixes ending in `*`, comma-separated, each under "
        "`PIPELINE_TOPIC_PREFIX`; the forwarder parks a row for any other topic")
    outbox_max_message_bytes: int = setting("PIPELINE_OUTBOX_MAX_MESSAGE_BYTES",
        read.integer(1024, 64 << 20), 1024 * 1024,
        "largest event the forwarder sends; larger rows are parked")
    lifetime_value_milestone: Decimal = setting("PIPELINE_LTV_MILESTONE",
        read.non_negative_decimal, Decimal("1000.00"),
        "lifetime value that triggers the `lifetime_value` milestone")
    revenue_window_seconds: int = setting("PIPELINE_REVENUE_WINDOW_SECONDS",
        read.integer(1, 86400), 60, "size of the tumbling revenue windows")
    revenue_window_expires_seconds: int = setting("PIPELINE_REVENUE_WINDOW_EXPIRES_SECONDS",
        read.integer(1, 30 * 86400), 3600, "how long a revenue window is kept")
    agents: tuple[str, ...] = setting("PIPELINE_AGENTS", read.agent_list, ALL_AGENTS,
        "the agent modules this worker runs (benchmarks run one)", note="(all)")
    producer_linger_ms: int = setting("PIPELINE_PRODUCER_LINGER_MS", read.integer(0, 1000), 5,
        "how long the agents' producer waits to batch records")
    consumer_fetch_min_bytes: int = setting("PIPELINE_CONSUMER_FETCH_MIN_BYTES",
        read.integer(1, 64 * 1024 * 1024), 64 * 1024,
        "how much a worker's fetch asks the broker to gather before it answers (Faust's is 1 "
        "byte: under load, a fetch per handful of records)")
    consumer_fetch_max_wait_ms: int = setting("PIPELINE_CONSUMER_FETCH_MAX_WAIT_MS",
        read.integer(0, 1500), 10,
        "the longest the broker holds a fetch to gather those bytes: what a record may wait "
        "per hop when traffic is light")
    commit_interval_ms: int = setting("PIPELINE_COMMIT_INTERVAL_MS", read.integer(50, 60_000),
        2800,
        "how often a worker commits the offsets its agents have handled, and writes each table "
        "value changed since (Faust's default): after a crash, the events since the last commit "
        "are handled again (and absorbed); shorter means more changelog bytes for hot keys")
    gc_young_threshold: int = setting("PIPELINE_GC_YOUNG_THRESHOLD",
        read.integer(0, 10_000_000), 50_000,
        "a worker's garbage collector looks at its youngest objects every this many allocations "
        "(Python's default is 700; `0` keeps Python's and does not freeze start-up's objects): "
        "at 700 its full collections took 15-18% of a busy worker's CPU, see Benchmarks")
    retry_in_place_attempts: int = setting("PIPELINE_RETRY_IN_PLACE_ATTEMPTS",
        read.integer(1, 20), 3, "attempts of a failing handler in place before the retry topics")
    retry_backoff_seconds: float = setting("PIPELINE_RETRY_BACKOFF_SECONDS",
        read.number(0.0, 60.0), 0.1,
        "first in-place back-off; doubles per attempt (cap 5 s), with jitter")
    retry_delays: tuple[float, ...] = setting("PIPELINE_RETRY_DELAYS", read.delays,
        (1.0, 10.0, 60.0),
        "seconds a record waits in each retry topic (`retry.1`, `retry.2`, ...) before going "
        "back to its agent; set but empty: no retry topics", blank_is_unset=False)
    session_timeout_seconds: float = setting("PIPELINE_SESSION_TIMEOUT_SECONDS",
        read.number(1.0, 3600.0), 60.0,
        "how long a silent worker keeps its partitions (failover time)")
    heartbeat_seconds: float = setting("PIPELINE_HEARTBEAT_SECONDS", read.number(0.1, 600.0),
        3.0, "consumer heartbeat interval (keep it well under the session timeout)")
    kafka_security_protocol: str = setting("KAFKA_SECURITY_PROTOCOL",
        read.one_of(PROTOCOLS, str.upper), "PLAINTEXT",
        "Kafka TLS/SASL, see Security: `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`")
    kafka_sasl_mechanism: str = setting("KAFKA_SASL_MECHANISM",
        read.one_of(MECHANISMS, str.upper), "PLAIN",
        "SASL mechanism: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`")
    kafka_sasl_username: str = setting("KAFKA_SASL_USERNAME", read.text, "",
        "SASL user name (the `SASL_*` protocols need it)")
    kafka_sasl_password: Secret = setting("KAFKA_SASL_PASSWORD", read.secret, Secret(""),
        "SASL password (the `SASL_*` protocols need it); never printed")
    kafka_ssl_cafile: str = setting("KAFKA_SSL_CAFILE", read.readable_file, "",
        "CA certificates (PEM) to trust instead of the system's")
    kafka_ssl_certfile: str = setting("KAFKA_SSL_CERTFILE", read.readable_file, "",
        "client certificate (PEM), for brokers that ask for one")
    kafka_ssl_keyfile: str = setting("KAFKA_SSL_KEYFILE", read.readable_file, "",
        "private key (PEM) of `KAFKA_SSL_CERTFILE`, when that file does not hold it")
    replay_limit: int = setting("PIPELINE_REPLAY_LIMIT", read.integer(1, 1000), 3,
        "replays of one event (per agent) before the loop guard refuses more")
    extra_modules: tuple[str, ...] = setting("PIPELINE_EXTRA_MODULES", read.module_list, (),
        "more modules for the worker to load (your own agents; they get the same failure "
        "handling through `pipeline.streaming.consume`)")
    mailbox_dir: Path | None = setting("PIPELINE_MAILBOX_DIR", read.path, in_data_dir("mailbox"),
        "where the default sender writes messages")
    smtp_host: str = setting("PIPELINE_SMTP_HOST", read.text, "",
        "send notifications by SMTP through this host instead of the mailbox")
    smtp_port: int = setting("PIPELINE_SMTP_PORT", read.integer(1, 65535), 25, "SMTP port")
    smtp_sender: str = setting("PIPELINE_SMTP_SENDER", read.text, "orders@localhost",
        "sender address of notifications")
    log_level: str = setting("PIPELINE_LOG_LEVEL",
        read.one_of(read.LOG_LEVELS, str.lower, "is not a log level"), "info", "log level")
    log_format: str = setting("PIPELINE_LOG_FORMAT",
        read.one_of(("json", "text"), str.lower, "must be json or text"), "json",
        "worker logs: one JSON object per line (`ts`, `level`, `logger`, `message` and the bound "
        "ids), or `text`")
    log_events: bool = setting("PIPELINE_LOG_EVENTS", read.boolean, True,
        "one log line per order placed or cancelled and per event an agent handled "
        "(`pipeline.trace`), for following an order")
    topic_retention_hours: int = setting("PIPELINE_TOPIC_RETENTION_HOURS", read.retention_hours,
        168, "retention of the topics `topics create` makes (`-1`: forever)")
    kafka_version: str = setting("PIPELINE_KAFKA_VERSION", read.release_number,
        DEFAULT_KAFKA_VERSION, "Apache Kafka release of the local broker (3.9.x works too)")
    kafka_port: int = setting("PIPELINE_KAFKA_PORT", read.integer(1024, 65535), 9092,
        "local broker port")
    kafka_controller_port: int = setting("PIPELINE_KAFKA_CONTROLLER_PORT",
        read.integer(1024, 65535),
        Derived(lambda v: v["kafka_port"] + 1, "`PIPELINE_KAFKA_PORT + 1`"),
        "local KRaft controller port")
    kafka_data_dir: Path = setting("PIPELINE_KAFKA_DATA_DIR", read.path,
        Derived(lambda v: (v["data_dir"] / "kafka" / v["kafka_version"]).resolve(),
                "`$PIPELINE_DATA_DIR/kafka/$PIPELINE_KAFKA_VERSION`"),
        "local broker log dirs, pid file and server log; one per Kafka release, as a release "
        "cannot read the storage another formatted")
    kafka_heap: str = setting("PIPELINE_KAFKA_HEAP", read.text, "1G", "local broker JVM heap")
    cache_dir: Path = setting("PIPELINE_CACHE_DIR", read.path,
        Derived(lambda v: default_cache_dir(v.env),
                "`./.cache` of a source checkout; installed: `$XDG_CACHE_HOME/orders-pipeline` "
                "(`~/.cache/orders-pipeline`)"),
        "resolved Kafka jars, one folder per version, and the private PostgreSQL's data; "
        "never inside the installed package")
    # fmt: on

    def __post_init__(self) -> None:
        problems = list(_disagreements({f.name: getattr(self, f.name) for f in fields(self)}))
        if problems:
            raise SettingsError(*problems)

    def __repr__(self) -> str:
        """Every field, with the database URL's password masked (Secrets mask themselves):
        settings end up in logs, tracebacks and debuggers."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["database_url"] = redact_url(self.database_url)
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in values.items())})"

    @property
    def web_is_loopback(self) -> bool:
        return is_loopback(self.web_host)

    def local_url(self, port: int | None = None) -> str:
        """The URL a client on this machine uses to reach this worker's web server: on ``port``
        when given (the port Faust really serves on, after ``--web-port``), else ``web_port``.

        A wildcard bind (``0.0.0.0``, ``::`` or empty) is reached on its family's loopback
        address; an IPv6 literal goes in brackets."""
        host = self.web_host
        try:
            address = ipaddress.ip_address(host) if host else ipaddress.IPv4Address(0)
        except ValueError:
            address = None  # a host name
        if address is not None and address.is_unspecified:
            host = "127.0.0.1" if address.version == 4 else "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.web_port if port is None else port}"

    def advertised_url(self, port: int | None = None, host: str | None = None) -> str:
        """The URL other workers reach this worker on (Faust's ``canonical_url``):
        ``PIPELINE_WEB_ADVERTISED_URL`` when set, else built from ``host`` (default
        ``web_host``) and ``port`` (default ``web_port``; pass the port Faust really serves
        on, after ``--web-port``).

        A bind-all host (``0.0.0.0``, ``::``, empty) is never advertised: peers cannot route
        to it, so this machine's host name stands in (Faust's own default host; in a pod or on
        a VM it names the machine). Where that name does not resolve from the other workers,
        set ``PIPELINE_WEB_ADVERTISED_URL``."""
        if self.web_advertised_url:
            return self.web_advertised_url
        host = self.web_host if host is None else host
        if read.is_wildcard(host):
            host = socket.gethostname() or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.web_port if port is None else port}"

    def topic_name(self, base: str) -> str:
        """Full name of a topic: tests give each run a prefix so runs never share topics."""
        return f"{self.topic_prefix}{base}"


def _disagreements(v: Mapping[str, Any]) -> Iterator[str]:
    """What breaks the rules between settings; a rule is judged only when every setting it
    compares could be read (a bad one is reported on its own)."""

    def have(*names: str) -> bool:
        return all(name in v for name in names)

    if have("kafka_port", "kafka_controller_port") and (
        v["kafka_controller_port"] == v["kafka_port"]
    ):
        yield "PIPELINE_KAFKA_CONTROLLER_PORT must differ from PIPELINE_KAFKA_PORT"
    if have("kafka_security_protocol", "kafka_sasl_username", "kafka_sasl_password") and (
        v["kafka_security_protocol"].startswith("SASL")
        and not (v["kafka_sasl_username"] and v["kafka_sasl_password"])
    ):
        yield (
            f"KAFKA_SECURITY_PROTOCOL={v['kafka_security_protocol']} needs KAFKA_SASL_USERNAME "
            "and KAFKA_SASL_PASSWORD"
        )
    if have("kafka_ssl_keyfile", "kafka_ssl_certfile") and (
        v["kafka_ssl_keyfile"] and not v["kafka_ssl_certfile"]
    ):
        yield "KAFKA_SSL_KEYFILE is set without KAFKA_SSL_CERTFILE"
    # A retried record is judged against what its key remembers; it must come back before that
    # is forgotten (pipeline.domain.horizon).
    if have("dedupe_horizon_seconds", "retry_delays") and (
        (least := sum(v["retry_delays"]) + 5) > v["dedupe_horizon_seconds"]
    ):
        yield (
            f"PIPELINE_DEDUPE_HORIZON_SECONDS={v['dedupe_horizon_seconds']} must be at least the "
            f"sum of PIPELINE_RETRY_DELAYS plus 5 s ({least:g}): a retry must come back within "
            "the horizon"
        )


# Variables the pipeline read once and reads no more, each with what to do instead. One still
# set stops start-up like a bad value: ignored, it would let an operator believe it works.
RETIRED = {
    "PIPELINE_DEDUPE_WINDOW": (
        "the count-based dedupe window was replaced by a time horizon: set "
        "PIPELINE_DEDUPE_HORIZON_SECONDS (seconds of record time a table value remembers what it "
        "settled) and unset PIPELINE_DEDUPE_WINDOW"
    ),
    "PIPELINE_PROCESSING_GUARANTEE": (
        "there is no exactly_once mode (Faust's transactions fence the workers of a "
        "repartitioned topic): at-least-once delivery with idempotent effects is the only "
        "guarantee; unset PIPELINE_PROCESSING_GUARANTEE"
    ),
}


def _retired(env: Mapping[str, str]) -> Iterator[str]:
    for name, instead in RETIRED.items():
        if (env.get(name) or "").strip():
            yield f"{name} is no longer read: {instead}"


def declared() -> list[tuple[Field[Any], Setting]]:
    """Every field of :class:`Settings` with its declaration, in declaration order."""
    return [(f, f.metadata["setting"]) for f in fields(Settings)]


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from ``environ`` (``os.environ`` when not given).

    Every bad variable is reported at once: one :class:`SettingsError`, one line per problem."""
    env = os.environ if environ is None else environ
    values = Resolved(env)
    problems: list[str] = list(_retired(env))
    derived: list[tuple[str, Derived]] = []
    for f, spec in declared():
        raw = env.get(spec.env) if spec.env else None
        if (
            spec.env
            and spec.reader
            and raw is not None
            and (raw.strip() or not spec.blank_is_unset)
        ):
            try:
                values[f.name] = spec.reader(spec.env, raw)
                values.given.add(f.name)
            except SettingsError as exc:
                problems.extend(exc.problems)
        elif isinstance(spec.default, Derived):
            derived.append((f.name, spec.default))
        else:
            values[f.name] = spec.default
    while derived:  # until a round derives nothing more: what is left needs a bad variable
        pending, derived = derived, []
        for name, default in pending:
            try:
                values[name] = default.derive(values)
            except KeyError:
                derived.append((name, default))
        if len(derived) == len(pending):
            break
    problems.extend(_disagreements(values))
    if problems:
        raise SettingsError(*problems)
    return Settings(**values)


# -- the reference -------------------------------------------------------------------------------

REGENERATE = "python -m pipeline.settings > docs/configuration.md"


def _spelled(value: Any) -> str:
    """A default as the environment would spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(_spelled(item) for item in value)
    if isinstance(value, Secret):
        return value.get()
    return str(value)


def configuration_table() -> str:
    """The markdown table of every variable: its default and what it means."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for _, spec in declared():
        if spec.env is None:
            continue
        if isinstance(spec.default, Derived):
            default = spec.default.shown
        else:
            default = f"`{_spelled(spec.default)}`" if _spelled(spec.default) else "*(unset)*"
        rows.append(f"| `{spec.env}` | {f'{default} {spec.note}'.strip()} | {spec.doc} |")
    return "\n".join(rows) + "\n"


def retired_table() -> str:
    """The markdown table of the retired variables and what replaces each."""
    rows = ["| variable | instead |", "|---|---|"]
    rows += [f"| `{name}` | {instead} |" for name, instead in RETIRED.items()]
    return "\n".join(rows) + "\n"


def configuration_doc() -> str:
    """All of ``docs/configuration.md``: regenerate that file with :data:`REGENERATE`."""
    return f"""# Configuration

<!-- Generated from the declaration in pipeline/settings.py: edit it there, then run
     {REGENERATE} -->

Every setting comes from the environment and has a local default, so a fresh clone runs with
nothing set. The settings are read once, when a worker or a command starts; a bad value stops
it with one message naming every variable to fix and what each expects.

{configuration_table()}
Where files go: data (the SQLite file, table state, the local broker's data, logs) under
`PIPELINE_DATA_DIR`, `./data` of the directory a command starts in; downloads and the private
PostgreSQL under `PIPELINE_CACHE_DIR`. Run from a source checkout (its root has this project's
`pyproject.toml`), the cache is the checkout's `.cache`, which `make test` and CI rely on.
Installed with `pip install`, the package never writes beside its own code: the cache is
`$XDG_CACHE_HOME/orders-pipeline`, or `~/.cache/orders-pipeline` when that is unset.

Retired: these are no longer read, and a worker or command started with one set stops, saying
what to do instead.

{retired_table()}
Test-only: `TEST_KAFKA_BOOTSTRAP_SERVERS` (use your broker instead of starting one),
`TEST_DATABASE_URL` (your PostgreSQL), `TEST_POSTGRES_PORT` (the private cluster's port, 55432).
"""


# -- the web server's address --------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def web_bind_refusal(bind: str, api_token: Secret) -> str | None:
    """Why the web server must not listen on ``bind``, or None when it may.

    A server reachable from other machines must protect its write and admin endpoints (order
    creation, replay, reconcile) with a token. ``bind`` is the address the server will really
    listen on (Faust's ``web_bind`` once its options and environment are applied); an empty
    one means every interface.
    """
    if is_loopback(bind) or api_token:
        return None
    return (
        f"refusing to bind the web server to {bind or '*'!r} (reachable from other machines) "
        "without PIPELINE_API_TOKEN: set PIPELINE_API_TOKEN to protect the write and admin "
        "endpoints, or bind to 127.0.0.1 (PIPELINE_WEB_HOST, --web-bind, WEB_BIND)"
    )


# SQLAlchemy's own URL pattern takes the password up to an '@'; up to the last one here, so
# that an unescaped '@' in a password cannot leave its tail showing.
_URL_PASSWORD = re.compile(r"^(?P<head>[\w+]+://[^:/@]*:).*@")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|sslpassword)=)[^&]*", re.I)


def redact_url(url: str) -> str:
    """``url`` with its password (in the user part or the query) replaced by ``***``."""
    url = _URL_PASSWORD.sub(r"\g<head>***@", url, count=1)
    return _QUERY_PASSWORD.sub(r"\g<head>***", url)


if __name__ == "__main__":
    print(configuration_doc(), end="")
