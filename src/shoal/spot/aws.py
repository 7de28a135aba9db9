"""AWS: the spot interruption notice from the EC2 instance metadata service (IMDSv2).

AWS announces a spot interruption two minutes ahead at
``/latest/meta-data/spot/instance-action``: 404 while there is none, then JSON such as
``{"action": "terminate", "time": "2026-12-04T21:40:00Z"}`` (``action`` is ``terminate``,
``stop`` or ``hibernate``). IMDSv2 asks for a session token first: ``PUT /latest/api/token``
with ``X-aws-ec2-metadata-token-ttl-seconds``, then the token in ``X-aws-ec2-metadata-token``
on every read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime

from shoal.errors import ConfigError
from shoal.pool.placement import Placement, PreemptionNotice
from shoal.spot._http import HttpError, Reply, request, split_base
from shoal.spot._poll import check_interval, poll_forever

AWS_METADATA_URL = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
ACTION_PATH = "/latest/meta-data/spot/instance-action"
ACTIONS = ("terminate", "stop", "hibernate")


class AwsSpotSource:
    """Polls the EC2 spot ``instance-action`` endpoint; one notice per announced interruption.

    ``base_url`` is the metadata service (AWS's link-local address by default); ``interval``
    seconds between reads (AWS suggests every 5 s); ``timeout`` bounds each request;
    ``token_ttl`` is the IMDSv2 session's lifetime in seconds, renewed a minute before it ends
    or when the service refuses it. ``agent_ids`` names the agents on this instance (None: the
    whole placement). ``wall`` is the wall clock (seconds since the epoch) that turns AWS's
    ``time`` into the pool's loop time.
    """

    source = "aws"

    def __init__(
        self,
        base_url: str = AWS_METADATA_URL,
        *,
        interval: float = 5.0,
        timeout: float = 2.0,
        token_ttl: int = 21_600,
        agent_ids: tuple[str, ...] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        what = "AwsSpotSource"
        self._host, self._port, self._prefix = split_base(base_url, what)
        self.interval = check_interval(what, interval)
        self.timeout = check_interval(f"{what} timeout", timeout)
        if isinstance(token_ttl, bool) or not isinstance(token_ttl, int) or token_ttl < 60:
            raise ConfigError(f"{what}: token_ttl={token_ttl!r} must be whole seconds >= 60")
        self.token_ttl = token_ttl
        self.agent_ids = agent_ids
        self._wall = wall
        self._token: str | None = None
        self._token_until = 0.0
        self._seen: set[tuple[str, str]] = set()

    async def watch(
        self,
        placement: Placement,
        notify: Callable[[PreemptionNotice], None],
        now: Callable[[], float],
    ) -> None:
        await poll_forever(
            "AWS spot source", placement, lambda: self.poll(placement, now), notify, self._every
        )

    def _every(self) -> float:
        return self.interval

    async def poll(self, placement: Placement, now: Callable[[], float]) -> PreemptionNotice | None:
        """Read the endpoint once: a notice not reported before, or None."""
        reply = await self._get(ACTION_PATH)
        if reply.status == 401:  # the token expired or the service restarted: a new one
            self._token = None
            reply = await self._get(ACTION_PATH)
        if reply.status == 404:
            return None
        if reply.status != 200:
            raise HttpError(f"instance-action answered HTTP {reply.status}")
        doc = json.loads(reply.body)
        if not isinstance(doc, dict) or doc.get("action") not in ACTIONS:
            raise ValueError(f"instance-action is not AWS's format: {reply.body[:100]!r}")
        action, when = str(doc["action"]), str(doc.get("time", ""))
        if (action, when) in self._seen:
            return None
        self._seen.add((action, when))
        t = now()
        try:
            at = datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
            deadline = t + max(0.0, at - self._wall())
        except ValueError:  # an unreadable time: the placement's notice from now
            deadline = t + (placement.notice_s or 0.0)
        return PreemptionNotice(placement.name, deadline, action, self.source, self.agent_ids)

    async def _get(self, path: str) -> Reply:
        token = await self._session()
        return await request(
            self._host,
            self._port,
            "GET",
            self._prefix + path,
            {"X-aws-ec2-metadata-token": token},
            self.timeout,
        )

    async def _session(self) -> str:
        wall = self._wall()
        if self._token is None or wall >= self._token_until:
            reply = await request(
                self._host,
                self._port,
                "PUT",
                self._prefix + TOKEN_PATH,
                {"X-aws-ec2-metadata-token-ttl-seconds": str(self.token_ttl)},
                self.timeout,
            )
            if reply.status != 200 or not reply.body.strip():
                raise HttpError(f"IMDSv2 token request answered HTTP {reply.status}")
            self._token = reply.body.strip()
            self._token_until = wall + self.token_ttl - 60
        return self._token
