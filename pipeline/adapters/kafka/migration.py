"""Moving the pipeline to topics with another partition count: what goes where, when it is safe
to start, and the record of how far a copy got. Pure rules and a file; the Kafka work is in
:mod:`pipeline.adapters.kafka.copy`.

Why copy rather than add partitions in place: Kafka can add partitions to a topic, but then a
key's new records hash to another partition than its old ones, while its table state stays in
the old changelog partition, so the key's owner would start from nothing and the key's
events would be split over two partitions with no order between them. So the pipeline moves to
new topics (a new ``PIPELINE_TOPIC_PREFIX``) and new changelogs (a new ``PIPELINE_APP_ID``,
which names them), and every record is copied with its key, value, headers and timestamp to
the partition the new pipeline will look for it in:

- a topic's record goes where the producers' default partitioner (murmur2 of the key bytes, as
  aiokafka's and Java's) sends its key among the new partitions: every producer of ours sends
  by key without naming a partition, except redeliveries, which name the partition the record
  first came from, which is the same one;
- a changelog record goes to the partition of the event that was being handled when it was
  written (Faust's rule, and :func:`pipeline.streaming.versions.write`'s), and each table's key
  bytes are the key bytes of the records on the topic feeding its agent
  (:data:`pipeline.streaming.topics.TABLE_SOURCES`): so the same hash of the same key;
- a record without a key (a poison pill's dead letter) keeps its partition number, modulo the
  new count; topics and tables whose partition count is part of the design (the revenue
  windows' one partition) keep their count and their partitions.

Each old partition is read in order and its records sent in order, so every key's records keep
their order (a key's records all come from one old partition).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.partitioner import murmur2


@dataclass(frozen=True)
class Route:
    """One topic's move: ``source`` is copied into ``target``, which has ``partitions``.
    ``keyed``: records go where their key hashes to; otherwise each keeps its partition."""

    source: str
    target: str
    partitions: int
    keyed: bool
    config: dict[str, str] = field(default_factory=dict)  # the target's topic configuration


def target_partition(route: Route, key: bytes | None, partition: int) -> int:
    """The partition of ``route.target`` a record of ``route.source``'s ``partition`` goes to."""
    if not route.keyed or key is None:
        return partition % route.partitions
    return (murmur2(key) & 0x7FFFFFFF) % route.partitions


def renamed(name: str, old_prefix: str, new_prefix: str) -> str:
    """``name`` under ``new_prefix`` instead of ``old_prefix`` (changelog topics: app ids)."""
    if not name.startswith(old_prefix):
        raise ValueError(f"{name!r} does not start with {old_prefix!r}")
    return new_prefix + name[len(old_prefix) :]


# -- preconditions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupState:
    """The old consumer group as Kafka describes it, with its committed offsets."""

    members: int
    committed: Mapping[tuple[str, int], int]


def refusals(
    group: str,
    state: GroupState,
    consumed: Iterable[str],
    bounds: Mapping[tuple[str, int], tuple[int, int]],
    outbox_waiting: int,
) -> list[str]:
    """Why the migration must not start now, one line each, saying what to do (empty: go).

    ``consumed`` are the topics the old group's agents read, ``bounds`` each old partition's
    (first, end) offsets. A member still in the group is a worker still running: records it
    handles after the copy would be lost to the new pipeline. Lag is records the old group has
    not handled: copied with the new group's offsets after them, nobody would handle them. An
    outbox row waiting would be published to the old topics after the copy.
    """
    problems = []
    if state.members:
        problems.append(
            f"consumer group {group} has {state.members} active member(s): stop every worker "
            "(and every `python -m pipeline forwarder`) of the old settings, then run this again"
        )
    lagging = []
    for topic in sorted(set(consumed)):
        for (name, partition), (first, end) in sorted(bounds.items()):
            if name != topic or end <= first:
                continue
            done = state.committed.get((name, partition), first)
            if done < end:
                lagging.append(f"{name}[{partition}] {end - max(done, first)}")
    if lagging:
        more = len(lagging) - 5
        shown = ", ".join(lagging[:5]) + (f" and {more} more" if more > 0 else "")
        problems.append(
            f"consumer group {group} has not handled every record ({shown}): start the old "
            "workers until their lag is 0 (GET /metrics or the dashboard), stop them, then run "
            "this again"
        )
    if outbox_waiting:
        problems.append(
            f"the outbox has {outbox_waiting} row(s) waiting to be published: let a worker or "
            "`python -m pipeline forwarder` of the old settings drain it (python -m pipeline "
            "outbox), stop it, then run this again"
        )
    return problems


# -- progress --------------------------------------------------------------------------------


@dataclass
class TopicProgress:
    """How far ``source`` has been copied: the next offset to copy of each old partition, and
    the end offset of each new partition right after those were acknowledged."""

    next: dict[int, int] = field(default_factory=dict)
    written: dict[int, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"next": self.next, "written": self.written}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> TopicProgress:
        return cls(
            {int(p): int(o) for p, o in raw.get("next", {}).items()},
            {int(p): int(o) for p, o in raw.get("written", {}).items()},
        )


@dataclass
class Progress:
    """A migration's record, kept in a file so that a run cut short is continued by the next
    (written whole to a temporary file, synced, then renamed over the old one)."""

    path: Path
    plan: dict[str, Any]  # from and to: prefix, app id, partitions
    topics: dict[str, TopicProgress] = field(default_factory=dict)
    done: bool = False

    @classmethod
    def open(cls, path: Path, plan: dict[str, Any]) -> Progress:
        """The record at ``path``, or a new one; :class:`ValueError` when it is another plan's."""
        if not path.exists():
            return cls(path, plan)
        raw = json.loads(path.read_text())
        if raw.get("plan") != plan:
            raise ValueError(
                f"{path} records another migration ({raw.get('plan')}); finish that one "
                "with the same options, or delete the file and the topics it created"
            )
        topics = {t: TopicProgress.from_json(p) for t, p in raw.get("topics", {}).items()}
        return cls(path, plan, topics, bool(raw.get("done")))

    def topic(self, source: str) -> TopicProgress:
        return self.topics.setdefault(source, TopicProgress())

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "plan": self.plan,
            "done": self.done,
            "topics": {t: p.to_json() for t, p in self.topics.items()},
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
