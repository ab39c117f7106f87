"""Resuming an active flow cleared the agents' queues
(:mod:`pipeline.streaming.faust_patches.flow`)."""

from __future__ import annotations

from pipeline.streaming.faust_patches.flow import STOCK_RESUME


async def test_resuming_an_active_flow_keeps_what_the_agents_have_queued() -> None:
    """Recovery resumes the flow again once the stream partitions are resumed and the fetcher
    is filling the agents' queues; Faust's resume cleared them, losing those records."""
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    flow = FlowControlEvent(initially_suspended=False)
    queue: FlowControlQueue[int] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    queue.put_nowait(1)
    STOCK_RESUME(flow)  # Faust's own: the record is gone
    assert queue.qsize() == 0
    queue.put_nowait(2)
    flow.resume()  # with the fix installed: active, so nothing is cleared
    assert queue.qsize() == 1
    flow.suspend()  # a rebalance: what was queued before it is dropped on resume, as before
    flow.resume()
    assert queue.qsize() == 0
