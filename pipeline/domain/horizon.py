"""The dedupe horizon: what a table value remembers of the events it has applied, and for how
long. Pure rules, no Faust.

Every redelivery the pipeline can produce falls in one of two kinds, and each has its bound:

- **Repeats within the horizon** (``PIPELINE_DEDUPE_HORIZON_SECONDS``): a record read again
  after a crash or rebalance, the stuck-partition re-read, a forwarder that re-publishes what
  it had sent but not marked, an upstream agent that sends its derived records again, and a
  record back from the retry topics. Each arrives within seconds of the first delivery, a
  retry within the sum of the retry delays; settings refuse a horizon shorter than that sum.
  So a value keeps the facts it settled for the horizon, measured on the record times it has
  seen (its own clock: deterministic, a rebuilt table prunes exactly as the first did), and
  drops them after. Its size is bounded by the events of one key within the horizon, not by
  how many the key has seen.
- **Dead-letter replays**, any time up to ``PIPELINE_REPLAY_MAX_AGE_SECONDS``: when an agent
  dead-letters a record, the key's value notes its id as *pending*. A replay is applied only
  while its id is pending; applying the event by any path (a forwarder duplicate, a second
  delivery) clears it. So a second replay, or a replay of an event that got through another
  way, changes nothing however late it comes. Pending ids older than the replay age are
  dropped, and the replay of such a letter is refused (``pipeline.services.dead_letters``).

Beyond both, a value also refuses to grow past :data:`MAX_VALUE_BYTES` (the broker's default
record limit is 1 MB): the command is dead-lettered as permanent, saying so, rather than
having its changelog record refused by the broker.
"""

from __future__ import annotations

from dataclasses import dataclass

# Below the broker's and the producer's default 1 MiB limit with room for the record's framing.
MAX_VALUE_BYTES = 900_000


class ValueTooLarge(ValueError):
    """A table value would pass :data:`MAX_VALUE_BYTES` (a permanent error: dead-lettered)."""


@dataclass(frozen=True, slots=True)
class Horizon:
    """The clock and the two spans an update is judged by, in whole seconds."""

    now: int  # the value's clock: the latest record time it has seen, this record's included
    seconds: int  # how long settled facts are kept (repeats arrive within it)
    replay_seconds: int  # how long a dead-lettered id stays pending (replays come within it)

    @property
    def cutoff(self) -> int:
        return self.now - self.seconds

    @property
    def replay_cutoff(self) -> int:
        return self.now - self.replay_seconds

    def advanced(self, clock: int) -> Horizon:
        """This horizon with its clock at least ``clock`` (time never runs back for a value:
        a retried record carries its original, older time)."""
        return self if clock <= self.now else Horizon(clock, self.seconds, self.replay_seconds)


def prune_times(entries: dict[str, int], cutoff: int) -> dict[str, int]:
    """``entries`` (id -> time) without those older than ``cutoff``."""
    if not entries or min(entries.values()) >= cutoff:
        return entries
    return {key: at for key, at in entries.items() if at >= cutoff}


def check_size(raw: bytes, what: str) -> bytes:
    if len(raw) > MAX_VALUE_BYTES:
        raise ValueTooLarge(
            f"{what}: the value would be {len(raw):,} bytes, over {MAX_VALUE_BYTES:,}: more "
            "events within the dedupe horizon than one value holds; shorten "
            "PIPELINE_DEDUPE_HORIZON_SECONDS"
        )
    return raw
