"""Kafka connection security (TLS, SASL) from the settings, for every client we create: the
Faust app, the outbox forwarder's producer, the CLI's producer and reconcile's scanner.

Secrets (the SASL password, the key file's content) come only from the environment and are
held in :class:`pipeline.settings.Secret`, which never prints itself.
"""

from __future__ import annotations

import ssl
from typing import Any

import faust

from pipeline.settings import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile or None)
    return context


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's producers, consumers and admin clients."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if protocol.startswith("SASL"):
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password.get(),
        )
    return options


def faust_credentials(settings: Settings) -> Any:
    """``broker_credentials`` for the Faust app, or None for plaintext."""
    protocol = settings.kafka_security_protocol
    context = ssl_context(settings)
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get(),
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def unreachable_hint(settings: Settings) -> str:
    """What to check when Kafka does not answer: with SASL a refused login looks the same to
    the client as a broker that is down (the broker closes the connection)."""
    hint = "start it (python -m pipeline kafka up) or set KAFKA_BOOTSTRAP_SERVERS"
    if settings.kafka_security_protocol.startswith("SASL"):
        hint += (
            "; if it is up, check KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, "
            "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
        )
    elif settings.kafka_security_protocol == "SSL":
        hint += "; if it is up, check KAFKA_SECURITY_PROTOCOL and KAFKA_SSL_*"
    return hint
