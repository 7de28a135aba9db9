"""When an agent leaves service, and why: every retirement rule, with its reason, in one place.

Pure functions of the agent, the pool's configuration and the time; nothing here performs I/O
(the resident memory is measured by the caller and passed in).
"""

from __future__ import annotations

import random

from shoal.config import PoolConfig
from shoal.pool.agent import PooledAgent


def lifetime_end(cfg: PoolConfig, ready_at: float, rng: random.Random) -> float:
    """When ``max_lifetime`` retires an agent that became ready at ``ready_at``: spread over
    ``[1 - lifetime_jitter, 1]`` of it, so agents started together do not all recycle at once."""
    if cfg.max_lifetime is None:
        return float("inf")
    return ready_at + cfg.max_lifetime * (1.0 - cfg.lifetime_jitter * rng.random())


def after_call(agent: PooledAgent, cfg: PoolConfig, now: float, rss_mb: float | None) -> str | None:
    """Why an agent just given back must not serve again, or None if it may."""
    if not agent.alive:
        return f"agent lost (exit code {agent.handle.exit_code})"
    if agent.retire_reason is not None:
        return agent.retire_reason
    if cfg.max_uses is not None and agent.usage_count >= cfg.max_uses:
        return f"served max_uses={cfg.max_uses} calls"
    if agent.expired(now):
        return f"reached max_lifetime={cfg.max_lifetime} s"
    if cfg.max_memory_mb is not None and rss_mb is not None and rss_mb > cfg.max_memory_mb:
        return f"memory {rss_mb:.0f} MiB above max_memory_mb={cfg.max_memory_mb:.0f}"
    return None


def while_idle(agent: PooledAgent, cfg: PoolConfig, now: float, above_target: bool) -> str | None:
    """Why an idle agent must go now, or None: its lifetime is over, or it is surplus to the
    pool's target and has been idle past ``idle_timeout``."""
    if not agent.alive:
        return f"agent died while idle (exit code {agent.handle.exit_code})"
    if agent.expired(now):
        return f"reached max_lifetime={cfg.max_lifetime} s"
    if above_target and agent.idle_past(cfg.idle_timeout, now):
        return idle_too_long(agent, cfg, now)
    return None


def idle_too_long(agent: PooledAgent, cfg: PoolConfig, now: float) -> str:
    return f"idle for {now - agent.last_used:.1f} s (idle_timeout={cfg.idle_timeout} s)"


def unresponsive(seconds: float, cfg: PoolConfig) -> str | None:
    """Why an agent running a call is taken for frozen, or None: no heartbeat, reply or CPU
    progress for longer than ``heartbeat_timeout``."""
    limit = cfg.heartbeat_timeout
    if limit is None or seconds <= limit:
        return None
    return (
        f"unresponsive for {seconds:.1f} s during a call (no heartbeat, no CPU progress; "
        f"heartbeat_timeout={limit} s)"
    )
