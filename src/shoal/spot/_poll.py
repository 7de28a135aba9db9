"""The polling loop the metadata sources share: poll, report each new notice once, log and
retry transient failures, never raise."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from shoal.errors import ConfigError
from shoal.pool.placement import Placement, PreemptionNotice

log = logging.getLogger("shoal.spot")

#: Failures a metadata read may meet and that the next poll may not: the endpoint unreachable
#: or slow, a reply that is not the provider's format.
TRANSIENT = (OSError, TimeoutError, ValueError)


def check_interval(what: str, interval: float) -> float:
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval > 0:
        raise ConfigError(f"{what}: interval={interval!r} must be a number of seconds > 0")
    return float(interval)


async def poll_forever(
    what: str,
    placement: Placement,
    poll: Callable[[], Awaitable[PreemptionNotice | None]],
    notify: Callable[[PreemptionNotice], None],
    interval: Callable[[], float],
) -> None:
    """Call ``poll`` every ``interval()`` seconds until cancelled; hand a notice to ``notify``.

    ``poll`` returns only notices it has not returned before. A failure is logged as a warning
    the first time in a row and at debug level after, so a long outage of the endpoint does
    not flood the log; the next success says it recovered.
    """
    failing = 0
    while True:
        try:
            notice = await poll()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failing += 1
            level = logging.WARNING if failing == 1 else logging.DEBUG
            log.log(
                level,
                "%s for placement %r: cannot read the preemption notice (%s: %s); retrying",
                what,
                placement.name,
                type(exc).__name__,
                exc,
                exc_info=not isinstance(exc, TRANSIENT),
            )
        else:
            if failing:
                log.info("%s for placement %r: reading notices again", what, placement.name)
            failing = 0
            if notice is not None:
                try:
                    notify(notice)
                except Exception:
                    log.exception("%s: the pool failed to take notice %r", what, notice)
        await asyncio.sleep(interval())
