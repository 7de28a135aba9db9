"""The node each agent runs on is visible: on the agent, in the pool's metrics and in the
``/pools`` view the dashboard reads (issue 15, point 7). A fake backend whose agents carry a
``node_ip`` as Ray's do."""

from __future__ import annotations

from shoal import AgentPool, FakeBackend, Runtime
from shoal.backends.base import AgentSpec
from shoal.backends.fake import FakeAgent
from shoal.serve.service import Service


class NodedAgent(FakeAgent):
    __slots__ = ("node_ip",)


class NodedBackend(FakeBackend):
    """Agents alternate between two nodes."""

    async def start(self, spec: AgentSpec) -> FakeAgent:
        await super().start(spec)
        agent = NodedAgent(spec)
        agent.node_ip = f"10.0.0.{len(self.started) % 2 + 1}"
        self.agents[spec.agent_id] = agent
        return agent


async def test_each_agent_names_its_node_in_metrics_and_in_the_pools_view() -> None:
    async with Runtime(NodedBackend()) as rt:
        pool = AgentPool("p", min_size=4, max_size=4, backend=NodedBackend())
        async with pool:
            assert sorted(a.node or "" for a in pool.agents) == [
                "10.0.0.1",
                "10.0.0.1",
                "10.0.0.2",
                "10.0.0.2",
            ]
            assert pool.metrics.nodes == {"10.0.0.1": 2, "10.0.0.2": 2}
            view = Service(rt, []).pool_view(pool)
            shown = {a["agent_id"]: a["node"] for a in view["agents"]}
            assert shown == {a.agent_id: a.node for a in pool.agents}
            assert view["metrics"]["nodes"] == {"10.0.0.1": 2, "10.0.0.2": 2}


async def test_agents_of_a_backend_without_nodes_have_none() -> None:
    async with AgentPool("p", min_size=2, max_size=2, backend=FakeBackend()) as pool:
        assert [a.node for a in pool.agents] == [None, None]
        assert pool.metrics.nodes == {}
