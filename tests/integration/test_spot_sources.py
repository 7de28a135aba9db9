"""The AWS and GCP preemption sources against a real HTTP server speaking the providers' formats."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator

import pytest

from shoal.errors import ConfigError
from shoal.pool.placement import Placement, PreemptionNotice, PreemptionSource
from shoal.spot import AwsSpotSource, GcpPreemptionSource
from tests.integration.metadata_server import FakeMetadata, metadata_server

pytestmark = pytest.mark.real_time

SPOT = Placement(region="us-east-1", capacity="spot")
EPOCH = 1_800_000_000.0  # the wall clock the tests give the AWS source
WAIT = 60.0  # generous: a busy 2-core machine


@pytest.fixture
def meta() -> Iterator[FakeMetadata]:
    with metadata_server() as server:
        yield server


def fixed_now() -> float:
    return 1000.0


async def test_aws_reads_the_notice_once_with_an_imdsv2_token(meta: FakeMetadata) -> None:
    source = AwsSpotSource(meta.url, wall=lambda: EPOCH)
    assert isinstance(source, PreemptionSource)
    assert await source.poll(SPOT, fixed_now) is None  # 404: no interruption
    meta.notice_now("stop", at=EPOCH + 120)
    notice = await source.poll(SPOT, fixed_now)
    assert notice == PreemptionNotice("us-east-1-spot", 1120.0, "stop", "aws", None)
    assert await source.poll(SPOT, fixed_now) is None  # the same notice is not reported twice
    assert meta.token_requests == 1  # one session for every read
    assert meta.count("instance-action") == 3


async def test_aws_renews_a_revoked_token(meta: FakeMetadata) -> None:
    source = AwsSpotSource(meta.url, wall=lambda: EPOCH, agent_ids=("a1", "a2"))
    assert await source.poll(SPOT, fixed_now) is None
    meta.revoke_tokens()
    meta.notice_now(at=EPOCH + 90)
    notice = await source.poll(SPOT, fixed_now)
    assert notice is not None and notice.deadline == 1090.0 and notice.agent_ids == ("a1", "a2")
    assert meta.token_requests == 2


async def test_aws_a_notice_already_past_has_its_deadline_now(meta: FakeMetadata) -> None:
    source = AwsSpotSource(meta.url, wall=lambda: EPOCH)
    meta.notice_now(at=EPOCH - 30)
    notice = await source.poll(SPOT, fixed_now)
    assert notice is not None and notice.deadline == 1000.0


async def test_aws_watch_survives_failures_and_reports_once(
    meta: FakeMetadata, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[PreemptionNotice] = []
    arrived = asyncio.Event()

    def notify(n: PreemptionNotice) -> None:
        got.append(n)
        arrived.set()

    meta.fail_next("500", "garbage", "drop", "503")
    meta.notice_now()
    source = AwsSpotSource(meta.url, interval=0.05)
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.DEBUG, logger="shoal.spot"):
        task = loop.create_task(source.watch(SPOT, notify, loop.time))
        await asyncio.wait_for(arrived.wait(), WAIT)
        seen = len(meta.requests)
        await loop.run_in_executor(None, meta.wait_requests, seen + 6)
        assert not task.done()  # failures never end the watch
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(got) == 1 and got[0].action == "terminate" and got[0].source == "aws"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot read the preemption notice" in warnings[0].message


async def test_an_unreachable_endpoint_is_retried_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    polls = 0
    enough = asyncio.Event()

    class Counting(GcpPreemptionSource):
        async def poll(self, placement: Placement, now: object) -> PreemptionNotice | None:
            nonlocal polls
            polls += 1
            if polls >= 5:
                enough.set()
            return await super().poll(placement, now)  # type: ignore[arg-type]

    source = Counting(f"http://127.0.0.1:{port}", interval=0.01)
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.WARNING, logger="shoal.spot"):
        task = loop.create_task(source.watch(SPOT, lambda n: None, loop.time))
        await asyncio.wait_for(enough.wait(), WAIT)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sum("cannot read" in r.message for r in caplog.records) == 1


async def test_gcp_reads_preempted_and_gives_30s(meta: FakeMetadata) -> None:
    source = GcpPreemptionSource(meta.url)
    assert await source.poll(SPOT, fixed_now) is None  # FALSE
    meta.notice_now()
    notice = await source.poll(SPOT, fixed_now)
    assert notice == PreemptionNotice("us-east-1-spot", 1030.0, "preempted", "gcp", None)
    assert await source.poll(SPOT, fixed_now) is None  # still TRUE: already reported
    meta.clear()
    assert await source.poll(SPOT, fixed_now) is None
    meta.notice_now()  # preempted again (a new VM): a new notice
    assert await source.poll(SPOT, fixed_now) is not None


async def test_gcp_notice_length_comes_from_the_source_then_the_placement(
    meta: FakeMetadata,
) -> None:
    meta.notice_now()
    told = Placement(region="eu", capacity="spot", notice_s=25)
    notice = await GcpPreemptionSource(meta.url).poll(told, fixed_now)
    assert notice is not None and notice.deadline == 1025.0
    notice = await GcpPreemptionSource(meta.url, notice_s=10).poll(told, fixed_now)
    assert notice is not None and notice.deadline == 1010.0


async def test_gcp_long_poll_hears_the_change_without_polling_again(meta: FakeMetadata) -> None:
    got: list[PreemptionNotice] = []
    arrived = asyncio.Event()

    def notify(n: PreemptionNotice) -> None:
        got.append(n)
        arrived.set()

    # An interval of an hour: only a long poll can hear the notice within the test.
    source = GcpPreemptionSource(meta.url, interval=3600, wait_for_change=True, long_poll_s=120)
    loop = asyncio.get_running_loop()
    task = loop.create_task(source.watch(SPOT, notify, loop.time))
    await loop.run_in_executor(None, meta.wait_requests, 2)  # the second one holds, by ETag
    meta.notice_now()
    await asyncio.wait_for(arrived.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(got) == 1 and got[0].source == "gcp"
    paths = [p for _, p in meta.requests]
    # A plain first read (a notice already given is not missed), then long polls by ETag.
    assert "wait_for_change" not in paths[0]
    assert all("wait_for_change=true&timeout_sec=120&last_etag=" in p for p in paths[1:])
    assert "last_etag=1" in paths[1]


async def test_gcp_long_poll_reports_a_notice_given_before_it_began(meta: FakeMetadata) -> None:
    meta.notice_now()
    got: list[PreemptionNotice] = []
    arrived = asyncio.Event()

    def notify(n: PreemptionNotice) -> None:
        got.append(n)
        arrived.set()

    source = GcpPreemptionSource(meta.url, interval=3600, wait_for_change=True, long_poll_s=120)
    loop = asyncio.get_running_loop()
    task = loop.create_task(source.watch(SPOT, notify, loop.time))
    await asyncio.wait_for(arrived.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(got) == 1


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: AwsSpotSource("https://169.254.169.254"), "must be an http:// URL"),
        (lambda: AwsSpotSource(interval=0), "interval=0 must be a number of seconds > 0"),
        (lambda: AwsSpotSource(token_ttl=5), "token_ttl=5 must be whole seconds >= 60"),
        (lambda: GcpPreemptionSource("http://host:99999"), "has a bad port"),
    ],
)
def test_bad_options_are_one_line_errors(make: object, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        make()  # type: ignore[operator]
    assert words in str(err.value) and "\n" not in str(err.value)
