"""The Kafka work of a partition-count migration (:mod:`pipeline.adapters.kafka.migration`):
looking at the old group and topics, creating the new topics, copying records, committing the
new group's offsets.

A copy is resumable without duplicates: after each batch is acknowledged, the next offset of
every old partition and the end of every new partition are saved
(:class:`~pipeline.adapters.kafka.migration.Progress`). A run cut short between a batch's
acknowledgement and that save leaves records in the new partitions past the saved ends; the
next run reads them first and, as it copies again from the saved offsets, skips each record
that is the next of those (same key, value, headers and timestamp) instead of sending it again.
The producer is idempotent (``acks=all``), so within a run no record is doubled or reordered by
retries. Not a transactional producer: the workers read uncommitted records (Faust without
``exactly_once``), so an aborted transaction's records would still reach them.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

from pipeline.adapters.kafka.migration import GroupState, Route, TopicProgress, target_partition

Bounds = dict[tuple[str, int], tuple[int, int]]  # (topic, partition) -> (first, end) offsets

# Records the copy is given in one batch before it waits for their acknowledgements and saves.
BATCH = 5000
# Larger than any record the broker accepts by default: the topics' own max.message.bytes
# (copied with their configuration) is what limits a record, as it did on the old topic.
MAX_REQUEST_BYTES = 16 * 1024 * 1024


class CopyError(Exception):
    """The copy cannot go on; the message says why and what to do."""


async def describe(admin: Any) -> dict[str, tuple[int, int]]:
    """Every topic's (partitions, replication factor)."""
    described = await admin.describe_topics(None)
    return {
        t["topic"]: (
            len(t["partitions"]),
            len(t["partitions"][0]["replicas"]) if t["partitions"] else 0,
        )
        for t in described
        if t["error_code"] == 0
    }


async def group_state(admin: Any, group: str) -> GroupState:
    """How many members ``group`` has now, and its committed offsets."""
    [response] = await admin.describe_consumer_groups([group])
    groups = response.to_object()["groups"]
    members = sum(len(g["members"]) for g in groups if g["group"] == group)
    offsets = await admin.list_consumer_group_offsets(group)
    committed = {(tp.topic, tp.partition): o.offset for tp, o in offsets.items() if o.offset >= 0}
    return GroupState(members, committed)


async def topic_configs(admin: Any, names: list[str]) -> dict[str, dict[str, str]]:
    """Each topic's configuration set on the topic itself (not the broker's defaults)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    if not names:
        return {}
    configs: dict[str, dict[str, str]] = {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            if resource["error_code"]:
                raise CopyError(f"cannot read the configuration of {resource['resource_name']}: "
                                f"{resource['error_message']}")  # fmt: skip
            kept = {}
            for entry in resource["config_entries"]:
                own = (entry["config_source"] == 1 if "config_source" in entry
                       else not entry["is_default"])  # fmt: skip
                if own and not entry["is_sensitive"] and entry["config_value"] is not None:
                    kept[entry["config_names"]] = entry["config_value"]
            configs[resource["resource_name"]] = kept
    return configs


async def bounds(consumer: Any, partitions: dict[str, int]) -> Bounds:
    """The first and end offsets of every partition of ``partitions`` (topic -> count)."""
    from aiokafka import TopicPartition

    tps = [TopicPartition(t, p) for t, n in partitions.items() for p in range(n)]
    if not tps:
        return {}
    first = await consumer.beginning_offsets(tps)
    end = await consumer.end_offsets(tps)
    return {(tp.topic, tp.partition): (first[tp], end[tp]) for tp in tps}


async def create_targets(admin: Any, routes: list[Route], replication: dict[str, int]) -> None:
    """Create each route's target that is missing; one that exists must have its partitions."""
    from aiokafka.admin import NewTopic

    existing = await describe(admin)
    for route in routes:
        if route.target in existing and existing[route.target][0] != route.partitions:
            raise CopyError(
                f"{route.target} exists with {existing[route.target][0]} partitions, not "
                f"{route.partitions}: choose another --to-prefix / --to-app-id, or delete it"
            )
    new = [
        NewTopic(r.target, r.partitions, replication[r.source], topic_configs=r.config)
        for r in routes
        if r.target not in existing
    ]
    if not new:
        return
    response = (await admin.create_topics(new)).to_object()
    for error in response["topic_errors"]:
        if error["error_code"] not in (0, 36):  # 36: created meanwhile
            raise CopyError(f"cannot create {error['topic']}: Kafka error "
                            f"{error['error_code']} {error['error_message']}")  # fmt: skip
    # Created is not yet known to every broker: wait until the metadata has every partition.
    for _ in range(60):
        existing = await describe(admin)
        if all(existing.get(r.target, (0,))[0] == r.partitions for r in routes):
            return
        await asyncio.sleep(0.5)
    raise CopyError("the new topics were created but do not show in the cluster's metadata "
                    "after 30 s: run this again to continue")  # fmt: skip


def _identity(record: Any) -> tuple[Any, ...]:
    return (record.key, record.value, record.timestamp, tuple(record.headers or ()))


async def _read(consumer: Any, tp: Any, start: int, end: int) -> list[Any]:
    """The records of ``tp`` from ``start`` up to ``end``."""
    consumer.assign([tp])
    consumer.seek(tp, start)
    records: list[Any] = []
    while await consumer.position(tp) < end:
        batch = await consumer.getmany(tp, timeout_ms=1000)
        records.extend(r for r in batch.get(tp, ()) if r.offset < end)
    return records


async def copy_route(
    client: Callable[..., Any],
    route: Route,
    source_bounds: dict[int, tuple[int, int]],
    progress: TopicProgress,
    save: Callable[[], None],
    *,
    batch: int = BATCH,
) -> int:
    """Copy ``route.source`` into ``route.target`` from where ``progress`` says, saving after
    every acknowledged batch; the number of records sent. ``client(kind)`` makes an aiokafka
    consumer or producer (not started)."""
    from aiokafka import TopicPartition

    consumer = client("consumer")
    producer = client("producer")
    await consumer.start()
    await producer.start()
    sent = 0
    try:
        targets = [TopicPartition(route.target, q) for q in range(route.partitions)]
        ends = await consumer.end_offsets(targets)
        tails: dict[int, collections.deque[tuple[Any, ...]]] = {}
        for tp in targets:
            saved = progress.written.get(tp.partition, 0)
            if ends[tp] < saved:
                raise CopyError(
                    f"{route.target}[{tp.partition}] ends at {ends[tp]}, before the {saved} "
                    "records this migration wrote: it was deleted or truncated; delete the "
                    "progress file and the new topics and start over"
                )
            if ends[tp] > saved:  # sent by a run cut short before it saved
                sent_before = await _read(consumer, tp, saved, ends[tp])
                tails[tp.partition] = collections.deque(_identity(r) for r in sent_before)
            progress.written[tp.partition] = ends[tp]
        todo: dict[Any, int] = {}
        for partition, (first, end) in sorted(source_bounds.items()):
            start = progress.next.get(partition, first)
            if start < first:
                raise CopyError(
                    f"{route.source}[{partition}] now starts at {first}, after {start}, the next "
                    "record to copy: retention deleted records not yet copied; delete the "
                    "progress file and the new topics and start over"
                )
            progress.next[partition] = start
            if start < end:
                todo[TopicPartition(route.source, partition)] = end
        if not todo:
            return 0
        consumer.assign(list(todo))
        for tp in todo:
            consumer.seek(tp, progress.next[tp.partition])
        while todo:
            fetched = await consumer.getmany(*todo, timeout_ms=1000, max_records=batch)
            deliveries = []
            for tp, records in fetched.items():
                for record in records:
                    if record.offset >= todo[tp]:
                        break
                    q = target_partition(route, record.key, tp.partition)
                    tail = tails.get(q)
                    if tail:
                        if tail[0] == _identity(record):
                            tail.popleft()  # already there: sent before a crash
                            continue
                        tail.clear()  # the source changed since (compaction): send the rest
                    headers = list(record.headers or ())
                    delivery = await producer.send(route.target, record.value, key=record.key,
                                                   partition=q, timestamp_ms=record.timestamp,
                                                   headers=headers)  # fmt: skip
                    deliveries.append(delivery)
            for delivery in deliveries:
                meta = await delivery  # raises the broker's refusal: nothing is saved past it
                progress.written[meta.partition] = max(
                    progress.written[meta.partition], meta.offset + 1
                )
            sent += len(deliveries)
            for tp in list(todo):
                position = await consumer.position(tp)
                progress.next[tp.partition] = min(position, todo[tp])
                if position >= todo[tp]:
                    del todo[tp]
            save()
    finally:
        await producer.stop()
        await consumer.stop()
    return sent


async def commit_offsets(consumer: Any, offsets: dict[tuple[str, int], int]) -> None:
    """Commit ``offsets`` for ``consumer``'s group (which must have no members)."""
    from aiokafka import TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    chosen = {TopicPartition(t, p): OffsetAndMetadata(o, "") for (t, p), o in offsets.items()}
    if not chosen:
        return
    consumer.assign(list(chosen))
    await consumer.commit(chosen)
