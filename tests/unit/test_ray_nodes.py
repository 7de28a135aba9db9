"""The Ray backend's node bookkeeping, without Ray: which nodes a new agent avoids, how many
agents the cluster holds, and when a node's probe counts as silent."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shoal.backends._ray_nodes import FIRST_PONG_S, NodeWatch, capacity, nodes_to_avoid


def node(node_id: str, cpus: float = 2.0, alive: bool = True, **more: float) -> dict[str, Any]:
    return {"NodeID": node_id, "Alive": alive, "Resources": {"CPU": cpus, **more}}


ONE_CPU = {"CPU": 1.0}


def test_on_a_one_node_cluster_nothing_is_avoided() -> None:
    # The defect: the only node had just lost an agent, so its replacement was told to stay
    # off it, and waited for a node that does not exist.
    assert nodes_to_avoid([node("a")], {"a": 100.0}, ONE_CPU, now=0.0) == []


def test_a_node_that_lost_agents_is_avoided_while_another_can_take_the_agent() -> None:
    nodes = [node("a"), node("b"), node("c")]
    assert nodes_to_avoid(nodes, {"a": 100.0}, ONE_CPU, now=0.0) == ["a"]
    assert nodes_to_avoid(nodes, {"a": 100.0}, ONE_CPU, now=100.0) == []  # time is up


def test_avoiding_falls_back_when_no_other_node_could_hold_the_agent() -> None:
    nodes = [node("a", GPU=1.0), node("b"), node("dead", alive=False, GPU=4.0)]
    assert nodes_to_avoid(nodes, {"a": 100.0}, {"CPU": 1.0, "GPU": 1.0}, now=0.0) == []
    assert nodes_to_avoid(nodes, {"a": 100.0, "b": 100.0}, ONE_CPU, now=0.0) == []
    assert nodes_to_avoid(nodes, {"dead": 100.0}, ONE_CPU, now=0.0) == []


def test_capacity_counts_whole_agents_on_live_nodes() -> None:
    nodes = [node("a", 2.0), node("b", 2.0, GPU=1.0), node("c", 8.0, alive=False)]
    assert capacity(nodes, ONE_CPU) == 4
    assert capacity(nodes, {"CPU": 0.5}) == 8
    assert capacity(nodes, {"CPU": 0.1}) == 40  # 0.1 does not divide 2.0 exactly in floats
    assert capacity(nodes, {"GPU": 1.0}) == 1
    assert capacity(nodes, {"CPU": 3.0}) == 0


@given(
    cpus=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0]), min_size=1, max_size=5),
    alive=st.lists(st.booleans(), min_size=5, max_size=5),
    avoided=st.sets(st.integers(0, 4)),
    need=st.sampled_from([0.1, 0.5, 1.0, 3.0]),
)
def test_an_agent_is_kept_off_nodes_only_when_it_fits_elsewhere(
    cpus: list[float], alive: list[bool], avoided: set[int], need: float
) -> None:
    nodes = [node(str(i), c, alive[i]) for i, c in enumerate(cpus)]
    avoid = nodes_to_avoid(nodes, {str(i): 10.0 for i in avoided}, {"CPU": need}, now=0.0)
    live = [n for n in nodes if n["Alive"]]
    assert set(avoid) <= {n["NodeID"] for n in live} & {str(i) for i in avoided}
    if avoid:  # somewhere else must hold it
        assert any(n["NodeID"] not in avoid and n["Resources"]["CPU"] + 1e-9 >= need for n in live)
    else:  # nothing avoided: either nothing to avoid, or nowhere else to go
        assert not any(n["NodeID"] in {str(i) for i in avoided} for n in live) or not any(
            n["NodeID"] not in {str(i) for i in avoided} and n["Resources"]["CPU"] + 1e-9 >= need
            for n in live
        )


def test_silence_counts_from_the_ping_outstanding_not_from_the_last_answer() -> None:
    # The defect: a node's watch kept the time of its last answer while no agent was on the
    # node; when an agent came back (after a start slower than node_timeout on a busy
    # machine) the node was at once taken for frozen, and so was every replacement.
    watch = NodeWatch(actor=None)
    watch.sent(0.0)
    watch.pong()
    assert watch.silent_for(50.0) == 0.0  # nothing asked since: not silent
    watch.sent(50.0)
    assert watch.silent_for(51.0) == 1.0
    assert watch.silent_for(54.0) == 4.0
    watch.pong()
    assert watch.silent_for(60.0) == 0.0


def test_a_probe_that_never_answered_gets_a_grace_and_a_failed_one_says_why() -> None:
    watch = NodeWatch(actor=None)
    assert watch.silent_for(100.0) == 0.0 and not watch.pinging
    watch.sent(0.0)
    assert watch.pinging and watch.silent_for(FIRST_PONG_S) == 0.0
    assert watch.silent_for(FIRST_PONG_S + 2.0) == 2.0
    watch.lost("ActorDiedError: the node died")
    watch.lost("a second reason")
    assert watch.failed == "ActorDiedError: the node died" and not watch.pinging
