"""GCP: the preemption flag of the Compute Engine metadata server.

``GET /computeMetadata/v1/instance/preempted`` with ``Metadata-Flavor: Google`` answers
``FALSE``, and ``TRUE`` once the VM (spot or preemptible) is being preempted; GCP then gives it
about 30 s. With ``?wait_for_change=true`` the server holds the request until the value
changes (``last_etag`` says which value the caller has seen; ``timeout_sec`` bounds the wait).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

from shoal.pool.placement import Placement, PreemptionNotice
from shoal.spot._http import HttpError, request, split_base
from shoal.spot._poll import check_interval, poll_forever

GCP_METADATA_URL = "http://metadata.google.internal"
PREEMPTED_PATH = "/computeMetadata/v1/instance/preempted"
#: GCP's notice: about 30 s between ``preempted`` turning TRUE and the VM's stop.
GCP_NOTICE_S = 30.0


class GcpPreemptionSource:
    """Reads GCP's ``preempted`` flag; one notice each time it turns ``TRUE``.

    ``base_url`` is the metadata server (GCP's by default); ``interval`` seconds between reads;
    ``timeout`` bounds each plain read. With ``wait_for_change`` each read is a long poll of up
    to ``long_poll_s`` seconds that returns as soon as the flag changes (no interval between
    them unless a read fails). ``notice_s`` is how long before the stop the notice comes (GCP's
    30 s unless set here or on the placement). ``agent_ids`` names the agents on this VM (None:
    the whole placement).
    """

    source = "gcp"

    def __init__(
        self,
        base_url: str = GCP_METADATA_URL,
        *,
        interval: float = 5.0,
        timeout: float = 2.0,
        wait_for_change: bool = False,
        long_poll_s: int = 60,
        notice_s: float | None = None,
        agent_ids: tuple[str, ...] | None = None,
    ) -> None:
        what = "GcpPreemptionSource"
        self._host, self._port, self._prefix = split_base(base_url, what)
        self.interval = check_interval(what, interval)
        self.timeout = check_interval(f"{what} timeout", timeout)
        self.long_poll_s = int(check_interval(f"{what} long_poll_s", long_poll_s))
        self.notice_s = None if notice_s is None else check_interval(f"{what} notice", notice_s)
        self.wait_for_change = wait_for_change
        self.agent_ids = agent_ids
        self._etag: str | None = None
        self._preempted = False
        self._failed = False

    async def watch(
        self,
        placement: Placement,
        notify: Callable[[PreemptionNotice], None],
        now: Callable[[], float],
    ) -> None:
        await poll_forever(
            "GCP preemption source",
            placement,
            lambda: self.poll(placement, now),
            notify,
            self._pause,
        )

    def _pause(self) -> float:
        # A long poll waits on the server; only after a failure does it pause here.
        if self.wait_for_change and not self._failed:
            return 0.0
        return self.interval

    async def poll(self, placement: Placement, now: Callable[[], float]) -> PreemptionNotice | None:
        """Read the flag once (or wait for it to change): a new notice, or None."""
        path = self._prefix + PREEMPTED_PATH
        timeout = self.timeout
        if self.wait_for_change and self._etag:
            # Without an ETag the server would wait for the *next* change and miss a notice
            # already given: the first read is a plain one, for the value and its ETag.
            path += f"?wait_for_change=true&timeout_sec={self.long_poll_s}"
            path += f"&last_etag={quote(self._etag)}"
            timeout += self.long_poll_s
        self._failed = True
        reply = await request(
            self._host, self._port, "GET", path, {"Metadata-Flavor": "Google"}, timeout
        )
        if reply.status != 200:
            raise HttpError(f"preempted answered HTTP {reply.status}")
        if reply.headers.get("metadata-flavor") != "Google":
            raise HttpError("the reply is not from a GCP metadata server (no Metadata-Flavor)")
        value = reply.body.strip().upper()
        if value not in ("TRUE", "FALSE"):
            raise ValueError(f"preempted is not TRUE or FALSE: {reply.body[:60]!r}")
        self._failed = False
        self._etag = reply.headers.get("etag", self._etag)
        was, self._preempted = self._preempted, value == "TRUE"
        if not self._preempted or was:
            return None
        notice = self.notice_s
        if notice is None:
            explicit = "notice_s" in placement.model_fields_set
            notice = placement.notice_s if explicit and placement.notice_s else GCP_NOTICE_S
        return PreemptionNotice(
            placement.name, now() + notice, "preempted", self.source, self.agent_ids
        )
