"""Room placement in Redis: where a meeting's media goes, and where it goes when its node is gone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from control.placement import NodeLoad, Placement
from tests.support import until

Nodes = Callable[..., Placement]


@pytest.fixture
async def node(redis_url: str) -> AsyncIterator[Nodes]:
    """Makes the placement of one node of a deployment of its own (a key prefix per test)."""
    prefix = f"t{uuid.uuid4().hex}"
    made: list[Placement] = []

    def make(node_id: str, timeout: float = 5.0) -> Placement:
        made.append(Placement(redis_url, prefix, node_id, timeout))
        return made[-1]

    yield make
    for placement in made:
        await placement.leave([1, 2, 3])
        await placement.close()


def load(node_id: str, packets: float = 0.0, peers: int = 0, draining: bool = False) -> NodeLoad:
    return NodeLoad(node_id, ["127.0.0.1"], peers, packets, draining)


async def test_a_meeting_goes_to_the_least_loaded_node_and_stays_there(node: Nodes) -> None:
    a, b, c = node("a"), node("b"), node("c")
    await a.beat(load("a", packets=9000, peers=10))
    await b.beat(load("b", packets=200, peers=40))  # many idle peers: packets count first
    await c.beat(load("c", draining=True))  # takes no new meeting, however idle
    assert await a.place(1, via="a") == "b"
    await b.beat(load("b", packets=20000, peers=41))
    assert await c.place(1, via="c") == "b"  # placed: it stays, whatever the load now


async def test_a_tie_goes_to_the_participants_node(node: Nodes) -> None:
    a, b = node("a"), node("b")
    await a.beat(load("a"))
    await b.beat(load("b"))
    assert await b.place(1, via="b") == "b"
    assert await a.place(2, via="a") == "a"


async def test_the_meetings_of_a_node_that_vanished_are_placed_once_again(node: Nodes) -> None:
    a, b, c = node("a", timeout=0.3), node("b"), node("c")  # b places with a 5 s lease, a beats for 0.3 s
    await a.beat(load("a"))
    await b.beat(load("b", packets=50))
    await c.beat(load("c", packets=50))
    assert await b.place(1, via="b") == "a"

    async def a_gone() -> bool:
        return not await b.alive("a")

    await until(a_gone, "node a's presence to lapse", 2)
    assert await b.owner(1) == "a"  # the placement outlives its node
    # b and c race to place it again: one choice wins, both answer it.
    answers = await asyncio.gather(b.place(1, via="b"), c.place(1, via="c"))
    assert answers[0] == answers[1] and answers[0] in ("b", "c")
    assert [n.node_id for n in await b.nodes()] == ["b", "c"]


async def test_an_owner_keeps_its_meetings_by_renewing_them(node: Nodes) -> None:
    a = node("a", timeout=1.0)
    await a.beat(load("a"))
    assert await a.place(1, via="a") == "a"
    for _ in range(4):  # more than the lease goes by
        await asyncio.sleep(0.4)
        await a.beat(load("a"))
        await a.renew([1])
    assert await a.owner(1) == "a"
    await a.leave([1])
    assert await a.owner(1) is None and not await a.alive("a")


async def test_the_placement_names_the_worker_of_the_node_that_runs_the_room(node: Nodes) -> None:
    a, b = node("a"), node("b")
    await a.beat(load("a"))
    await b.beat(load("b", packets=50))
    assert await a.place(1, via="a") == "a"
    await a.record_worker(1, 3)
    await b.record_worker(1, 0)  # not b's room: nothing changes
    assert await b.where(1) == ("a", 3)
    assert await a.where(2) == (None, None)
