"""Which Kafka errors refuse a record for good, so that sending it again is pointless.

aiokafka marks the errors its producer retries by itself with ``retriable`` (a leader moving,
too few in-sync replicas, a request timed out, a lost connection); a send fails with one of them
only once the producer gave up waiting, so trying again later may succeed. An error without the
mark is the broker or the client refusing the record itself: over a size limit
(``MessageSizeTooLargeError`` from the broker, or from the client over ``max_request_size``),
an invalid or unauthorized topic, a version or format the broker does not support, an error
code aiokafka does not know (``UnknownError``). Retrying one of those blocks the sender for
ever, so it is a :data:`REFUSAL`.

Except a few errors aiokafka leaves unmarked that only say the cluster could not be reached:
:data:`UNREACHED`. ``KafkaTimeoutError`` is the one a producer raises when the broker is down
(a batch expired in its buffer, or no metadata came in time).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiokafka.errors import (
    BrokerNotAvailableError,
    KafkaError,
    KafkaTimeoutError,
    KafkaUnavailableError,
    ProducerClosed,
    ReplicaNotAvailableError,
)

# Unmarked in aiokafka, yet no refusal of the record: the cluster (or, for ProducerClosed, our
# own producer, stopping with the worker) could not take it now.
UNREACHED: tuple[type[KafkaError], ...] = (
    KafkaTimeoutError,
    KafkaUnavailableError,
    BrokerNotAvailableError,
    ReplicaNotAvailableError,
    ProducerClosed,
)


def _with_subclasses(kind: type[KafkaError]) -> Iterator[type[KafkaError]]:
    yield kind
    for sub in kind.__subclasses__():
        yield from _with_subclasses(sub)


def _refuses(kind: type[KafkaError]) -> bool:
    return not kind.retriable and not issubclass(kind, UNREACHED)


# Every aiokafka error class that refuses a record for good, as a tuple for ``except`` clauses
# and failure policies. A base class is in it only when all of its subclasses are too, so that
# ``KafkaError`` and ``BrokerResponseError`` themselves, bases of retriable errors, are not.
REFUSALS: tuple[type[KafkaError], ...] = tuple(
    sorted(
        {
            kind
            for kind in _with_subclasses(KafkaError)
            if all(_refuses(sub) for sub in _with_subclasses(kind))
        },
        key=lambda kind: kind.__name__,
    )
)


def refused_for_good(exc: BaseException) -> bool:
    """Whether ``exc`` refuses the record itself: sending it again cannot succeed."""
    return isinstance(exc, REFUSALS)
