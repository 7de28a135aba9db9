"""The ``/events`` feed's bookkeeping: a subscriber that stops reading is cut off with a
bounded backlog (no queue that grows without end), and one that subscribes after the feed
was closed for the server's stop is ended at once rather than holding the stop open."""

from __future__ import annotations

from shoal import FakeBackend, Runtime
from shoal.serve.service import _SUBSCRIBER_BACKLOG, Service
from tests.serve.apps import Echo


async def test_a_subscriber_that_stops_reading_is_cut_off_with_a_bounded_backlog() -> None:
    async with Runtime(FakeBackend()) as rt:
        service = Service(rt, [Echo])
        async with service.subscribe() as slow, service.subscribe() as reader:
            for i in range(3 * _SUBSCRIBER_BACKLOG):
                service.publish({"type": "tick", "i": i})
                got = reader.get_nowait()
                assert got is not None and got["i"] == i
            assert slow.qsize() == _SUBSCRIBER_BACKLOG  # never beyond its backlog
            backlog = [slow.get_nowait() for _ in range(slow.qsize())]
            assert backlog[-1] is None  # told it fell behind: its stream ends
            assert service._subscribers == {reader}
        assert not service._subscribers
        await service.aclose()


async def test_a_subscriber_after_the_feed_closed_is_ended_at_once() -> None:
    async with Runtime(FakeBackend()) as rt:
        service = Service(rt, [Echo])
        async with service.subscribe() as early:
            service.close_feed()
            assert early.get_nowait() is None
            async with service.subscribe() as late:
                assert late.get_nowait() is None, "a late stream would hold the stop open"
        await service.aclose()
