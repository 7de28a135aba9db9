"""Log records made in an agent (ctx.logger) reach the controller's logging at its level."""

from __future__ import annotations

import logging

import pytest

from shoal import AgentPool
from tests.integration import workers

pytestmark = [pytest.mark.real_time, pytest.mark.usefixtures("no_leaked_children")]


async def test_ctx_logger_in_an_agent_logs_in_the_controller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with AgentPool("logs", min_size=1, max_size=1) as pool:
        pid = await pool.run(workers.log_through_ctx_logger, "hello")
        agent_id = pool.agents[0].agent_id
        assert await pool.run(workers.pid) == pid  # the record arrived before this reply
    records = [r for r in caplog.records if r.name == "shoal.workflow.wf.s"]
    assert [r.getMessage() for r in records] == [f"[{agent_id}] hello from the agent"]
    assert records[0].levelno == logging.INFO
    assert getattr(records[0], "agent_id", None) == agent_id  # the debug line stayed out
