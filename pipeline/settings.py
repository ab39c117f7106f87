"""One settings object, read once at start-up from the environment.

Every value has a local default so that a fresh clone runs with nothing set. Names follow the
ecosystem where one exists (``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``); everything else is
prefixed ``PIPELINE_``. The README's configuration table lists each of them.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_KAFKA_VERSION = "4.4.0"
ALL_AGENTS = ("analytics", "inventory", "order_status", "notifications", "revenue")


class SettingsError(ValueError):
    """A setting has a value the pipeline cannot use; the message names the variable."""


class Secret:
    """A string that never shows itself in reprs, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# repr=False: the generated repr would print DATABASE_URL's password (see __repr__).
@dataclass(frozen=True, repr=False)
class Settings:
    kafka_bootstrap_servers: str
    kafka_external: bool
    kafka_version: str
    kafka_port: int
    kafka_controller_port: int
    kafka_data_dir: Path
    kafka_heap: str
    database_url: str
    data_dir: Path
    state_dir: Path
    cache_dir: Path
    app_id: str
    topic_prefix: str
    partitions: int
    replication_factor: int
    store: str
    web_host: str
    web_port: int
    api_token: Secret
    log_level: str = "info"
    log_format: str = "json"
    log_events: bool = True
    # How long table values remember settled facts (pipeline.domain.horizon): repeats arrive within
    # it.
    dedupe_horizon_seconds: int = 300
    # How old a dead letter may be and still be replayed (its id stays pending that long).
    replay_max_age_seconds: int = 6 * 86400
    max_body_bytes: int = 64 * 1024
    max_order_items: int = 100
    forwarder_enabled: bool = True
    outbox_batch_size: int = 500
    outbox_poll_interval: float = 0.2
    outbox_retention_seconds: int = 86400
    outbox_max_message_bytes: int = 1024 * 1024
    idempotency_key_ttl_seconds: int = 86400
    lifetime_value_milestone: Decimal = Decimal("1000.00")
    revenue_window_seconds: int = 60
    revenue_window_expires_seconds: int = 3600
    mailbox_dir: Path | None = None
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_sender: str = "orders@localhost"
    agents: tuple[str, ...] = ALL_AGENTS
    producer_linger_ms: int = 5
    commit_interval_ms: int = 1000
    gc_young_threshold: int = 50_000
    retry_in_place_attempts: int = 3
    retry_backoff_seconds: float = 0.1
    retry_delays: tuple[float, ...] = (1.0, 10.0, 60.0)
    replay_limit: int = 3
    extra_modules: tuple[str, ...] = ()
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: Secret = Secret("")  # noqa: RUF009 - immutable
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    session_timeout_seconds: float = 60.0
    heartbeat_seconds: float = 3.0
    # How long the topics `python -m pipeline topics create` makes keep records (-1: forever).
    topic_retention_hours: int = 168

    def __repr__(self) -> str:
        """Every field, with the database URL's password masked (Secrets mask themselves):
        settings end up in logs, tracebacks and debuggers."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["database_url"] = redact_url(self.database_url)
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in values.items())})"

    @property
    def web_is_loopback(self) -> bool:
        return is_loopback(self.web_host)

    def __post_init__(self) -> None:
        # A retried record is judged against what its key remembers; it must come back
        # before that is forgotten (pipeline.domain.horizon).
        if self.dedupe_horizon_seconds < sum(self.retry_delays) + 5:
            raise SettingsError(
                f"PIPELINE_DEDUPE_HORIZON_SECONDS={self.dedupe_horizon_seconds} must be at "
                f"least the sum of PIPELINE_RETRY_DELAYS plus 5 s "
                f"({sum(self.retry_delays) + 5:g}): a retry must come back within the horizon"
            )

    def topic_name(self, base: str) -> str:
        """Full name of a topic: tests give each run a prefix so runs never share topics."""
        return f"{self.topic_prefix}{base}"


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


def _int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={value} is out of range ({low}..{high})")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={value} is out of range ({low}..{high})")
    return value


def _decimal(env: Mapping[str, str], name: str, default: str) -> Decimal:
    raw = env.get(name) or default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise SettingsError(f"{name}={raw!r} is not a decimal number") from None
    if not value.is_finite() or value < 0:
        raise SettingsError(f"{name}={raw!r} must be a non-negative number")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (true/false)")


def _path(env: Mapping[str, str], name: str, default: Path) -> Path:
    raw = env.get(name)
    return Path(raw).expanduser().resolve() if raw else default.resolve()


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from ``environ`` (``os.environ`` when not given)."""
    env = os.environ if environ is None else environ

    data_dir = _path(env, "PIPELINE_DATA_DIR", Path.cwd() / "data")
    cache_dir = _path(env, "PIPELINE_CACHE_DIR", PROJECT_ROOT / ".cache")
    kafka_port = _int(env, "PIPELINE_KAFKA_PORT", 9092, low=1024, high=65535)
    controller_port = _int(
        env, "PIPELINE_KAFKA_CONTROLLER_PORT", kafka_port + 1, low=1024, high=65535
    )
    if controller_port == kafka_port:
        raise SettingsError("PIPELINE_KAFKA_CONTROLLER_PORT must differ from PIPELINE_KAFKA_PORT")

    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    kafka_external = bool(bootstrap)
    if not bootstrap:
        bootstrap = f"127.0.0.1:{kafka_port}"

    kafka_version = env.get("PIPELINE_KAFKA_VERSION", DEFAULT_KAFKA_VERSION).strip()
    if not kafka_version or not kafka_version.replace(".", "").isdigit():
        raise SettingsError(
            f"PIPELINE_KAFKA_VERSION={kafka_version!r} is not a release number like 4.4.0"
        )

    database_url = env.get("DATABASE_URL", "").strip()
    if not database_url:
        database_url = f"sqlite+aiosqlite:///{data_dir / 'pipeline.db'}"
    database_url = normalize_database_url(database_url)

    store = env.get("PIPELINE_STORE", "rocksdb://").strip()
    if not store.endswith("://"):
        raise SettingsError(f"PIPELINE_STORE={store!r} must be a Faust store URL like rocksdb://")

    log_level = env.get("PIPELINE_LOG_LEVEL", "info").strip().lower()
    if log_level not in {"debug", "info", "warning", "warn", "error", "critical"}:
        raise SettingsError(f"PIPELINE_LOG_LEVEL={log_level!r} is not a log level")
    log_format = env.get("PIPELINE_LOG_FORMAT", "json").strip().lower()
    if log_format not in {"json", "text"}:
        raise SettingsError(f"PIPELINE_LOG_FORMAT={log_format!r} must be json or text")

    return Settings(
        kafka_bootstrap_servers=bootstrap,
        kafka_external=kafka_external,
        kafka_version=kafka_version,
        kafka_port=kafka_port,
        kafka_controller_port=controller_port,
        kafka_data_dir=_path(env, "PIPELINE_KAFKA_DATA_DIR", data_dir / "kafka"),
        kafka_heap=env.get("PIPELINE_KAFKA_HEAP", "1G"),
        database_url=database_url,
        data_dir=data_dir,
        state_dir=_path(env, "PIPELINE_STATE_DIR", data_dir / "state"),
        cache_dir=cache_dir,
        app_id=env.get("PIPELINE_APP_ID", "orders-pipeline"),
        topic_prefix=env.get("PIPELINE_TOPIC_PREFIX", ""),
        partitions=_int(env, "PIPELINE_PARTITIONS", 4, low=1, high=1024),
        replication_factor=_int(env, "PIPELINE_REPLICATION_FACTOR", 1, low=1, high=16),
        store=store,
        web_host=env.get("PIPELINE_WEB_HOST", "127.0.0.1").strip(),
        web_port=_int(env, "PIPELINE_WEB_PORT", 6066, low=1024, high=65535),
        api_token=Secret(env.get("PIPELINE_API_TOKEN", "")),
        log_level=log_level,
        log_format=log_format,
        log_events=_bool(env, "PIPELINE_LOG_EVENTS", True),
        dedupe_horizon_seconds=_int(
            env, "PIPELINE_DEDUPE_HORIZON_SECONDS", 300, low=1, high=7 * 86400
        ),
        replay_max_age_seconds=_int(
            env, "PIPELINE_REPLAY_MAX_AGE_SECONDS", 6 * 86400, low=60, high=365 * 86400
        ),
        max_body_bytes=_int(env, "PIPELINE_MAX_BODY_BYTES", 64 * 1024, low=1024, high=16 << 20),
        max_order_items=_int(env, "PIPELINE_MAX_ORDER_ITEMS", 100, low=1, high=10_000),
        forwarder_enabled=_bool(env, "PIPELINE_FORWARDER_ENABLED", True),
        outbox_batch_size=_int(env, "PIPELINE_OUTBOX_BATCH_SIZE", 500, low=1, high=100_000),
        outbox_poll_interval=_float(
            env, "PIPELINE_OUTBOX_POLL_INTERVAL", 0.2, low=0.001, high=60.0
        ),
        outbox_retention_seconds=_int(
            env, "PIPELINE_OUTBOX_RETENTION_SECONDS", 86400, low=0, high=365 * 86400
        ),
        outbox_max_message_bytes=_int(
            env, "PIPELINE_OUTBOX_MAX_MESSAGE_BYTES", 1024 * 1024, low=1024, high=64 << 20
        ),
        idempotency_key_ttl_seconds=_int(
            env, "PIPELINE_IDEMPOTENCY_KEY_TTL_SECONDS", 86400, low=60, high=365 * 86400
        ),
        lifetime_value_milestone=_decimal(env, "PIPELINE_LTV_MILESTONE", "1000.00"),
        revenue_window_seconds=_int(env, "PIPELINE_REVENUE_WINDOW_SECONDS", 60, low=1, high=86400),
        revenue_window_expires_seconds=_int(
            env, "PIPELINE_REVENUE_WINDOW_EXPIRES_SECONDS", 3600, low=1, high=30 * 86400
        ),
        mailbox_dir=_path(env, "PIPELINE_MAILBOX_DIR", data_dir / "mailbox"),
        smtp_host=env.get("PIPELINE_SMTP_HOST", "").strip(),
        smtp_port=_int(env, "PIPELINE_SMTP_PORT", 25, low=1, high=65535),
        smtp_sender=env.get("PIPELINE_SMTP_SENDER", "orders@localhost"),
        agents=_agents(env.get("PIPELINE_AGENTS", "")),
        producer_linger_ms=_int(env, "PIPELINE_PRODUCER_LINGER_MS", 5, low=0, high=1000),
        commit_interval_ms=_int(env, "PIPELINE_COMMIT_INTERVAL_MS", 1000, low=50, high=60_000),
        gc_young_threshold=_int(env, "PIPELINE_GC_YOUNG_THRESHOLD", 50_000, low=0, high=10_000_000),
        retry_in_place_attempts=_int(env, "PIPELINE_RETRY_IN_PLACE_ATTEMPTS", 3, low=1, high=20),
        retry_backoff_seconds=_float(
            env, "PIPELINE_RETRY_BACKOFF_SECONDS", 0.1, low=0.0, high=60.0
        ),
        retry_delays=_delays(env.get("PIPELINE_RETRY_DELAYS", "1,10,60")),
        replay_limit=_int(env, "PIPELINE_REPLAY_LIMIT", 3, low=1, high=1000),
        **_kafka_security(env),
        session_timeout_seconds=_float(
            env, "PIPELINE_SESSION_TIMEOUT_SECONDS", 60.0, low=1.0, high=3600.0
        ),
        heartbeat_seconds=_float(env, "PIPELINE_HEARTBEAT_SECONDS", 3.0, low=0.1, high=600.0),
        topic_retention_hours=_retention_hours(env),
        extra_modules=tuple(
            m.strip() for m in env.get("PIPELINE_EXTRA_MODULES", "").split(",") if m.strip()
        ),
    )


PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _kafka_security(env: Mapping[str, str]) -> dict[str, Any]:
    """TLS and SASL for every Kafka client; each problem named with the variable to fix."""
    protocol = env.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").strip().upper()
    if protocol not in PROTOCOLS:
        raise SettingsError(f"KAFKA_SECURITY_PROTOCOL={protocol!r} is not one of {PROTOCOLS}")
    mechanism = env.get("KAFKA_SASL_MECHANISM", "PLAIN").strip().upper()
    if mechanism not in MECHANISMS:
        raise SettingsError(f"KAFKA_SASL_MECHANISM={mechanism!r} is not one of {MECHANISMS}")
    username = env.get("KAFKA_SASL_USERNAME", "")
    password = Secret(env.get("KAFKA_SASL_PASSWORD", ""))
    if protocol.startswith("SASL") and not (username and password):
        raise SettingsError(
            f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
        )
    files = {}
    for name in ("KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"):
        path = env.get(name, "").strip()
        if path and not Path(path).is_file():
            raise SettingsError(f"{name}={path!r} is not a readable file")
        files[name.lower()] = path
    if files["kafka_ssl_keyfile"] and not files["kafka_ssl_certfile"]:
        raise SettingsError("KAFKA_SSL_KEYFILE is set without KAFKA_SSL_CERTFILE")
    return {
        "kafka_security_protocol": protocol,
        "kafka_sasl_mechanism": mechanism,
        "kafka_sasl_username": username,
        "kafka_sasl_password": password,
        **files,
    }


def _retention_hours(env: Mapping[str, str]) -> int:
    """Kafka's ``retention.ms`` in hours for the topics we create; -1 keeps records forever."""
    hours = _int(env, "PIPELINE_TOPIC_RETENTION_HOURS", 168, low=-1, high=10 * 8760)
    if hours == 0:
        raise SettingsError("PIPELINE_TOPIC_RETENTION_HOURS=0: use -1 to keep records forever")
    return hours


def _delays(raw: str) -> tuple[float, ...]:
    """The retry topics' delays in seconds, e.g. ``1,10,60``; empty for no retry topics."""
    try:
        delays = tuple(float(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise SettingsError(
            f"PIPELINE_RETRY_DELAYS={raw!r} must be comma-separated seconds, e.g. 1,10,60"
        ) from None
    if len(delays) > 10 or any(not 0 < d <= 86400 for d in delays):
        raise SettingsError(
            f"PIPELINE_RETRY_DELAYS={raw!r}: at most 10 delays, each above 0 and at most 86400"
        )
    return delays


def _agents(raw: str) -> tuple[str, ...]:
    """Which agent modules this worker runs (all by default; benchmarks run one)."""
    if not raw.strip():
        return ALL_AGENTS
    chosen = tuple(a.strip() for a in raw.split(",") if a.strip())
    unknown = sorted(set(chosen) - set(ALL_AGENTS))
    if unknown:
        raise SettingsError(f"PIPELINE_AGENTS names unknown agents {unknown}; known: {ALL_AGENTS}")
    return chosen


def normalize_database_url(url: str) -> str:
    """Pick the async driver for the URL's database, so users can paste a plain URL."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.split(":///", 1)[1]
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return url
    raise SettingsError(
        "DATABASE_URL must be a PostgreSQL URL (postgresql://user@host/db) "
        "or a SQLite URL (sqlite:///path/to/file.db)"
    )
