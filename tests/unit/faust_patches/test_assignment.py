"""A worker that joins gets no partitions (:mod:`pipeline.streaming.faust_patches.assignment`)."""

from __future__ import annotations

from typing import Any

from pipeline.streaming.faust_patches.assignment import STOCK_GET_ASSIGNMENT, _balanced_assignment


def _two_full_workers_and_a_new_one() -> dict[str, Any]:
    from faust.assignor.client_assignment import CopartitionedAssignment

    return {
        "a": CopartitionedAssignment(actives={0, 1}, standbys={2, 3}, topics={"t"}),
        "b": CopartitionedAssignment(actives={2, 3}, standbys={0, 1}, topics={"t"}),
        "new": CopartitionedAssignment(topics={"t"}),
    }


def _assign(get_assignment: Any) -> dict[str, Any]:
    from faust.assignor.copartitioned_assignor import CopartitionedAssignor

    assignor = CopartitionedAssignor({"t"}, _two_full_workers_and_a_new_one(), 4, replicas=1)
    return dict(get_assignment(assignor))


def test_fausts_assignor_gives_a_joining_worker_nothing() -> None:
    """Pins faust-streaming#93: if this starts failing, Faust fixed it and the fix can go."""
    assert _assign(STOCK_GET_ASSIGNMENT)["new"].actives == set()


def test_the_balanced_assignment_gives_every_worker_its_share() -> None:
    out = _assign(_balanced_assignment)
    assert sorted(len(c.actives) for c in out.values()) == [1, 1, 2]
    actives = [p for c in out.values() for p in c.actives]
    standbys = [p for c in out.values() for p in c.standbys]
    assert sorted(actives) == [0, 1, 2, 3]  # each partition has exactly one owner
    assert sorted(standbys) == [0, 1, 2, 3]  # and one standby, never on its owner
    assert all(c.actives.isdisjoint(c.standbys) for c in out.values())
